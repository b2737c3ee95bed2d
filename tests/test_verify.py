"""gpt2hub verify: correct conversions pass through their real consumers; broken ones FAIL."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from gpt2hub import create_manifest  # noqa: E402
from gpt2hub.cli import main  # noqa: E402
from gpt2hub.errors import VerificationError  # noqa: E402
from gpt2hub.registry import write_manifest  # noqa: E402

V = importlib.import_module("gpt2hub.verifying")
HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def row(report, fmt: str, dtype: str | None = None):
    rows = [r for r in report.rows if r.format == fmt and (dtype is None or r.dtype == dtype)]
    assert len(rows) == 1, report.rows
    return rows[0]


@pytest.fixture(scope="module")
def full_report(tiny_converted):
    return V.verify(tiny_converted)


# --- correct conversions --------------------------------------------------------------------------


def test_every_correct_conversion_passes(full_report):
    assert full_report.passed, V.format_report(full_report)
    formats = {(r.format, r.dtype) for r in full_report.rows}
    assert {("safetensors", "f32"), ("pytorch", "f32")} <= formats
    if HAS_LLAMA:
        assert {("gguf", d) for d in ("f32", "f16", "bf16", "q8_0")} <= formats


def test_hf_folders_are_loaded_by_transformers_and_gguf_by_llama_cpp(full_report):
    assert row(full_report, "safetensors").consumer == "transformers"
    assert row(full_report, "pytorch").consumer == "transformers"
    if HAS_LLAMA:
        assert {r.consumer for r in full_report.rows if r.format == "gguf"} == {"llama.cpp"}


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow not installed")
def test_tensorflow_runs_the_original_graph_as_a_second_reference(full_report):
    tf = [r for r in full_report.rows if r.consumer == "tensorflow"]
    assert len(tf) == 1 and tf[0].passed and tf[0].max_abs < 1e-12


def test_kv_cache_row_compares_cached_logits_with_the_reference(full_report):
    # float32, as the one-pass row: a float64 copy of the model would not fit the 1558M memory bound.
    r = [r for r in full_report.rows if r.consumer == "gpt2hub KV cache"][0]
    assert r.passed and r.dtype == "f32" and 0 < r.max_abs <= r.bound


def test_integrity_checks_every_tensor_crc(full_report):
    crc = [c for c in full_report.integrity if c.name == "CRC32C"][0]
    assert crc.passed and crc.detail == "all 28 tensors match the index"


def test_tokenizers_agree_on_whitespace_contractions_digits_scripts_and_emoji(full_report):
    kinds = {t.tokenizer for t in full_report.tokenization}
    assert {"tiktoken", "tokenizers"} <= kinds and (not HAS_LLAMA or "llama.cpp" in kinds)
    assert all(t.passed for t in full_report.tokenization)
    assert len({t.n_tokens for t in full_report.tokenization}) == 1


def test_json_report_has_the_table_rows(tiny_converted):
    result = run_cli("verify", str(tiny_converted), "--formats", "safetensors", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    (st,) = [r for r in data["rows"] if r["format"] == "safetensors"]
    assert {"format", "dtype", "consumer", "max_abs", "mean_abs", "top1", "kl", "tolerance", "status"} <= st.keys()
    assert st["status"] == "PASS" and data["passed"] is True


def test_table_names_consumer_tolerance_and_verdict(tiny_converted):
    result = run_cli("verify", str(tiny_converted), "--formats", "pytorch", "--tokens", "20")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("pytorch "))
    assert "transformers" in line and "max<=" in line and line.split()[-2] == "PASS"
    assert "input: 20 tokens" in result.output


def test_fallback_to_gpt2hub_model_is_reported_when_the_consumer_is_missing(tiny_converted, monkeypatch):
    monkeypatch.setitem(V.CONSUMER_MODULES, "transformers", "transformers_not_installed_here")
    report = V.verify(tiny_converted, formats=["safetensors"])
    r = row(report, "safetensors")
    assert r.consumer == "gpt2hub (transformers not installed)"
    assert r.passed


# --- broken conversions ---------------------------------------------------------------------------


def broken_copy(tiny_converted: Path, tmp_path: Path, fmt: str = "safetensors") -> tuple[Path, Path]:
    """(original, the copy of one converted folder to break) in a fresh folder beside a link to the original."""
    original = tmp_path / "original"
    original.symlink_to(tiny_converted, target_is_directory=True)
    out = shutil.copytree(tiny_converted.parent / f"original-{fmt}", tmp_path / f"original-{fmt}")
    return original, out


def edit_safetensors(folder: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def assert_fails(original: Path, fmt: str = "safetensors"):
    report = V.verify(original, formats=[fmt])
    assert all(c.passed for c in report.integrity)
    r = row(report, fmt)
    assert r.status == "FAIL" and not report.passed, V.format_report(report)
    return r


def test_one_perturbed_weight_fails(tiny_converted, tmp_path):
    original, st = broken_copy(tiny_converted, tmp_path)

    def perturb(t):
        t["h.1.mlp.c_proj.weight"][17, 5] += np.float32(0.01)

    edit_safetensors(st, perturb)
    r = assert_fails(original)
    assert r.max_abs > 1e-5


def test_a_transposed_square_matrix_fails(tiny_converted, tmp_path):
    original, st = broken_copy(tiny_converted, tmp_path)

    def transpose(t):
        t["h.0.attn.c_proj.weight"] = np.ascontiguousarray(t["h.0.attn.c_proj.weight"].T)

    edit_safetensors(st, transpose)
    assert_fails(original)


def test_wrong_layer_norm_eps_in_config_fails(tiny_converted, tmp_path):
    original, st = broken_copy(tiny_converted, tmp_path)
    edit_config(st, layer_norm_epsilon=1e-6)
    assert_fails(original)


def test_wrong_n_head_in_config_fails(tiny_converted, tmp_path):
    original, st = broken_copy(tiny_converted, tmp_path)
    edit_config(st, n_head=8)
    assert_fails(original)


def test_wrong_eps_in_pytorch_config_fails_through_transformers(tiny_converted, tmp_path):
    original, pt = broken_copy(tiny_converted, tmp_path, "pytorch")
    edit_config(pt, layer_norm_epsilon=1e-3)
    assert assert_fails(original, "pytorch").consumer == "transformers"


@pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python not installed")
def test_gguf_with_a_transposed_matrix_fails_through_llama_cpp(tiny_converted, tmp_path):
    import gguf

    original = tmp_path / "original"
    original.symlink_to(tiny_converted, target_is_directory=True)
    bad = Path(shutil.copyfile(tiny_converted.parent / "original-f32.gguf", tmp_path / "original-f32.gguf"))
    reader = gguf.GGUFReader(bad, "r+")
    (t,) = [t for t in reader.tensors if t.name == "blk.1.attn_output.weight"]
    t.data[...] = t.data.T.copy()
    reader.data.flush()
    r = assert_fails(original, "gguf")
    assert r.consumer == "llama.cpp" and r.dtype == "f32"


def test_an_unloadable_conversion_is_a_fail_row_naming_why(tiny_converted, tmp_path):
    original, st = broken_copy(tiny_converted, tmp_path)
    weights = st / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    r = assert_fails(original)
    assert r.max_abs is None and "transformers cannot load it" in r.note and "\n" not in r.note


def test_a_tokenizer_json_that_splits_differently_fails(tiny_converted, tmp_path):
    original, st = broken_copy(tiny_converted, tmp_path)
    tok = json.loads((st / "tokenizer.json").read_text(encoding="utf-8"))
    tok["model"]["merges"] = tok["model"]["merges"][1:]  # drop the most frequent merge ("Ġ t")
    (st / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    report = V.verify(original, formats=["safetensors"])
    (t,) = [t for t in report.tokenization if t.tokenizer == "tokenizers"]
    assert not t.passed and t.detail.startswith("differs at token")
    assert not report.passed


def test_cli_exits_1_on_a_failed_row(tiny_converted, tmp_path):
    original, st = broken_copy(tiny_converted, tmp_path)
    edit_config(st, n_head=8)
    result = run_cli("verify", str(original), "--formats", "safetensors")
    assert result.exit_code == 1
    assert "FAIL (1 failed)" in result.output


# --- the original files ---------------------------------------------------------------------------


def test_a_corrupt_data_file_fails_its_crc(tiny_release, tmp_path):
    original = shutil.copytree(tiny_release, tmp_path / "original")
    data = original / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    report = V.verify(original, formats=["original"])
    crc = [c for c in report.integrity if c.name == "CRC32C"][0]
    assert not crc.passed and "1 of 28 tensors fail" in crc.detail
    assert not report.passed


@pytest.fixture
def pulled(tiny_converted, tmp_path, monkeypatch):
    """tiny pulled into a fresh GPT2HUB_HOME as release 'tinytest', with its manifest, safetensors and f32 GGUF."""
    home = tmp_path / "home"
    monkeypatch.setenv("GPT2HUB_HOME", str(home))
    original = shutil.copytree(tiny_converted, home / "tinytest" / "original")
    shutil.copytree(tiny_converted.parent / "original-safetensors", home / "tinytest" / "safetensors")
    (home / "tinytest" / "gguf").mkdir()
    shutil.copyfile(tiny_converted.parent / "original-f32.gguf", home / "tinytest" / "gguf" / "tinytest-f32.gguf")
    manifest = write_manifest(create_manifest(original, "tinytest"), tmp_path / "tinytest.json")
    return original, manifest


def test_a_pulled_release_checks_sizes_and_sha256_from_its_manifest(pulled):
    original, manifest = pulled
    report = V.verify("tinytest", manifest=manifest, formats=["original"])
    files = {c.name: c for c in report.integrity}
    assert files["model.ckpt.data-00000-of-00001"].detail.startswith("sha256 matches manifest (checked: the sha256 you measured yourself")
    assert len([c for c in report.integrity if c.detail.startswith("sha256 matches manifest (checked: the sha256 you measured yourself")]) == 7
    assert report.passed


def test_a_pulled_release_finds_its_conversions_in_the_store(pulled):
    _, manifest = pulled
    report = V.verify("tinytest", manifest=manifest, formats=["safetensors", "gguf"])
    assert row(report, "safetensors").passed
    if HAS_LLAMA:
        assert Path(row(report, "gguf").source).name == "tinytest-f32.gguf"


def test_a_file_that_differs_from_its_manifest_fails(pulled):
    original, manifest = pulled
    with open(original / "checkpoint", "ab") as f:
        f.write(b"\n")
    report = V.verify("tinytest", manifest=manifest, formats=["original"])
    (c,) = [c for c in report.integrity if c.name == "checkpoint"]
    assert not c.passed and c.detail == "size 78, manifest says 77"
    assert not report.passed


def test_damage_since_the_pull_is_caught_by_the_sha256_pull_recorded(pulled):
    from gpt2hub.integrity import Check, FileCheck, Record, write_record
    from gpt2hub.registry import sha256_file

    original, manifest = pulled
    data = json.loads(manifest.read_text())
    for f in data["files"]:
        f["sha256"] = None  # as the 355M+ manifests: sizes only
    manifest.write_text(json.dumps(data))
    write_record(original, Record("tinytest", {
        p.name: FileCheck(p.stat().st_size, sha256_file(p), Check.MIRROR_CRC32C)
        for p in original.iterdir() if p.is_file() and not p.name.startswith(".")}))
    meta = original / "model.ckpt.meta"
    raw = bytearray(meta.read_bytes())
    raw[100] ^= 0x01  # same size, other bytes
    meta.write_bytes(bytes(raw))
    report = V.verify("tinytest", manifest=manifest, formats=["original"])
    checks = {c.name: c for c in report.integrity}
    assert checks["model.ckpt.index"].detail.startswith("sha256 matches pull's record (pull checked it: not verified")
    assert not checks["model.ckpt.meta"].passed and "!= pull's record" in checks["model.ckpt.meta"].detail
    assert not report.passed


def test_a_requested_format_that_was_never_converted_fails(pulled):
    _, manifest = pulled
    report = V.verify("tinytest", manifest=manifest, formats=["pytorch"])
    assert row(report, "pytorch").note == "not converted" and not report.passed


# --- failure paths ---------------------------------------------------------------------------------


def test_a_release_not_pulled_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path))
    result = run_cli("verify", "124M")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"gpt2hub: error: 124M: not pulled (nothing in {tmp_path / '124M' / 'original'}); run: gpt2hub pull 124M"]


def test_an_unknown_format_name_is_a_one_line_error(tiny_release):
    result = run_cli("verify", str(tiny_release), "--formats", "original,onyx")
    assert result.exit_code == 1
    assert result.output.strip() == ("gpt2hub: error: unknown format 'onyx'; "
                                     "formats: original, safetensors, pytorch, gguf, llmc, onnx, tf")


def test_a_folder_without_a_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(VerificationError, match="no TensorFlow checkpoint"):
        V.verify(tmp_path)


def test_prompt_and_tokens_together_are_an_error(tiny_release):
    with pytest.raises(VerificationError, match="exclude each other"):
        V.verify(tiny_release, prompt="hi", tokens=3)


@pytest.mark.cuda
def test_cuda_without_cuda_is_a_one_line_error(tiny_release):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("verify", str(tiny_release), "--device", "cuda")
    assert result.exit_code == 1
    assert result.output.strip().startswith("gpt2hub: error: --device cuda: PyTorch")
    assert len(result.output.strip().splitlines()) == 1


def test_compare_reports_the_metrics_of_a_known_shift():
    ref = np.log(np.array([[0.5, 0.25, 0.25]]))
    shifted = ref + np.array([[0.0, 0.1, -0.1]])
    m = V.compare(ref, shifted)
    assert m["max_abs"] == pytest.approx(0.1) and m["mean_abs"] == pytest.approx(0.2 / 3)
    assert m["top1"] == 1.0
    q = np.exp(shifted) / np.exp(shifted).sum()
    assert m["kl"] == pytest.approx(float(np.sum(np.exp(ref) * (ref - np.log(q)))))



# --- consumers that crash -------------------------------------------------------------------------


def test_a_consumer_that_crashes_is_an_error_row_and_verify_goes_on(tiny_converted, monkeypatch):
    from tests.crashing import segfault

    # transformers' loader, as verify calls it, replaced by one that dies of SIGSEGV in its child process
    monkeypatch.setattr(importlib.import_module("gpt2hub.verification.consumers"), "transformers_logits", segfault)
    result = run_cli("verify", str(tiny_converted), "--formats", "original,safetensors")
    assert result.exit_code == 1, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("safetensors "))
    assert " ERROR " in line and "killed by SIGSEGV" in line
    assert sum(" ERROR " in x for x in result.output.splitlines()) == 1
    assert "tokenizers" in result.output and "FAIL (1 failed)" in result.output  # the checks after it still ran


def test_a_tokenizer_that_crashes_is_an_error_row(tiny_converted, monkeypatch):
    from tests.crashing import segfault

    import dataclasses

    from gpt2hub import converters

    # safetensors' tokenizer.json reader replaced by one that dies of SIGSEGV in its child process
    form = converters.get("safetensors")
    crashing = dataclasses.replace(form, tokenizer=dataclasses.replace(form.tokenizer, ids=segfault))
    get = converters.get
    monkeypatch.setattr(converters, "get", lambda fmt: crashing if fmt == "safetensors" else get(fmt))
    report = V.verify(tiny_converted, formats=["safetensors"])
    (t,) = [t for t in report.tokenization if t.tokenizer == "tokenizers"]
    assert t.status == "ERROR" and "SIGSEGV" in t.detail
    assert row(report, "safetensors").passed and not report.passed
