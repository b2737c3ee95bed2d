"""`convert --to onnx`: the GPT-2 decoder with a KV cache, run by onnxruntime against the float64 reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from gpt2hub.errors import ConversionError
from tests.checks import one_line

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOKENS = [464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688]
# max|Δ logit| / max|logit| against the float64 reference: float32 arithmetic; f16 also rounds the weights.
TOLERANCE = {"f32": 1e-5, "f16": 5e-3}


@pytest.fixture(scope="session")
def onnx_out(tiny_release, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return {dtype: gpt2hub.convert(tiny_release, to="onnx", dtype=dtype, out=root / dtype).path
            for dtype in ("f32", "f16")}


@pytest.fixture(scope="session")
def gpt(tiny_release):
    import torch

    from gpt2hub import model

    return model.from_checkpoint(tiny_release, dtype=torch.float64)


@pytest.fixture(scope="session")
def reference(gpt) -> np.ndarray:
    import torch

    with torch.no_grad():
        return gpt(torch.tensor([TOKENS]))[0][0].numpy()


def session(folder: Path):
    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])


def empty_past(sess, batch: int = 1) -> dict[str, np.ndarray]:
    """optimum's first step: a past of length 0 for every past_key_values input."""
    return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
            for i in sess.get_inputs() if i.name.startswith("past_key_values.")}


def step(sess, ids: np.ndarray, past: dict[str, np.ndarray], mask: np.ndarray | None = None,
         positions: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One forward: (logits, the next step's past) with optimum's feeds."""
    n_past = next(iter(past.values())).shape[2]
    mask = np.ones((ids.shape[0], n_past + ids.shape[1]), np.int64) if mask is None else mask
    if positions is None:
        positions = np.broadcast_to(np.arange(n_past, n_past + ids.shape[1]), ids.shape)
    outs = sess.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": np.ascontiguousarray(positions),
                           **past})
    names = [o.name for o in sess.get_outputs()]
    new_past = {n.replace("present.", "past_key_values."): a for n, a in zip(names, outs) if n.startswith("present.")}
    return outs[names.index("logits")], new_past


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def test_inputs_and_outputs_are_optimum_s_gpt2_with_past(onnx_out, tiny_release):
    h = json.loads((tiny_release / "hparams.json").read_text())
    sess = session(onnx_out["f32"])
    inputs = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
    outputs = {o.name: (o.type, o.shape) for o in sess.get_outputs()}
    hd = h["n_embd"] // h["n_head"]
    expected_in = {"input_ids": ("tensor(int64)", ["batch_size", "sequence_length"]),
                   "attention_mask": ("tensor(int64)", ["batch_size", "past_sequence_length + sequence_length"]),
                   "position_ids": ("tensor(int64)", ["batch_size", "sequence_length"])}
    expected_out = {"logits": ("tensor(float)", ["batch_size", "sequence_length", h["n_vocab"]])}
    for i in range(h["n_layer"]):
        for kv in ("key", "value"):
            expected_in[f"past_key_values.{i}.{kv}"] = ("tensor(float)", ["batch_size", h["n_head"], "past_sequence_length", hd])
            expected_out[f"present.{i}.{kv}"] = ("tensor(float)", ["batch_size", h["n_head"], "past_sequence_length + sequence_length", hd])
    assert inputs == expected_in
    assert outputs == expected_out


def test_weights_live_in_external_data_and_are_the_checkpoint(onnx_out, tiny_release):
    from onnx import numpy_helper

    from tests.test_convert import source_tensors

    folder = onnx_out["f32"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.onnx", "model.onnx_data", "config.json", "generation_config.json", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"])
    assert (folder / "model.onnx").stat().st_size < 1 << 20  # the graph only: weights are external
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    model = onnx.load(str(folder / "model.onnx"))  # external data loaded from model.onnx_data
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if not t.name.startswith("/")}
    source = source_tensors(tiny_release)
    assert stored.keys() == source.keys()
    for name, a in source.items():
        assert np.array_equal(stored[name], a), name
    f16 = onnx.load(str(onnx_out["f16"] / "model.onnx"))
    for t in f16.graph.initializer:
        if not t.name.startswith("/"):
            assert np.array_equal(numpy_helper.to_array(t), source[t.name].astype(np.float16)), t.name


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_full_sequence_logits_match_the_reference(onnx_out, reference, dtype):
    sess = session(onnx_out[dtype])
    logits, _ = step(sess, np.array([TOKENS]), empty_past(sess))
    assert rel_err(logits[0], reference) < TOLERANCE[dtype]


def test_kv_cache_steps_equal_the_full_pass(onnx_out):
    sess = session(onnx_out["f32"])
    full, _ = step(sess, np.array([TOKENS]), empty_past(sess))
    logits, past = step(sess, np.array([TOKENS[:8]]), empty_past(sess))
    rows = [logits[0]]
    for t in TOKENS[8:]:
        logits, past = step(sess, np.array([[t]]), past)
        rows.append(logits[0])
    assert rel_err(np.concatenate(rows), full[0]) < 1e-6
    assert past["past_key_values.0.key"].shape[2] == len(TOKENS)


def test_left_padding_masked_by_attention_mask_changes_nothing(onnx_out):
    sess = session(onnx_out["f32"])
    alone, _ = step(sess, np.array([TOKENS[4:]]), empty_past(sess))
    pad = 4
    ids = np.array([TOKENS, [0] * pad + TOKENS[4:]])
    mask = np.array([[1] * len(TOKENS), [0] * pad + [1] * (len(TOKENS) - pad)])
    positions = np.array([np.arange(len(TOKENS)), [1] * pad + list(range(len(TOKENS) - pad))])  # as optimum computes
    batch, _ = step(sess, ids, empty_past(sess, 2), mask, positions)
    assert rel_err(batch[1, pad:], alone[0]) < 1e-5
    assert np.isfinite(batch).all()


def test_greedy_24_tokens_agree_with_the_reference(onnx_out, gpt):
    import torch

    sess = session(onnx_out["f32"])
    ids, past, ours = np.array([TOKENS]), empty_past(sess), []
    for _ in range(24):
        logits, past = step(sess, ids, past)
        ids = logits[:, -1:].argmax(-1)
        ours.append(int(ids[0, 0]))
    with torch.no_grad():
        x, cache, theirs = torch.tensor([TOKENS]), None, []
        for _ in range(24):
            logits, cache = gpt(x, cache, last_only=True)
            x = logits[:, -1:].argmax(-1)
            theirs.append(int(x[0, 0]))
    assert ours == theirs


def test_config_json_is_transformers_gpt2(onnx_out):
    config = json.loads((onnx_out["f16"] / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["use_cache"] is True and config["torch_dtype"] == "float16"


def test_bf16_is_refused(tiny_release, tmp_path):
    with pytest.raises(ConversionError) as e:
        gpt2hub.convert(tiny_release, to="onnx", dtype="bf16", out=tmp_path / "x")
    assert "onnx has no dtype 'bf16'" in one_line(e)


def test_without_the_onnx_package_the_extra_is_named(tiny_release, tmp_path):
    code = ("import sys; sys.modules['onnx'] = None; from gpt2hub.cli import main; "
            f"main(['convert', {str(tiny_release)!r}, '--to', 'onnx', '--out', {str(tmp_path / 'x')!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "gpt2hub: error: --to onnx needs the onnx package: pip install 'gpt2hub[onnx]'"
    assert not (tmp_path / "x").exists()


def test_gpt2hub_reads_the_folder_back_through_the_format_registry(onnx_out, reference):
    import torch

    from gpt2hub import converters, model

    assert converters.detect(onnx_out["f32"]).name == "onnx"
    assert converters.get("onnx").read_dtype(onnx_out["f16"]) == "f16"
    with torch.no_grad():
        logits = model.load(onnx_out["f32"], dtype=torch.float64)(torch.tensor([TOKENS]))[0][0].numpy()
    assert np.array_equal(logits, reference)


def test_verify_runs_the_folder_in_onnxruntime(onnx_out, tiny_release, tmp_path):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(tiny_release, root / "original")
    shutil.copytree(onnx_out["f16"], root / "onnx")
    report = gpt2hub.verify(root, formats="onnx")
    row = next(r for r in report.rows if r.format == "onnx")
    assert (row.consumer, row.dtype, row.passed) == ("onnxruntime", "f16", True), row
    # f16 weights, float32 arithmetic: judged against float32's noise on those weights, not f16 activations' (~1000x)
    assert row.tolerance.endswith("(8x noise)") and row.noise < 1e-4 and row.bound == pytest.approx(8 * row.noise)


# --- verify proves the initializers exactly ---------------------------------------------------------


def verify_copy(onnx_out: dict, tiny_release: Path, tmp_path: Path, dtype: str = "f32", edit=None):
    """verify's report on a release root holding the original and a copy of the ONNX folder, edited first."""
    import shutil

    (tmp_path / "original").symlink_to(tiny_release, target_is_directory=True)
    shutil.copytree(onnx_out[dtype], tmp_path / "onnx")
    if edit is not None:
        edit(tmp_path / "onnx")
    return gpt2hub.verify(tmp_path, formats="onnx")


def file_check(report, what: str):
    check, = [f for f in report.files if f.format == "onnx" and f.what == what]
    return check


def initializer_range(folder: Path, name: str) -> tuple[tuple[int, ...], int, int]:
    """(dims, offset, length) of an initializer in model.onnx_data, as the graph's external_data says."""
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    t = next(t for t in graph.graph.initializer if t.name == name)
    info = {e.key: e.value for e in t.external_data}
    return tuple(t.dims), int(info["offset"]), int(info["length"])


@pytest.mark.parametrize("dtype, kind", [("f32", "28 f32 bit-identical"), ("f16", "28 f16 = source rounded to nearest even")])
def test_verify_proves_every_initializer(onnx_out, tiny_release, tmp_path, dtype, kind):
    report = verify_copy(onnx_out, tiny_release, tmp_path, dtype)
    weights, meta = file_check(report, "weights"), file_check(report, "metadata")
    assert (weights.passed, weights.detail) == (True, f"all 28 tensors: {kind}")
    assert meta.passed and report.passed, meta.detail


def test_a_perturbed_initializer_fails_the_weight_proof(onnx_out, tiny_release, tmp_path):
    def nudge(folder: Path) -> None:
        dims, offset, _ = initializer_range(folder, "h.1.mlp.c_fc.bias")
        with open(folder / "model.onnx_data", "r+b") as f:
            f.seek(offset + 7 * 2)
            f.write(np.float16(0.125).tobytes())

    weights = file_check(verify_copy(onnx_out, tiny_release, tmp_path, "f16", nudge), "weights")
    assert not weights.passed and weights.detail.startswith("h.1.mlp.c_fc.bias[0, 7] is 0.125, the source implies ")


def transposed(name: str):
    """An edit that stores one initializer transposed: its data in model.onnx_data and its dims in the graph."""
    def edit(folder: Path) -> None:
        graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        t = next(t for t in graph.graph.initializer if t.name == name)
        dims, offset, length = initializer_range(folder, name)
        with open(folder / "model.onnx_data", "r+b") as f:
            f.seek(offset)
            w = np.frombuffer(f.read(length), "<f4").reshape(dims)
            f.seek(offset)
            f.write(w.T.tobytes())
        del t.dims[:]
        t.dims.extend(dims[::-1])
        onnx.save_model(graph, str(folder / "model.onnx"))
    return edit


def test_a_transposed_matrix_fails_by_its_shape(onnx_out, tiny_release, tmp_path):
    C = json.loads((tiny_release / "hparams.json").read_text())["n_embd"]
    weights = file_check(verify_copy(onnx_out, tiny_release, tmp_path, edit=transposed("h.0.attn.c_attn.weight")), "weights")
    assert not weights.passed
    assert weights.detail == f"h.0.attn.c_attn.weight: shape [{3 * C}, {C}], the source implies [{C}, {3 * C}] (transposed?)"


def test_a_transposed_square_matrix_fails_by_its_values(onnx_out, tiny_release, tmp_path):
    report = verify_copy(onnx_out, tiny_release, tmp_path, edit=transposed("h.1.attn.c_proj.weight"))
    weights = file_check(report, "weights")
    assert not weights.passed and weights.detail.startswith("h.1.attn.c_proj.weight[") and not report.passed


def test_weights_inside_the_graph_are_a_one_line_failure(onnx_out, tiny_release, tmp_path):
    def inline(folder: Path) -> None:
        model = onnx.load(str(folder / "model.onnx"))  # external data read into the graph
        onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=False)

    weights = file_check(verify_copy(onnx_out, tiny_release, tmp_path, edit=inline), "weights")
    assert not weights.passed and "is stored inside the graph, not as external data" in weights.detail
