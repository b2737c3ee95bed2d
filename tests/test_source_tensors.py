"""SourceTensor: a source's tensors stored otherwise than OpenAI's float32 (f16, bf16, a ggml block type,
(out, in) matrices, biases not stored) reach every writer as the values they encode, exactly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from gpt2hub import converters, source_tensors
from gpt2hub.encodings import decode, raw_dtype
from gpt2hub.source_tensors import ZEROS, SourceTensor, matrix_shape
from gpt2hub.tfcheckpoint import Checkpoint
from gpt2hub.version import __version__
from gpt2hub.vocabulary import Vocab
from gpt2hub.layout import HParams


def _encode(a: np.ndarray, encoding: str) -> np.ndarray:
    import torch

    if encoding == "F32":
        return a.astype("<f4")
    if encoding == "F16":
        return a.astype("<f2")
    if encoding == "BF16":
        return torch.from_numpy(np.ascontiguousarray(a)).to(torch.bfloat16).view(torch.int16).numpy().view("<u2")
    import gguf

    return gguf.quants.quantize(np.ascontiguousarray(a, np.float32), gguf.GGMLQuantizationType[encoding])


def _plan(name: str, shape: tuple[int, ...]) -> tuple[str, bool]:
    """(encoding, transposed) for each tensor: every combination the readers present occurs."""
    m = matrix_shape(shape)
    if name.endswith("/wte"):
        return "Q8_0", False
    if name.endswith("/wpe"):
        return "BF16", False
    if name.endswith("c_attn/w"):
        return "F16", True
    if len(m) == 2:
        return "F32", name.endswith(("c_fc/w", "c_proj/w"))
    if name.endswith("/b") and "ln_" not in name:
        return ZEROS, False
    return "F32", False


@pytest.fixture(scope="module")
def encoded(tiny_release, tmp_path_factory):
    """The tiny release rewritten tensor by tensor in mixed encodings and layouts, with the values each encodes."""
    folder = tmp_path_factory.mktemp("encoded")
    data = folder / "weights.bin"
    ckpt = Checkpoint(tiny_release)
    h = HParams.from_file(tiny_release / "hparams.json")
    entries, expected = {}, {}
    with open(data, "wb") as f:
        for name, e in ckpt.entries.items():
            if not name.startswith("model/"):
                continue
            a = np.array(ckpt.tensor(name)).reshape(matrix_shape(e.shape))
            encoding, transposed = _plan(name, e.shape)
            stored = a.T if transposed else a
            if encoding == ZEROS:
                entries[name] = SourceTensor.at(name, e.shape, 0, 0, ZEROS)
                expected[name] = np.zeros_like(a)
                continue
            raw = _encode(stored, encoding)
            entries[name] = SourceTensor.at(name, e.shape, 0, f.tell(), encoding, transposed)
            values = decode(raw if encoding in ("F32", "F16", "BF16") else raw.view(np.uint8), encoding)
            expected[name] = np.asarray(values, np.float32).reshape(stored.shape).T if transposed else \
                np.asarray(values, np.float32).reshape(stored.shape)
            f.write(raw.tobytes())
            assert entries[name].size == raw.nbytes
    source_ckpt = SimpleNamespace(entries=entries, data_paths=[data], index_path=data, close=lambda: None)
    source = converters.ConvertInput(ckpt=source_ckpt, hparams=h, vocab=Vocab.from_folder(tiny_release),
                                     release="mixed", version=__version__, source_kind="test")
    return source, expected, h


def test_encoded_values_differ_from_plain_ones(encoded, tiny_release):
    """The fixture is not vacuous: Q8_0, bf16 and f16 values differ from the release's, zeros replace biases."""
    _, expected, _ = encoded
    ckpt = Checkpoint(tiny_release)
    for name in ("model/wte", "model/wpe", "model/h0/attn/c_attn/w", "model/h0/mlp/c_fc/b"):
        assert not np.array_equal(expected[name], np.array(ckpt.tensor(name)).reshape(expected[name].shape)), name


def test_read_gives_every_tensor_in_openai_layout(encoded):
    source, expected, _ = encoded
    for name, e in source.ckpt.entries.items():
        got = source_tensors.read(source.ckpt.data_paths, e)
        assert got.dtype == np.float32 and np.array_equal(got, expected[name]), name


@pytest.mark.parametrize("chunk", [64, 1 << 20])
def test_rows_stream_either_layout(encoded, chunk):
    source, expected, _ = encoded
    for name, e in source.ckpt.entries.items():
        for transpose in (False, True):
            blocks = list(source_tensors.rows(source.ckpt.data_paths, e, transpose, chunk_bytes=chunk))
            got = np.concatenate(blocks) if expected[name].ndim == 2 else blocks[0]
            want = expected[name].T if transpose and expected[name].ndim == 2 else expected[name]
            assert np.array_equal(got, want), (name, transpose)


def test_f32_writers_hold_the_encoded_values(encoded, tmp_path):
    """safetensors (copy_runs) and tf (copy_runs + CRC32C of decoded bytes) write exactly the decoded values."""
    from safetensors.numpy import load_file

    from converters.hf import reference_names

    source, expected, h = encoded
    out = tmp_path / "st"
    out.mkdir()
    converters.get("safetensors").write(source, out, "f32", lambda n: None)
    tensors = load_file(out / "model.safetensors")
    for tf, param in reference_names(h.n_layer).items():
        assert np.array_equal(tensors[param], expected[tf]), param
    tf_out = tmp_path / "tf"
    tf_out.mkdir()
    converters.get("tf").write(source, tf_out, "f32", lambda n: None)
    back = Checkpoint(tf_out)
    back.verify_all()  # the CRC32C recorded for each decoded tensor is that of the bytes written
    for name, want in expected.items():
        assert np.array_equal(np.array(back.tensor(name)).reshape(want.shape), want), name


def test_casting_writers_hold_the_encoded_values(encoded, tmp_path):
    """pytorch f32 (records of decoded rows) and gguf f32 (transposed rows) hold the decoded values too."""
    import gguf

    source, expected, h = encoded
    out = tmp_path / "pt"
    out.mkdir()
    converters.get("pytorch").write(source, out, "f32", lambda n: None)
    weights = converters.get("pytorch").read_weights(out)
    from converters.hf import reference_names

    for tf, param in reference_names(h.n_layer).items():
        assert np.array_equal(np.asarray(weights.tensors[param]), expected[tf]), param
    path = tmp_path / "m.gguf"
    converters.get("gguf").write(source, path, "f32", lambda n: None)
    reader = gguf.GGUFReader(path)
    wte = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert np.array_equal(np.asarray(wte.data), expected["model/wte"])
    qkv = next(t for t in reader.tensors if t.name == "blk.0.attn_qkv.weight")
    assert np.array_equal(np.asarray(qkv.data), expected["model/h0/attn/c_attn/w"].T)
