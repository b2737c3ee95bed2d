"""`gpt2hub convert`: each format loaded by its real consumer and compared with the TF checkpoint."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import gpt2hub
from gpt2hub import registry, store
from gpt2hub.cli import main
from gpt2hub.conversion import convert
from gpt2hub.errors import CheckpointError, ConversionError, Gpt2hubError
from gpt2hub.layout import is_model_tensor
from gpt2hub.tfcheckpoint import Checkpoint
from gpt2hub.tfwriter import write_checkpoint
from gpt2hub.testing.release import tiktoken_encoding

# "The dog was found in a field near the intersection of West" (GPT-2 ids; the tiny model has n_ctx 64).
TOKENS = [464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688]
HF_TENSORS = 4 + 12 * 2  # wte, wpe, ln_f.{weight,bias} + 12 per layer; no lm_head, no attn.bias
TRICKY_TEXT = ("Hello world!  It's 2019 — naïve café 🤗\n\n\t  x<|endoftext|>The end's  \u00a0 ok?!\r\n"
               "They'll've   1234567 $3.50 ’quotes’ 日本語 ZWJ👩‍👩‍👧")
# max|Δ logit| / max|logit| allowed per GGUF type, against the float64 reference: llama.cpp's F32
# GELU reads an fp16 table; the narrow types also round the activations they multiply with.
LLAMA_TOLERANCE = {"f32": 2e-3, "f16": 3e-3, "bf16": 2e-2, "q8_0": 4e-2}
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python not installed: pip install 'gpt2hub[llama]'")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GPT2HUB_MANIFESTS", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="session")
def outputs(tiny_release, tmp_path_factory):
    """Convert the tiny release once per (format, dtype) for the whole session."""
    root = tmp_path_factory.mktemp("converted")
    cache: dict[tuple[str, str], Path] = {}

    def get(fmt: str, dtype: str = "f32") -> Path:
        if (fmt, dtype) not in cache:
            suffix = ".gguf" if fmt == "gguf" else ""
            cache[fmt, dtype] = gpt2hub.convert(tiny_release, to=fmt, dtype=dtype, out=root / f"{fmt}-{dtype}{suffix}").path
        return cache[fmt, dtype]

    return get


@pytest.fixture(scope="session")
def reference(tiny_release) -> np.ndarray:
    """Logits (len(TOKENS), n_vocab) of gpt2hub's float64 reference forward, straight from the TF checkpoint."""
    import torch

    from gpt2hub import model

    gpt = model.from_checkpoint(tiny_release, dtype=torch.float64)
    with torch.no_grad():
        return gpt(torch.tensor([TOKENS]))[0][0].numpy()


def source_tensors(release: Path) -> dict[str, np.ndarray]:
    """Model tensors of the TF checkpoint with HF names, Conv1D weights squeezed to (in, out)."""
    from gpt2hub.model import tf_names

    ckpt = Checkpoint(release)
    n_layer = json.loads((release / "hparams.json").read_text())["n_layer"]
    out = {}
    for tf, hf in tf_names(n_layer).items():
        a = ckpt.tensor(tf)
        out[hf] = a.reshape(a.shape[1:]) if a.ndim == 3 else a
    return out


def hf_logits(folder: Path) -> np.ndarray:
    import torch
    from transformers import GPT2LMHeadModel

    m = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor([TOKENS])).logits[0].double().numpy()


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def copy_checkpoint(src: Path, dst: Path, extra: dict[str, np.ndarray] = {}, replace: dict[str, np.ndarray] = {},
                    files: tuple[str, ...] = ("encoder.json", "vocab.bpe")) -> Path:
    """A TF checkpoint folder with the source's tensors, plus/overriding some, and some of its side files."""
    ckpt = Checkpoint(src)
    tensors = {n: np.array(ckpt.tensor(n)) for n in ckpt.entries}
    tensors.update(extra)
    tensors.update(replace)
    dst.mkdir(parents=True)
    write_checkpoint(dst / "model.ckpt", sorted(tensors.items(), key=lambda kv: kv[0].encode()))
    for f in files:
        shutil.copyfile(src / f, dst / f)
    return dst


def no_leftovers(folder: Path) -> bool:
    return not any(".tmp-" in p.name or ".old-" in p.name for p in folder.iterdir())


# --- safetensors -----------------------------------------------------------------------------------

def test_safetensors_f32_is_bit_identical_to_the_checkpoint(outputs, tiny_release):
    from safetensors.numpy import load_file

    loaded = load_file(outputs("safetensors") / "model.safetensors")
    expected = source_tensors(tiny_release)
    assert sorted(loaded) == sorted(expected) and len(loaded) == HF_TENSORS
    for name, a in expected.items():
        assert loaded[name].dtype == np.float32 and loaded[name].shape == a.shape, name
        assert loaded[name].tobytes() == a.tobytes(), name


def test_safetensors_metadata_names_release_data_sha256_and_version(outputs, tiny_release):
    from safetensors import safe_open

    with safe_open(outputs("safetensors") / "model.safetensors", "np") as f:
        meta = f.metadata()
    data = tiny_release / "model.ckpt.data-00000-of-00001"
    assert meta["source_release"] == tiny_release.name
    assert meta["source_file"] == data.name
    assert meta["source_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert meta["converter"] == f"gpt2hub {gpt2hub.__version__}"
    assert meta["format"] == "pt"


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_safetensors_narrow_dtypes_round_each_value_as_torch_does(outputs, tiny_release, dtype):
    import torch
    from safetensors.torch import load_file

    loaded = load_file(outputs("safetensors", dtype) / "model.safetensors")
    want = {"f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    for name, a in source_tensors(tiny_release).items():
        assert loaded[name].dtype == want
        assert torch.equal(loaded[name], torch.from_numpy(np.array(a)).to(want)), name


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_transformers_loads_safetensors_with_no_missing_or_unexpected_weights(outputs, reference, dtype):
    from transformers import GPT2LMHeadModel

    folder = outputs("safetensors", dtype)
    _, info = GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    logits = hf_logits(folder)
    assert rel_err(logits, reference) < {"f32": 1e-5, "f16": 3e-3, "bf16": 2e-2}[dtype]
    if dtype == "f32":
        assert (logits.argmax(-1) == reference.argmax(-1)).all()


def test_config_json_describes_the_release(outputs, tiny_release):
    cfg = json.loads((outputs("safetensors") / "config.json").read_text())
    h = json.loads((tiny_release / "hparams.json").read_text())
    eot = json.loads((tiny_release / "encoder.json").read_text())["<|endoftext|>"]
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_ctx"], cfg["n_positions"], cfg["vocab_size"]) == \
        (h["n_layer"], h["n_head"], h["n_embd"], h["n_ctx"], h["n_ctx"], h["n_vocab"])
    assert cfg["activation_function"] == "gelu_new" and cfg["layer_norm_epsilon"] == 1e-5
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["tie_word_embeddings"]
    assert cfg["bos_token_id"] == cfg["eos_token_id"] == eot
    gen = json.loads((outputs("safetensors") / "generation_config.json").read_text())
    assert gen["eos_token_id"] == eot


def test_vocab_and_merges_are_the_release_files(outputs, tiny_release):
    folder = outputs("safetensors")
    assert (folder / "vocab.json").read_bytes() == (tiny_release / "encoder.json").read_bytes()
    assert (folder / "merges.txt").read_bytes() == (tiny_release / "vocab.bpe").read_bytes()


def test_tokenizer_json_tokenizes_tricky_text_as_tiktoken(outputs, tiny_release):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(outputs("safetensors") / "tokenizer.json"))
    ids = tiktoken_encoding(tiny_release).encode(TRICKY_TEXT, allowed_special="all")
    assert tok.encode(TRICKY_TEXT).ids == ids
    assert tok.decode(ids, skip_special_tokens=False) == TRICKY_TEXT


def test_transformers_autotokenizer_matches_tiktoken(outputs, tiny_release):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(outputs("safetensors"))
    assert tok(TRICKY_TEXT)["input_ids"] == tiktoken_encoding(tiny_release).encode(TRICKY_TEXT, allowed_special="all")
    assert tok.eos_token == "<|endoftext|>"


# --- pytorch ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mmap", [False, True])
def test_torch_load_weights_only_gives_the_checkpoint_bit_for_bit(outputs, tiny_release, mmap):
    import torch

    sd = torch.load(outputs("pytorch") / "pytorch_model.bin", weights_only=True, mmap=mmap)
    expected = source_tensors(tiny_release)
    assert list(sd) == sorted(sd, key=list(sd).index) and sorted(sd) == sorted(expected)
    for name, a in expected.items():
        assert sd[name].dtype == torch.float32 and sd[name].is_contiguous()
        assert sd[name].numpy().tobytes() == a.tobytes(), name


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_torch_load_narrow_dtypes(outputs, tiny_release, dtype):
    import torch

    want = {"f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    sd = torch.load(outputs("pytorch", dtype) / "pytorch_model.bin", weights_only=True)
    for name, a in source_tensors(tiny_release).items():
        assert torch.equal(sd[name], torch.from_numpy(np.array(a)).to(want)), name


def test_pytorch_records_are_64_byte_aligned_like_torch_save(outputs):
    import zipfile

    path = outputs("pytorch") / "pytorch_model.bin"
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            f.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
            assert info.compress_type == zipfile.ZIP_STORED


def test_zip64_records_load_in_torch(tiny_release, tmp_path, monkeypatch):
    """Shards of the 1558M model pass 4 GiB: lower the zip writer's zip64 threshold to write that layout small."""
    import torch

    from gpt2hub import zipwriter

    monkeypatch.setattr(zipwriter, "ZIP64_LIMIT", 1 << 16)
    path = convert(tiny_release, to="pytorch", out=tmp_path / "pt").path / "pytorch_model.bin"
    with open(path, "rb") as f:
        assert b"PK\x06\x06" in f.read()  # the zip64 end of central directory record
    expected = source_tensors(tiny_release)
    for mmap in (False, True):
        sd = torch.load(path, weights_only=True, mmap=mmap)
        assert all(sd[n].numpy().tobytes() == a.tobytes() for n, a in expected.items())


def test_transformers_loads_the_pytorch_folder(outputs, reference):
    from transformers import GPT2LMHeadModel

    folder = outputs("pytorch")
    _, info = GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True, use_safetensors=False)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert rel_err(hf_logits(folder), reference) < 1e-5


def test_pytorch_past_the_shard_size_writes_shards_and_an_index(tiny_release, tmp_path, reference):
    import torch

    out = convert(tiny_release, to="pytorch", out=tmp_path / "pt", max_shard_bytes=4 << 20).path
    index = json.loads((out / "pytorch_model.bin.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (out / "pytorch_model.bin").exists()
    assert shards == [f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin" for i in range(1, len(shards) + 1)]
    merged = {}
    for s in shards:
        merged.update(torch.load(out / s, weights_only=True))
    assert sorted(merged) == sorted(index["weight_map"]) and len(merged) == HF_TENSORS
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in merged.values())
    assert rel_err(hf_logits(out), reference) < 1e-5


# --- gguf ------------------------------------------------------------------------------------------

def test_gguf_f32_tensors_are_the_checkpoint_transposed_where_llama_cpp_expects(outputs, tiny_release):
    from gguf import GGUFReader, GGMLQuantizationType

    reader = GGUFReader(outputs("gguf"))
    tensors = {t.name: t for t in reader.tensors}
    ckpt = Checkpoint(tiny_release)
    assert len(tensors) == 4 + 12 * 2 and "output.weight" not in tensors
    qkv = tensors["blk.1.attn_qkv.weight"]
    assert list(qkv.shape) == [64, 192]  # ne order: {n_embd, 3 n_embd}
    assert np.array_equal(qkv.data, ckpt.tensor("model/h1/attn/c_attn/w")[0].T)
    assert np.array_equal(tensors["blk.0.ffn_down.weight"].data, ckpt.tensor("model/h0/mlp/c_proj/w")[0].T)
    assert np.array_equal(tensors["token_embd.weight"].data, ckpt.tensor("model/wte"))
    assert np.array_equal(tensors["output_norm.bias"].data, ckpt.tensor("model/ln_f/b"))
    assert all(t.tensor_type == GGMLQuantizationType.F32 for t in reader.tensors)


def test_gguf_metadata_has_uint32_hparams_and_the_gpt2_tokenizer(outputs, tiny_release):
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(outputs("gguf", "q8_0"))
    f = reader.fields
    h = json.loads((tiny_release / "hparams.json").read_text())
    encoder = json.loads((tiny_release / "encoder.json").read_text())
    assert f["general.architecture"].contents() == "gpt2"
    for key, value in {"gpt2.block_count": h["n_layer"], "gpt2.context_length": h["n_ctx"],
                       "gpt2.embedding_length": h["n_embd"], "gpt2.feed_forward_length": 4 * h["n_embd"],
                       "gpt2.attention.head_count": h["n_head"], "general.file_type": 7,
                       "general.quantization_version": 2, "tokenizer.ggml.bos_token_id": encoder["<|endoftext|>"],
                       "tokenizer.ggml.eos_token_id": encoder["<|endoftext|>"]}.items():
        assert f[key].types == [GGUFValueType.UINT32] and f[key].contents() == value, key
    assert f["gpt2.attention.layer_norm_epsilon"].types == [GGUFValueType.FLOAT32]
    assert f["tokenizer.ggml.model"].contents() == "gpt2" and f["tokenizer.ggml.pre"].contents() == "gpt-2"
    tokens = f["tokenizer.ggml.tokens"].contents()
    assert tokens == sorted(encoder, key=encoder.get)
    types = f["tokenizer.ggml.token_type"].contents()
    assert types[encoder["<|endoftext|>"]] == 3 and types.count(1) == len(tokens) - 1
    merges = (tiny_release / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    assert f["tokenizer.ggml.merges"].contents() == [m for m in merges if m]


def test_gguf_q8_0_quantizes_only_the_matrices(outputs):
    from gguf import GGUFReader, GGMLQuantizationType

    for t in GGUFReader(outputs("gguf", "q8_0")).tensors:
        keep = t.name.endswith(".bias") or "norm" in t.name or t.name == "position_embd.weight"
        assert t.tensor_type == (GGMLQuantizationType.F32 if keep else GGMLQuantizationType.Q8_0), t.name


@needs_llama_cpp
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
def test_llama_cpp_runs_the_gguf_and_its_logits_match_the_reference(outputs, reference, dtype):
    from gpt2hub.verification.consumers import llama_logits

    logits = llama_logits(outputs("gguf", dtype), TOKENS)
    assert logits.shape == reference.shape
    assert rel_err(logits, reference) < LLAMA_TOLERANCE[dtype]
    assert np.corrcoef(logits.ravel(), reference.ravel())[0, 1] > 0.999
    if dtype == "f32":
        assert (logits.argmax(-1) == reference.argmax(-1)).all()


@needs_llama_cpp
def test_untie_writes_output_weight_equal_to_token_embd(tiny_release, tmp_path, reference):
    from gguf import GGUFReader

    from gpt2hub.verification.consumers import llama_logits

    path = gpt2hub.convert(tiny_release, to="gguf", dtype="f16", out=tmp_path / "untied.gguf", untie=True).path
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    assert len(tensors) == 4 + 12 * 2 + 1
    assert np.array_equal(tensors["output.weight"].data, tensors["token_embd.weight"].data)
    assert rel_err(llama_logits(path, TOKENS), reference) < LLAMA_TOLERANCE["f16"]


# --- inputs: any GPT-2-family checkpoint ------------------------------------------------------------

@pytest.fixture(scope="session")
def finetuned(tiny_release, tmp_path_factory) -> Path:
    """A fine-tuning run's folder: Adam slots and step counters beside the weights, no hparams.json."""
    ckpt = Checkpoint(tiny_release)
    extra = {"global_step": np.array(1000, np.int64), "beta1_power": np.array(0.9, np.float32),
             "beta2_power": np.array(0.999, np.float32)}
    for n in ckpt.entries:
        extra[n + "/Adam"] = np.zeros(ckpt.entries[n].shape, np.float32)
        extra[n + "/Adam_1"] = np.ones(ckpt.entries[n].shape, np.float32)
    return copy_checkpoint(tiny_release, tmp_path_factory.mktemp("run") / "run1", extra=extra)


def test_optimizer_and_step_variables_are_ignored_and_counted(finetuned, tiny_release, tmp_path):
    from safetensors.numpy import load_file

    report = convert(finetuned, to="safetensors", out=tmp_path / "st")
    n_model = sum(map(is_model_tensor, Checkpoint(tiny_release).entries))
    assert len(report.ignored) == 2 * n_model + 3 and "global_step" in report.ignored
    assert report.tensors == n_model
    loaded = load_file(report.path / "model.safetensors")
    for name, a in source_tensors(tiny_release).items():
        assert loaded[name].tobytes() == a.tobytes(), name


def test_tensorflow_saved_string_and_step_variables_are_ignored(tiny_release, tmp_path):
    """A bundle written by TF's own SaveV2 op, with a TF2 object graph string and a step counter."""
    import tensorflow as tf
    from safetensors.numpy import load_file

    ckpt = Checkpoint(tiny_release)
    tensors = {n: tf.constant(np.array(ckpt.tensor(n))) for n in ckpt.entries}
    tensors["_CHECKPOINTABLE_OBJECT_GRAPH"] = tf.constant(b"\n\x0f\n\x05\x08\x01\x12\x01m")
    tensors["global_step"] = tf.constant(1000, tf.int64)
    folder = tmp_path / "tf2"
    folder.mkdir()
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tensors[n] for n in names])
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(tiny_release / f, folder / f)
    report = convert(folder, to="safetensors", out=tmp_path / "st")
    assert report.ignored == ["_CHECKPOINTABLE_OBJECT_GRAPH", "global_step"]
    loaded = load_file(report.path / "model.safetensors")
    assert all(loaded[n].tobytes() == a.tobytes() for n, a in source_tensors(tiny_release).items())


def test_sha256_covers_the_whole_data_file_including_ignored_variables(finetuned, tmp_path):
    from safetensors import safe_open

    path = convert(finetuned, to="safetensors", dtype="bf16", out=tmp_path / "st").path
    with safe_open(path / "model.safetensors", "np") as f:
        sha = f.metadata()["source_sha256"]
    assert sha == hashlib.sha256((finetuned / "model.ckpt.data-00000-of-00001").read_bytes()).hexdigest()


def test_without_hparams_json_they_are_inferred_from_the_shapes(finetuned, tiny_release, tmp_path):
    report = convert(finetuned, to="safetensors", out=tmp_path / "st")
    assert report.hparams_from.startswith("inferred")
    # Every GPT-2 has 64-dimensional heads, so n_head is n_embd / 64; tiny (16-dimensional heads) shows the guess.
    assert report.hparams == {**json.loads((tiny_release / "hparams.json").read_text()), "n_head": 1}


def test_hparams_file_overrides_the_folder(finetuned, tiny_release, tmp_path):
    h = json.loads((tiny_release / "hparams.json").read_text())
    (tmp_path / "h.json").write_text(json.dumps({**h, "n_head": 2}))
    report = convert(finetuned, to="safetensors", out=tmp_path / "st", hparams=tmp_path / "h.json")
    assert report.hparams["n_head"] == 2
    assert json.loads((report.path / "config.json").read_text())["n_head"] == 2


def test_folder_input_writes_beside_the_folder_by_default(finetuned, tmp_path):
    out = gpt2hub.convert(finetuned, to="gguf", dtype="q8_0").path
    try:
        assert out == finetuned.parent / "run1-q8_0.gguf" and out.is_file()
    finally:
        out.unlink()


# --- the store -------------------------------------------------------------------------------------

@pytest.fixture
def pulled(tiny_release, home, tmp_path) -> str:
    """The tiny release pulled into the store with the real pull, from a local folder source."""
    (home / "manifests").mkdir(parents=True)
    registry.write_manifest(registry.create_manifest(tiny_release, "tiny"), home / "manifests" / "tiny.json")
    gpt2hub.pull("tiny", sources=[str(tiny_release.parent)])
    return "tiny"


def test_no_name_converts_the_one_release_pulled(pulled):
    result = CliRunner().invoke(main, ["convert", "--to", "safetensors", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (store.release_dir(pulled, "safetensors") / "model.safetensors").is_file()
    assert store.converted_formats(pulled) == ["safetensors"]


def test_gguf_goes_to_the_store_under_the_release_and_dtype(pulled):
    path = gpt2hub.convert(pulled, to="gguf", dtype="f16").path
    assert path == store.release_dir(pulled, "gguf") / "tiny-f16.gguf"
    assert no_leftovers(path.parent)


def test_no_name_and_nothing_pulled_lists_the_choices(home):
    result = CliRunner().invoke(main, ["convert", "--to", "safetensors"])
    assert result.exit_code == 1
    assert "error: name a release or a checkpoint folder" in result.output and "124M" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_release_not_pulled_is_a_clear_error(home):
    with pytest.raises(ConversionError, match="124M: not pulled .*gpt2hub pull 124M"):
        convert("124M", to="safetensors")


def test_existing_output_without_force_is_refused_and_left_alone(pulled):
    first = gpt2hub.convert(pulled, to="safetensors").path
    marker = first / "config.json"
    marker.write_text("mine")
    with pytest.raises(ConversionError, match="already exists; pass --force"):
        gpt2hub.convert(pulled, to="safetensors", dtype="f16")
    assert marker.read_text() == "mine" and no_leftovers(first.parent)


def test_force_replaces_the_output_once_the_new_one_is_complete(pulled):
    first = gpt2hub.convert(pulled, to="safetensors").path
    (first / "stale.txt").write_text("old")
    again = gpt2hub.convert(pulled, to="safetensors", dtype="bf16", force=True).path
    assert again == first and not (again / "stale.txt").exists()
    assert json.loads((again / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert no_leftovers(again.parent)


def test_force_never_replaces_a_folder_that_is_not_a_conversion(tiny_release, tmp_path):
    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ConversionError, match="exists and is not a converted model folder; not replacing it"):
        convert(tiny_release, to="safetensors", out=mine, force=True)
    assert (mine / "notes.txt").read_text() == "keep" and no_leftovers(tmp_path)


def test_gguf_out_naming_a_folder_puts_the_file_inside(tiny_release, tmp_path):
    (tmp_path / "models").mkdir()
    path = gpt2hub.convert(tiny_release, to="gguf", dtype="q8_0", out=tmp_path / "models").path
    assert path == tmp_path / "models" / "tiny-q8_0.gguf" and path.is_file()


def test_cli_json_reports_the_output_and_ignored_variables(finetuned, tmp_path):
    result = CliRunner().invoke(main, ["convert", str(finetuned), "--to", "pytorch", "--out", str(tmp_path / "pt"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["path"] == str(tmp_path / "pt") and report["format"] == "pytorch" and report["dtype"] == "f32"
    assert "global_step" in report["ignored"]


# --- bad input -------------------------------------------------------------------------------------

def test_q8_0_is_refused_for_safetensors_before_reading_anything(tiny_release, tmp_path):
    with pytest.raises(ConversionError, match="safetensors has no dtype 'q8_0'; choose one of f32, f16, bf16"):
        convert(tiny_release, to="safetensors", dtype="q8_0", out=tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_unknown_format_is_a_one_line_cli_error(tiny_release):
    result = CliRunner().invoke(main, ["convert", str(tiny_release), "--to", "onyx"])
    assert result.exit_code == 2 and "onyx" in result.output


def test_hparams_that_disagree_with_the_shapes_write_nothing(tiny_release, tmp_path):
    h = json.loads((tiny_release / "hparams.json").read_text())
    (tmp_path / "h.json").write_text(json.dumps({**h, "n_layer": 3}))
    with pytest.raises(ConversionError, match=r"model.ckpt.index: 12 model tensors missing, e.g. model/h2/"):
        convert(tiny_release, to="gguf", out=tmp_path / "x.gguf", hparams=tmp_path / "h.json")
    (tmp_path / "h.json").write_text(json.dumps({**h, "n_embd": 128, "n_head": 2}))
    with pytest.raises(ConversionError, match=r"has shape \[.*\], hparams imply \["):
        convert(tiny_release, to="gguf", out=tmp_path / "x.gguf", hparams=tmp_path / "h.json")
    assert list(tmp_path.iterdir()) == [tmp_path / "h.json"]


def test_truncated_data_file_is_refused(tiny_release, tmp_path):
    folder = copy_checkpoint(tiny_release, tmp_path / "cut", files=("encoder.json", "vocab.bpe", "hparams.json"))
    data = folder / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        convert(folder, to="safetensors", out=tmp_path / "st")
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("missing, message", [
    ("model.ckpt.data-00000-of-00001", r"model\.ckpt\.data-00000-of-00001: no such file"),
    ("model.ckpt.index", r"no TensorFlow checkpoint \(\*\.index\) here"),
    ("encoder.json", r"encoder\.json: no such file"),
    ("vocab.bpe", r"vocab\.bpe: no such file"),
])
def test_missing_file_is_named_and_nothing_is_written(tiny_release, tmp_path, missing, message):
    folder = tmp_path / "rel"
    shutil.copytree(tiny_release, folder)
    (folder / missing).unlink()
    with pytest.raises(Gpt2hubError, match=message):
        convert(folder, to="pytorch", out=tmp_path / "pt")
    assert not (tmp_path / "pt").exists() and no_leftovers(tmp_path)


def test_gguf_needs_an_embedding_row_per_token_and_pads_rows_past_the_vocabulary(tiny_release, tmp_path):
    from gpt2hub.ggufheader import read_header

    wte = np.array(Checkpoint(tiny_release).tensor("model/wte"))
    folder = copy_checkpoint(tiny_release, tmp_path / "small", replace={"model/wte": wte[:-8]})
    with pytest.raises(ConversionError, match=r"encoder.json: 50257 tokens, but wte has 50249 rows"):
        convert(folder, to="gguf", out=tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and no_leftovers(tmp_path)
    # rows past the vocabulary (a resized embedding) get tokens "[PAD<id>]", as llama.cpp's convert_hf_to_gguf writes
    folder = copy_checkpoint(tiny_release, tmp_path / "big", replace={"model/wte": np.vstack([wte, wte[:8]])})
    convert(folder, to="gguf", out=tmp_path / "big.gguf")
    assert read_header(tmp_path / "big.gguf").fields["tokenizer.ggml.tokens"][50256:] == \
        ["<|endoftext|>"] + [f"[PAD{i}]" for i in range(50257, 50265)]


def test_gguf_without_the_gguf_package_names_the_extra(tiny_release, tmp_path):
    code = ("import sys; sys.modules['gguf'] = None; from gpt2hub.cli import main; "
            f"main(['convert', {str(tiny_release)!r}, '--to', 'gguf', '--out', {str(tmp_path / 'x.gguf')!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "gpt2hub: error: --to gguf needs the gguf package: pip install 'gpt2hub[gguf]'"
    assert not (tmp_path / "x.gguf").exists()
