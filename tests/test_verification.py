"""verify at any scale: exact weight proofs and calibrated consumer checks, in two weight regimes.

Every correct conversion PASSes and each sabotage FAILs, with weights drawn as GPT-2 initialises them
and with harsh ones (std 0.1). The parts of gpt2hub.verification are tested directly where they decide.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gpt2hub.testing.regimes import REGIMES, write_regime_release
from gpt2hub.testing.trained import build_demo_release
from gpt2hub.testing.release import REAL_FIXTURES, SHAPES, write_release

torch = pytest.importorskip("torch")

from gpt2hub.verification import references, weights  # noqa: E402
from gpt2hub.verification.report import format_report  # noqa: E402
from gpt2hub.verifying import verify  # noqa: E402

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")


@pytest.fixture(scope="module", params=[*REGIMES, "trained"])
def converted(request, tmp_path_factory) -> Path:
    """A tiny release in one weight regime (or the demo's trained one), converted to every format and dtype
    beside it; returns its original/."""
    import gpt2hub

    folder = tmp_path_factory.mktemp(request.param) / "original"
    original = build_demo_release(folder) if request.param == "trained" else \
        write_regime_release(folder, **SHAPES["tiny"], regime=request.param)
    for fmt in ("safetensors", "pytorch"):
        gpt2hub.convert(original, to=fmt)
    for dtype in GGUF_DTYPES:
        gpt2hub.convert(original, to="gguf", dtype=dtype)
    return original


def checks(report, what: str, name: str) -> list:
    return [f for f in report.files if f.what == what and (f.format == name or Path(f.source).name == name)]


def broken(converted: Path, tmp_path: Path, output: str) -> tuple[Path, Path]:
    """(a link to the original beside a copy of one output, that copy) to break."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    original = tmp_path / "original"
    original.symlink_to(converted, target_is_directory=True)
    src = converted.parent / output
    dst = tmp_path / output
    shutil.copytree(src, dst) if src.is_dir() else shutil.copyfile(src, dst)
    return original, dst


def edit_safetensors(folder: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def gguf_tensor(path: Path, name: str) -> tuple:
    import gguf

    reader = gguf.GGUFReader(path, "r+")
    return reader, next(t for t in reader.tensors if t.name == name)


def set_gguf_field(path: Path, key: str, value) -> None:
    import gguf

    reader = gguf.GGUFReader(path, "r+")
    field = reader.get_field(key)
    field.parts[field.data[0]][0] = value
    reader.data.flush()


# --- correct conversions -------------------------------------------------------------------------


def test_every_correct_conversion_passes_exactly_and_through_its_consumer(converted):
    report = verify(converted)
    assert report.passed, format_report(report)
    st, = checks(report, "weights", "safetensors")
    assert st.detail == "all 28 tensors: 28 f32 bit-identical"
    q8, = checks(report, "weights", "original-q8_0.gguf")
    assert q8.detail == "all 28 tensors: 9 Q8_0 blocks identical to gguf-py's quantizer, 19 f32 bit-identical"
    f16, = checks(report, "weights", "original-f16.gguf")
    assert "9 f16 = source rounded to nearest even" in f16.detail
    assert all(f.passed for f in report.files) and len(report.files) == 2 * 6
    for r in report.rows:  # every bound is derived from noise measured on this model, and shown
        assert r.bound is not None and r.max_abs <= r.bound
        assert r.noise is not None and (r.noise > 0 or r.dtype == "f64")
    if HAS_LLAMA:
        assert {r.dtype for r in report.rows if r.consumer == "llama.cpp"} == set(GGUF_DTYPES)


def test_the_bound_follows_the_arithmetic_not_a_table(converted):
    report = verify(converted, formats=["original", "gguf"])
    by = {(r.consumer, r.dtype): r for r in report.rows}
    f32 = by[("gpt2hub", "f32")]
    assert f32.tolerance.endswith("(8x noise)") and f32.bound == pytest.approx(8 * f32.noise)
    if HAS_LLAMA:  # 8-bit matmul inputs make more noise than float32 ones, on the same model
        assert by[("llama.cpp", "q8_0")].noise > 10 * by[("llama.cpp", "f32")].noise > 10 * f32.noise


# --- sabotage --------------------------------------------------------------------------------------


def test_one_element_off_by_one_ulp_fails_the_weight_proof(converted, tmp_path):
    original, st = broken(converted, tmp_path, "original-safetensors")

    def nudge(t):
        w = t["h.1.mlp.c_proj.weight"]
        w[17, 5] = np.nextafter(w[17, 5], np.float32(1))

    edit_safetensors(st, nudge)
    report = verify(original, formats=["safetensors"])
    w, = checks(report, "weights", "safetensors")
    assert not w.passed and w.detail.startswith("h.1.mlp.c_proj.weight[17, 5] is ") and not report.passed


def test_a_transposed_matrix_fails(converted, tmp_path):
    original, bad = broken(converted, tmp_path, "original-f16.gguf")
    reader, t = gguf_tensor(bad, "blk.1.attn_output.weight")
    t.data[...] = t.data.T.copy()
    reader.data.flush()
    report = verify(original, formats=["gguf"])
    w, = checks(report, "weights", bad.name)
    assert not w.passed and w.detail.startswith("blk.1.attn_output.weight[")
    if HAS_LLAMA:
        assert not report.rows[0].passed and report.rows[0].consumer == "llama.cpp"


def test_swapped_layers_fail(converted, tmp_path):
    original, st = broken(converted, tmp_path, "original-safetensors")

    def swap(t):
        for key in ("attn.c_attn.weight", "mlp.c_fc.weight"):
            t[f"h.0.{key}"], t[f"h.1.{key}"] = t[f"h.1.{key}"], t[f"h.0.{key}"]

    edit_safetensors(st, swap)
    report = verify(original, formats=["safetensors"])
    w, = checks(report, "weights", "safetensors")
    assert not w.passed and "h.0.attn.c_attn.weight" in w.detail
    assert not report.rows[0].passed  # transformers runs the swapped layers: its logits leave the bound


def test_wrong_eps_fails_in_config_and_in_gguf_metadata(converted, tmp_path):
    original, st = broken(converted, tmp_path / "a", "original-safetensors")
    config = json.loads((st / "config.json").read_text())
    (st / "config.json").write_text(json.dumps({**config, "layer_norm_epsilon": 1e-6}))
    m, = checks(verify(original, formats=["safetensors"]), "metadata", "safetensors")
    assert not m.passed and m.detail == "eps is 1e-06, the release has 1e-05"

    original, q8 = broken(converted, tmp_path / "b", "original-q8_0.gguf")
    set_gguf_field(q8, "gpt2.attention.layer_norm_epsilon", 1e-6)
    m, = checks(verify(original, formats=["gguf"]), "metadata", q8.name)
    assert not m.passed and "eps is" in m.detail


def test_wrong_n_head_fails_its_metadata_and_its_logits(converted, tmp_path):
    original, bad = broken(converted, tmp_path, "original-f32.gguf")
    set_gguf_field(bad, "gpt2.attention.head_count", 8)
    report = verify(original, formats=["gguf"])
    m, = checks(report, "metadata", bad.name)
    assert not m.passed and m.detail.startswith("n_head is 8, the release has 4")
    assert not report.rows[0].passed and report.rows[0].max_abs > report.rows[0].bound


def test_wrong_tokenizer_fails(converted, tmp_path):
    original, st = broken(converted, tmp_path, "original-pytorch")
    tok = json.loads((st / "tokenizer.json").read_text(encoding="utf-8"))
    tok["model"]["merges"] = tok["model"]["merges"][1:]
    (st / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    report = verify(original, formats=["pytorch"])
    t, = [t for t in report.tokenization if t.tokenizer == "tokenizers"]
    assert not t.passed and not report.passed


def test_wrong_q8_0_scale_in_one_block_fails(converted, tmp_path):
    original, q8 = broken(converted, tmp_path, "original-q8_0.gguf")
    reader, t = gguf_tensor(q8, "blk.0.ffn_down.weight")
    scale = t.data[3, 2 * 34:2 * 34 + 2].view(np.float16)  # row 3, block 2: the f16 scale leads each 34-byte block
    scale *= np.float16(1.5)
    reader.data.flush()
    report = verify(original, formats=["gguf"])
    w, = checks(report, "weights", q8.name)
    assert not w.passed and w.detail.startswith("blk.0.ffn_down.weight: block ") and "beyond Q8_0's bound" in w.detail


def test_a_missing_tensor_and_a_wrong_dtype_fail(converted, tmp_path):
    original, st = broken(converted, tmp_path, "original-safetensors")

    def edit(t):
        del t["h.0.ln_1.bias"]
        t["h.1.ln_2.weight"] = t["h.1.ln_2.weight"].astype(np.float16)

    edit_safetensors(st, edit)
    w, = checks(verify(original, formats=["safetensors"]), "weights", "safetensors")
    assert not w.passed and w.detail.startswith("1 tensors missing, e.g. h.0.ln_1.bias") and "(+1 more)" in w.detail


# --- the parts ---------------------------------------------------------------------------------------


def _stored(tmp_path: Path, raw: np.ndarray, encoding: str, shape: tuple[int, ...]) -> weights.Stored:
    path = tmp_path / "t.bin"
    path.write_bytes(b"pad!" + raw.tobytes())
    return weights.Stored("t", encoding, shape, path, 4, raw.nbytes)


def test_q8_0_blocks_from_another_quantizer_pass_within_the_proven_bound(tmp_path):
    import gguf

    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    ours = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    # Another valid quantizer: q = round(x / d) with d already rounded to f16 (llama.cpp's own rounding differs too).
    blocks = x.reshape(-1, 32)
    d = (np.abs(blocks).max(axis=1, keepdims=True) / 127).astype(np.float16)
    q = np.clip(np.round(blocks / d.astype(np.float32)), -127, 127).astype(np.int8)
    other = np.concatenate([d.view(np.uint8), q.view(np.uint8)], axis=1).reshape(ours.shape)
    assert not np.array_equal(other, ours)
    proof = weights.Proof()
    weights.check_tensor(_stored(tmp_path, other, "Q8_0", (4, 64)), weights.Expected("x", "Q8_0"), x, proof)
    assert proof.passed and proof.kinds == {"Q8_0 within its error bound (not gguf-py's bytes)": 1}


def test_f16_must_be_rounded_to_nearest_even_not_truncated(tmp_path):
    x = np.array([[1 + 2.0**-11 + 2.0**-20, 1 + 3 * 2.0**-11]], np.float32)  # round up, and a tie to even
    good = x.astype(np.float16)
    truncated = (x.view(np.uint32) >> 13 << 13).view(np.float32).astype(np.float16)  # chop the low bits
    for raw, ok in ((good, True), (truncated, False)):
        proof = weights.Proof()
        weights.check_tensor(_stored(tmp_path, raw, "F16", (1, 2)), weights.Expected("x", "F16"), x, proof)
        assert proof.passed is ok, proof.failures


def test_padding_rows_after_the_source_must_be_zero_bits(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for pad, ok in ((np.zeros((2, 3), np.float32), True), (np.array([[0, 0, 0], [0, -0.0, 0]], np.float32), False)):
        proof = weights.Proof()
        stored = _stored(tmp_path, np.concatenate([x, pad]), "F32", (4, 3))
        weights.check_tensor(stored, weights.Expected("x", "F32", zero_rows=2), x, proof)
        assert proof.passed is ok, proof.failures
    assert proof.failures == ["t: padding row 3 is not zero (rows 2..3 pad past the source's 2)"]
    assert np.array_equal(weights.stored_weights(stored, weights.Expected("x", "F32", zero_rows=2)), x)


def test_the_float64_reference_matches_gpt2hub_model_and_streams_the_checkpoint(tiny_release):
    from gpt2hub.layout import HParams
    from gpt2hub.model import from_checkpoint
    from gpt2hub.tfcheckpoint import Checkpoint

    h = HParams.from_file(tiny_release / "hparams.json")
    ckpt = Checkpoint(tiny_release)
    read = []
    ids = [5, 17, 300, 2, 2, 9]
    ref64, ref32 = references.forward(lambda n: read.append(n) or weights.read_source(ckpt, n), h, ids,
                                      [references.F64, references.F32])
    with torch.inference_mode():
        model = from_checkpoint(tiny_release, "cpu", torch.float64)
        expected = model(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(ref64 - expected).max() < 1e-12
    assert 0 < np.abs(ref32 - ref64).max() < 1e-4
    assert read[:2] == ["model/wte", "model/wpe"] and read[2].startswith("model/h0/") and len(read) == 2 + 12 * 2 + 2


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow not installed")
def test_tensorflow_runs_openais_graph_when_the_meta_graph_has_the_forward(tmp_path):
    original = write_release(tmp_path / "graph", **SHAPES["tiny"], vocab="generated", graph=True)
    report = verify(original, formats=["original"])
    tf, = [r for r in report.rows if r.consumer == "tensorflow"]
    assert tf.passed and tf.dtype == "f32" and tf.note.startswith("OpenAI's graph from model.ckpt.meta (Placeholder")


@pytest.mark.skipif(not HAS_TF or REAL_FIXTURES is None, reason="needs TensorFlow and ../shared/fixtures")
def test_openais_real_124m_meta_graph_has_the_forward():
    import tensorflow as tf

    from gpt2hub.verification.original_graph import graph_logits_tensor

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.train.import_meta_graph(str(REAL_FIXTURES / "model.ckpt.meta"), clear_devices=True)
    X, logits = graph_logits_tensor(graph, 50257)
    assert (X.name, X.shape.as_list(), logits.name) == ("Placeholder:0", [1, 1024], "model/MatMul_2:0")
