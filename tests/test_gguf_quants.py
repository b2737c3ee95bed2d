"""The GGUF quantization ladder: every type's blocks are ggml's own, llama.cpp runs each, and each is close.

Block check: each quantized tensor in the file equals ggml's reference quantizer (`ggml_quantize_chunk`
in llama-cpp-python's libggml) applied to the TF checkpoint's values, byte for byte. Names and
layouts come from gguf-py's own GPT-2 name map, not gpt2hub's tables.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from gpt2hub.conversion import convert
from gpt2hub.errors import ConversionError
from tests.checks import one_line
from gpt2hub.testing.release import write_release

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

TOKENS = [464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688]
STREAMED = ["q4_0", "q4_1", "q5_0", "q5_1"]
MIXES = ["q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]
# Mean KL(reference || llama.cpp) in nats allowed per type on the tiny random models: about 3x what was
# measured here. Top-1 agreement is not asserted: random weights leave near-ties that any rounding flips.
MAX_KL = {"q6_k": 4e-4, "q5_k_m": 1e-3, "q5_1": 3e-4, "q5_0": 3e-4, "q4_k_m": 3e-3, "q4_1": 1e-3, "q4_0": 1e-3,
          "q3_k_m": 7e-3, "q2_k": 2.5e-2}
# max |dequantized - source| / max |source| per block kind, what each type's bits allow.
# (a b-bit block's step is about 2^(1-b) of its largest value; the rounding error is up to one step at the clipped end)
DEQUANT_BOUND = {"Q8_0": 0.01, "Q6_K": 0.04, "Q5_0": 0.07, "Q5_1": 0.07, "Q5_K": 0.07, "Q4_0": 0.13, "Q4_1": 0.13,
                 "Q4_K": 0.13, "Q3_K": 0.3, "Q2_K": 0.6, "IQ4_NL": 0.13}


@pytest.fixture(scope="session")
def k_release(tmp_path_factory):
    """A release whose rows (n_embd 256, 4*n_embd 1024) K-quants can hold: 256-value super-blocks."""
    return write_release(tmp_path_factory.mktemp("k") / "k256", n_layer=2, n_embd=256, n_head=4, n_ctx=64)


@pytest.fixture(scope="session")
def ladder(tiny_release, k_release, tmp_path_factory):
    """dtype -> (release, .gguf path, notes): the streamed types from tiny, llama.cpp's mixes from k256."""
    root = tmp_path_factory.mktemp("ladder")
    out = {}
    for dtype in STREAMED + MIXES:
        release = tiny_release if dtype in STREAMED else k_release
        r = convert(release, to="gguf", dtype=dtype, out=root / f"{dtype}.gguf")
        out[dtype] = (release, r.path, r.notes)
    return out


def gguf_source(release: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors under gguf-py's GPT-2 names, (out, in) as ggml multiplies them."""
    from gpt2hub.model import tf_names
    from gpt2hub.tfcheckpoint import Checkpoint

    n_layer = json.loads((release / "hparams.json").read_text())["n_layer"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, n_layer)
    ckpt = Checkpoint(release)
    out = {}
    for tf, hf in tf_names(n_layer).items():
        a = np.asarray(ckpt.tensor(tf))
        if a.ndim == 3:
            a = a[0].T  # Conv1D [1, in, out] -> (out, in)
        base, _, suffix = hf.rpartition(".")
        out[f"{names.get_name(base)}.{suffix}"] = a
    return out


def logits(path: Path) -> np.ndarray:
    from gpt2hub.verification.consumers import llama_logits

    return llama_logits(path, TOKENS)


def reference(release: Path) -> np.ndarray:
    import torch

    from gpt2hub import model

    with torch.no_grad():
        return model.from_checkpoint(release, dtype=torch.float64)(torch.tensor([TOKENS]))[0][0].numpy()


def kl_and_top1(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = log_softmax(ref.astype(np.float64)), log_softmax(got.astype(np.float64))
    kl = float((np.exp(p) * (p - q)).sum(-1).mean())
    return kl, float((ref.argmax(-1) == got.argmax(-1)).mean())


@pytest.mark.parametrize("dtype", STREAMED + MIXES)
def test_every_quantized_block_is_ggml_s_own_quantization_of_the_checkpoint(ladder, dtype):
    from gpt2hub.converters.gguf import ggml_quantize

    release, path, _ = ladder[dtype]
    source = gguf_source(release)
    reader = gguf.GGUFReader(path)
    assert {t.name for t in reader.tensors} == set(source)
    kinds = set()
    for t in reader.tensors:
        a, kind = source[t.name], t.tensor_type
        if kind == gguf.GGMLQuantizationType.F32:
            assert np.array_equal(t.data, a), t.name
            continue
        kinds.add(kind.name)
        assert np.array_equal(np.asarray(t.data), ggml_quantize(a, kind)), f"{t.name} ({kind.name})"
        if dtype in STREAMED:  # gguf-py's numpy quantizer, an implementation independent of the C one the writer uses
            assert np.array_equal(np.asarray(t.data), gguf.quants.quantize(a, kind)), f"{t.name} ({kind.name})"
        deq = gguf.quants.dequantize(np.asarray(t.data), kind).reshape(a.shape)
        assert np.abs(deq - a).max() <= DEQUANT_BOUND[kind.name] * np.abs(a).max(), f"{t.name} ({kind.name})"
    if dtype in STREAMED:
        assert kinds == {dtype.upper()}
    else:
        assert any(k.endswith("_K") for k in kinds), kinds


@pytest.mark.parametrize("dtype", STREAMED)
def test_streamed_types_keep_norms_biases_and_positions_f32_and_name_the_file_type(ladder, dtype):
    _, path, _ = ladder[dtype]
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.file_type").contents() == int(gguf.LlamaFileType[f"MOSTLY_{dtype.upper()}"])
    for t in reader.tensors:
        f32 = len(t.shape) == 1 or t.name == "position_embd.weight"
        assert (t.tensor_type == gguf.GGMLQuantizationType.F32) == f32, t.name


@pytest.mark.parametrize("dtype", MIXES)
def test_mixes_carry_llama_cpp_s_file_type(ladder, dtype):
    _, path, notes = ladder[dtype]
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.file_type").contents() == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{dtype.upper()}")
    assert any(line.startswith("blk.*.ffn_up.weight: ") for line in notes)
    assert not any("fell back" in line for line in notes), notes  # 256 and 1024 are multiples of 256


@pytest.mark.parametrize("dtype", STREAMED + MIXES)
def test_llama_cpp_runs_each_type_close_to_the_reference(ladder, dtype):
    release, path, _ = ladder[dtype]
    kl, top1 = kl_and_top1(reference(release), logits(path))
    assert kl <= MAX_KL[dtype], f"{dtype}: KL {kl:.2e}, top-1 {top1:.2f}"


def test_rows_no_k_quant_fits_are_reported_with_the_type_llama_cpp_chose(tiny_release, tmp_path):
    r = convert(tiny_release, to="gguf", dtype="q4_k_m", out=tmp_path / "x.gguf")
    by_kind = {line.split(": ")[0]: line for line in r.notes}
    # n_embd 64: every matrix read along n_embd falls back (Q4_K -> Q5_0 in llama.cpp's rule).
    assert "Q5_0" in by_kind["blk.*.attn_output.weight"]
    assert "not a multiple of 256" in by_kind["blk.*.attn_output.weight"]
    assert "not a multiple of 256" not in by_kind["blk.*.ffn_down.weight"]  # rows of 4*64 = 256
    assert "fell back" not in by_kind["position_embd.weight"]


def test_cli_prints_which_tensor_got_which_type(tiny_release, tmp_path):
    from click.testing import CliRunner

    from gpt2hub.cli import main

    r = CliRunner().invoke(main, ["convert", str(tiny_release), "--to", "gguf", "--dtype", "q6_k",
                                  "--out", str(tmp_path / "x.gguf"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "blk.*.attn_qkv.weight: 2 Q8_0 (rows of 64 are not a multiple of 256" in r.output


def test_a_mix_without_llama_cpp_names_the_extra_and_writes_nothing(tiny_release, tmp_path):
    code = ("import sys; sys.modules['llama_cpp'] = None; from gpt2hub.cli import main; "
            f"main(['convert', {str(tiny_release)!r}, '--to', 'gguf', '--dtype', 'q4_k_m', '--out', {str(tmp_path / 'x.gguf')!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stderr.strip().endswith("--dtype q4_k_m is made by llama.cpp's quantizer: pip install 'gpt2hub[llama]'")
    assert list(tmp_path.iterdir()) == []


def test_quantized_types_are_refused_for_other_formats(tiny_release, tmp_path):
    with pytest.raises(ConversionError) as e:
        gpt2hub.convert(tiny_release, to="safetensors", dtype="q4_k_m", out=tmp_path / "x")
    assert "safetensors has no dtype 'q4_k_m'" in one_line(e)


def test_verify_names_each_type_and_passes_it_through_llama_cpp(ladder, k_release, tmp_path):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(k_release, root / "original")
    (root / "gguf").mkdir()
    for dtype in ("q4_k_m", "q2_k"):
        shutil.copyfile(ladder[dtype][1], root / "gguf" / f"k256-{dtype}.gguf")
    report = gpt2hub.verify(root, formats="gguf")
    rows = {r.dtype: r for r in report.rows if r.format == "gguf"}
    assert set(rows) == {"q4_k_m", "q2_k"}
    assert all(r.consumer == "llama.cpp" and r.passed for r in rows.values()), rows


@pytest.mark.parametrize("dtype", ["q8_0", "q4_k_m"])
def test_the_header_reader_reads_what_gguf_py_reads(ladder, tiny_release, tmp_path, dtype):
    """gpt2hub's one-pass header parser against gguf-py's GGUFReader, on gguf-py's and on llama.cpp's files."""
    from gpt2hub.converters.gguf import read_header

    path = ladder[dtype][1] if dtype in ladder else convert(tiny_release, to="gguf", dtype=dtype, out=tmp_path / "x.gguf").path
    header, reader = read_header(path), gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert header.fields == fields
    assert [(t.name, t.dims, t.type, t.offset, t.nbytes) for t in header.tensors] == \
        [(t.name, tuple(int(d) for d in t.shape), t.tensor_type, int(t.data_offset), int(t.n_bytes)) for t in reader.tensors]


def test_a_broken_or_crafted_header_is_a_one_line_error(tiny_release, tmp_path):
    import struct

    from gpt2hub.converters.gguf import read_header

    good = convert(tiny_release, to="gguf", dtype="f16", out=tmp_path / "good.gguf").path
    data = good.read_bytes()
    n_kv_end = 24
    key = b"general.architecture"
    crafted = {
        "magic": b"GGUX" + data[4:],
        "header cut": data[:n_kv_end + 40],
        "tensor data cut": data[:len(data) - 64],
        # the first key's value turned into an array claiming 2^40 strings: refused, not looped over
        "huge array": data[:n_kv_end] + struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 1 << 40) + data[n_kv_end + 12 + len(key):],
    }
    for what, blob in crafted.items():
        bad = tmp_path / f"{what.replace(' ', '-')}.gguf"
        bad.write_bytes(blob)
        with pytest.raises(ConversionError) as e:
            read_header(bad)
        assert one_line(e).startswith(f"{bad}: not a GGUF file"), what


def test_without_llama_cpp_gguf_py_writes_the_same_bytes(ladder, tiny_release, tmp_path, monkeypatch):
    """The writer quantizes with ggml's C code when llama-cpp-python is there, else with gguf-py: same file."""
    from gpt2hub.converters import gguf as fmt

    assert fmt._ggml_quantize_chunk() is not None
    with_ggml = {"q8_0": convert(tiny_release, to="gguf", dtype="q8_0", out=tmp_path / "ggml-q8_0.gguf").path,
                 "q4_1": ladder["q4_1"][1]}
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    fmt._ggml_quantize_chunk.cache_clear()
    try:
        assert fmt._ggml_quantize_chunk() is None
        for dtype, expected in with_ggml.items():
            out = convert(tiny_release, to="gguf", dtype=dtype, out=tmp_path / f"numpy-{dtype}.gguf").path
            assert out.read_bytes() == expected.read_bytes(), dtype
        with pytest.raises(ConversionError) as e:
            fmt.ggml_quantize(np.zeros((1, 32), np.float32), gguf.GGMLQuantizationType.Q8_0)
        assert "pip install 'gpt2hub[llama]'" in one_line(e)
    finally:
        fmt._ggml_quantize_chunk.cache_clear()
