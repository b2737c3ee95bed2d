"""The test fixtures are genuine: a TF-written GPT-2 release in OpenAI's layout, a real S3 server."""

import json
import os

import numpy as np
import pytest

from gpt2hub.testing.release import (
    CHECKPOINT_TEXT,
    REAL_FIXTURES,
    RELEASE_FILES,
    SHAPES,
    format_hparams,
    generated_vocab,
    tf_variable_shapes,
    tiktoken_encoding,
    random_value,
    write_release,
)

needs_real = pytest.mark.skipif(REAL_FIXTURES is None, reason="../shared/fixtures/openai-124M-real absent")

TEXT = "Hello world! It's 2019, and the model's tokens aren't ASCII-only: café, 東京 \n\n  done."


def test_release_has_openais_seven_files(tiny_release):
    assert sorted(p.name for p in tiny_release.iterdir()) == sorted(RELEASE_FILES)


def test_checkpoint_has_model_py_variables_and_values(tiny_release):
    import tensorflow as tf

    h = json.loads((tiny_release / "hparams.json").read_text())
    expected = tf_variable_shapes(n_layer=h["n_layer"], n_embd=h["n_embd"], n_vocab=h["n_vocab"], n_ctx=h["n_ctx"])
    reader = tf.train.load_checkpoint(str(tiny_release / "model.ckpt"))
    shapes = {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
    assert len(shapes) == 4 + 12 * SHAPES["tiny"]["n_layer"]
    assert shapes == expected
    assert all(d == tf.float32 for d in reader.get_variable_to_dtype_map().values())
    for name in ("model/h1/mlp/c_fc/w", "model/ln_f/g", "model/wpe"):
        assert np.array_equal(reader.get_tensor(name), random_value(name, expected[name]))


def test_writing_leaves_tensorflow_eager(tiny_release):
    import tensorflow as tf

    assert tf.executing_eagerly()  # the v1 graph was private to write_release


def test_generated_vocab_release(tmp_path):
    import tensorflow as tf

    out = write_release(tmp_path / "r", n_layer=1, n_embd=8, n_head=2, n_ctx=16, vocab="generated", seed=3)
    assert json.loads((out / "hparams.json").read_text())["n_vocab"] == 557
    reader = tf.train.load_checkpoint(str(out / "model.ckpt"))
    assert reader.get_variable_to_shape_map()["model/wte"] == [557, 8]
    assert np.array_equal(reader.get_tensor("model/wte"), random_value("model/wte", (557, 8), seed=3))
    assert tiktoken_encoding(out).n_vocab == 557


def test_values_look_trained():
    assert abs(random_value("model/h0/attn/c_attn/w", (1, 64, 192)).std() - 0.02) < 0.002
    assert abs(random_value("model/h0/ln_1/g", (4096,)).mean() - 1.0) < 0.01


def test_checkpoint_state_is_openais_77_bytes(tiny_release):
    assert (tiny_release / "checkpoint").read_bytes() == CHECKPOINT_TEXT
    assert len(CHECKPOINT_TEXT) == 77


@needs_real
def test_checkpoint_state_matches_real_file(tiny_release):
    assert (tiny_release / "checkpoint").read_bytes() == (REAL_FIXTURES / "checkpoint").read_bytes()


@needs_real
def test_hparams_format_matches_real_124m_file():
    text = format_hparams(n_vocab=50257, **{k: SHAPES["124M"][k] for k in ("n_ctx", "n_embd", "n_head", "n_layer")})
    assert text.encode() == (REAL_FIXTURES / "hparams.json").read_bytes()


def test_hparams_written_in_openai_format(tiny_release):
    h = json.loads((tiny_release / "hparams.json").read_text())
    assert list(h) == ["n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"]
    assert (tiny_release / "hparams.json").read_text() == format_hparams(**h)


def test_generated_bpe_round_trips_in_tiktoken(tmp_path):
    encoder_text, bpe_text = generated_vocab()
    (tmp_path / "encoder.json").write_text(encoder_text, encoding="utf-8")
    (tmp_path / "vocab.bpe").write_text(bpe_text, encoding="utf-8")
    encoder = json.loads(encoder_text)
    assert bpe_text.startswith("#version: 0.2\n") and bpe_text.endswith("\n")
    assert all(a + b in encoder for a, b in (line.split() for line in bpe_text.splitlines()[1:]))
    assert encoder["<|endoftext|>"] == len(encoder) - 1 == 556

    enc = tiktoken_encoding(tmp_path)
    ids = enc.encode(TEXT + "<|endoftext|>", allowed_special="all")
    assert enc.decode(ids) == TEXT + "<|endoftext|>"
    assert ids[-1] == 556
    assert len(ids) < len(TEXT.encode())  # merges are used
    assert enc.encode(" the") == [encoder["Ġthe"]]


def test_generated_vocab_size_follows_n_vocab():
    assert len(json.loads(generated_vocab(300)[0])) == 300


def test_tiny_release_vocab_loads_in_tiktoken(tiny_release):
    enc = tiktoken_encoding(tiny_release)
    assert enc.n_vocab == json.loads((tiny_release / "hparams.json").read_text())["n_vocab"]
    assert enc.decode(enc.encode(TEXT)) == TEXT


@needs_real
def test_real_vocab_gives_gpt2_ids():
    enc = tiktoken_encoding(REAL_FIXTURES)
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_write_release_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="multiple of n_head"):
        write_release(tmp_path, n_layer=1, n_embd=10, n_head=3, n_ctx=8)
    with pytest.raises(ValueError, match="vocab="):
        write_release(tmp_path, n_layer=1, n_embd=8, n_head=2, n_ctx=8, vocab="bogus")


def test_s3_server_multipart_range_delete(s3_server, tmp_path):
    from boto3.s3.transfer import TransferConfig

    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    c = s3_server.client()
    data = os.urandom(20 << 20)
    (tmp_path / "blob").write_bytes(data)
    c.create_bucket(Bucket="fixture-check")
    mib8 = 8 << 20
    c.upload_file(
        str(tmp_path / "blob"), "fixture-check", "dir/blob",
        Config=TransferConfig(multipart_threshold=mib8, multipart_chunksize=mib8),
    )  # fmt: skip

    head = c.head_object(Bucket="fixture-check", Key="dir/blob")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # 3 parts
    part = c.get_object(Bucket="fixture-check", Key="dir/blob", Range="bytes=9000000-9000099")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == f"bytes 9000000-9000099/{len(data)}"
    assert part["Body"].read() == data[9000000:9000100]

    c.delete_object(Bucket="fixture-check", Key="dir/blob")
    assert c.list_objects_v2(Bucket="fixture-check")["KeyCount"] == 0
    c.delete_bucket(Bucket="fixture-check")
