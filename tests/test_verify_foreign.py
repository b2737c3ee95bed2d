"""`gpt2hub verify PATH --against NAME`: files other programs wrote from a release's weights, proven tensor by tensor.

Every file here is written by the program users get it from: transformers' save_pretrained (f32, bf16), torch.save
of a state dict (a base model without `transformer.`, an old-style one with attn.bias buffers), gguf-py's writer
(gpt2hub's GGUF) and llama.cpp's own quantizer (llama_model_quantize, as llama-quantize runs it) from an F32 and from
an F16 GGUF. Each passes with the verdict that says how it was made; the same files tampered with fail, naming what.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from gpt2hub.converters.hf import reference_names
from gpt2hub.errors import VerificationError
from gpt2hub.ggufheader import read_header
from gpt2hub.testing.release import write_release
from gpt2hub.tfcheckpoint import Checkpoint
from tests.checks import invoke, isolate, one_line, one_line_error, pulled_store

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TINY = dict(n_layer=2, n_embd=64, n_head=4, n_ctx=64)  # SHAPES["tiny"]
K256 = dict(n_layer=2, n_embd=256, n_head=4, n_ctx=64)  # rows K-quants hold (256-value super-blocks)


def _config(n_layer: int, n_embd: int, n_head: int, n_ctx: int):
    return transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_ctx, vocab_size=50257)


def _model(release: Path, base: bool = False):
    """GPT2LMHeadModel (or GPT2Model) holding the release's weights."""
    model = (transformers.GPT2Model if base else transformers.GPT2LMHeadModel)(_config(**TINY))
    params = dict(model.named_parameters())
    prefix = "" if base else "transformer."
    with Checkpoint(release) as ckpt, torch.no_grad():
        for tf, name in reference_names(TINY["n_layer"]).items():
            value = np.array(ckpt.tensor(tf))
            params[prefix + name].copy_(torch.from_numpy(value[0] if value.ndim == 3 else value))
    return model


def _with_vocab(release: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(release / "encoder.json", folder / "vocab.json")
    shutil.copyfile(release / "vocab.bpe", folder / "merges.txt")
    return folder


def _llama_quantize(src: Path, dst: Path, ftype: str) -> Path:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    assert llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params)) == 0
    return dst


def _gguf_py_rewrite(src: Path, dst: Path) -> Path:
    """gguf-py rewriting a GGUF as its gguf_new_metadata.py does: every key-value and tensor through GGUFWriter."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, reader.get_field(gguf.Keys.General.ARCHITECTURE).contents())
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        vtype = field.types[0]
        writer.add_key_value(field.name, field.contents(), vtype,
                             sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _retouched(folder: Path, out: Path, change) -> Path:
    """A copy of an HF folder whose model.safetensors went through `change` (a dict of arrays, changed in place)."""
    shutil.copytree(folder, out)
    tensors = safetensors_numpy.load_file(out / "model.safetensors")
    change(tensors)
    safetensors_numpy.save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def _scale(tensors: dict) -> None:
    tensors["transformer.h.0.mlp.c_fc.weight"] = tensors["transformer.h.0.mlp.c_fc.weight"] * np.float32(1.01)


def _transpose(tensors: dict) -> None:
    name = "transformer.h.1.attn.c_proj.weight"  # (n_embd, n_embd): a transposed copy keeps its shape
    tensors[name] = np.ascontiguousarray(tensors[name].T)


def _swap(tensors: dict) -> None:
    a, b = "transformer.h.0.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.weight"
    tensors[a], tensors[b] = tensors[b].copy(), tensors[a].copy()


@pytest.fixture(scope="module")
def files(tiny_release, tmp_path_factory) -> dict[str, Path]:
    """Every file, written once: HF files from tiny_release, GGUFs from a K-quant-sized release (the key "k256")."""
    root = tmp_path_factory.mktemp("foreign")
    out: dict[str, Path] = {"tiny": tiny_release}
    out["hf-f32"] = _with_vocab(tiny_release, root / "hf-f32")
    _model(tiny_release).save_pretrained(out["hf-f32"])
    out["hf-bf16"] = root / "hf-bf16"
    _model(tiny_release).to(torch.bfloat16).save_pretrained(out["hf-bf16"])
    _with_vocab(tiny_release, out["hf-bf16"])
    out["base.bin"] = root / "base.bin"  # GPT2Model's state dict: no `transformer.` prefix, one file, no config
    torch.save(_model(tiny_release, base=True).state_dict(), out["base.bin"])
    old = _with_vocab(tiny_release, root / "old-style")  # as transformers 2-4 saved: attn.bias buffers in the file
    model = _model(tiny_release)
    model.config.save_pretrained(old)
    state = model.state_dict()
    for i in range(TINY["n_layer"]):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(TINY["n_ctx"], TINY["n_ctx"])).view(1, 1, TINY["n_ctx"], TINY["n_ctx"])
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, old / "pytorch_model.bin")
    out["old-style"] = old
    # tampered copies
    out["scaled"] = _retouched(out["hf-f32"], root / "scaled", _scale)
    out["swapped"] = _retouched(out["hf-f32"], root / "swapped", _swap)
    out["transposed"] = _retouched(out["hf-f32"], root / "transposed", _transpose)
    out["upcast"] = _with_vocab(tiny_release, root / "upcast")  # a bf16 model widened back to f32, then saved
    _model(tiny_release).to(torch.bfloat16).to(torch.float32).save_pretrained(out["upcast"])
    torch.manual_seed(1)
    other = _with_vocab(tiny_release, root / "other-model")
    transformers.GPT2LMHeadModel(_config(**TINY)).save_pretrained(other)
    out["other-model"] = other
    vocab = root / "other-vocab"
    shutil.copytree(out["hf-f32"], vocab)
    encoder = json.loads((vocab / "vocab.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in encoder.items()}
    encoder[by_id[100]], encoder[by_id[101]] = 101, 100
    (vocab / "vocab.json").write_text(json.dumps(encoder), encoding="utf-8")
    out["other-vocab"] = vocab
    # GGUF: gguf-py's writer (gpt2hub's F32 and F16), then llama.cpp's quantizer from each
    k256 = out["k256"] = write_release(root / "k256", **K256)
    for dtype in ("f32", "f16"):
        out[f"gguf-{dtype}"] = gpt2hub.convert(k256, to="gguf", dtype=dtype, out=root / f"k256-{dtype}.gguf").path
        for ftype in ("Q8_0", "Q4_K_M"):
            out[f"{ftype.lower()}-from-{dtype}"] = _llama_quantize(out[f"gguf-{dtype}"], root / f"k256-{dtype}-{ftype}.gguf", ftype)
    out["f16-by-llama"] = _llama_quantize(out["gguf-f32"], root / "k256-f32-F16.gguf", "F16")
    out["rewritten"] = _gguf_py_rewrite(out["q4_k_m-from-f32"], root / "rewritten.gguf")
    tampered = root / "q8_0-scale.gguf"
    shutil.copyfile(out["q8_0-from-f32"], tampered)
    info = next(t for t in read_header(tampered).tensors if t.name == "blk.0.ffn_up.weight")
    with open(tampered, "r+b") as f:  # block 5's scale d (an f16 at the block's start: 2 + 32 bytes per block)
        f.seek(info.offset + 5 * 34)
        d = np.frombuffer(f.read(2), "<f2")[0]
        f.seek(info.offset + 5 * 34)
        f.write(np.array([d * 2], "<f2").tobytes())
    out["q8_0-scale"] = tampered
    out["onnx"] = gpt2hub.convert(tiny_release, to="onnx", out=root / "onnx").path  # no exporter but gpt2hub's here
    out["home"] = pulled_store(tiny_release, root / "store", [])
    return out


def prove(files, key: str, against: str = "tiny"):
    return gpt2hub.verify_against(files[key], str(files[against]), logits=False)


# --- files written from the release's own weights pass, with the verdict that says how they were made --------------

@pytest.mark.parametrize("key", ["hf-f32", "base.bin", "old-style", "gguf-f32"])
def test_bit_identical_files_are_identical(files, key):
    p = prove(files, key, "k256" if key.startswith("gguf") else "tiny")
    assert p.passed and p.verdict_kind == "identical", p.to_text()
    assert p.verdict == f"identical to {'k256' if key.startswith('gguf') else 'tiny'} (f32)"
    assert len(p.tensors) == 28 and {t.kind for t in p.tensors} == {"identical"}


def test_a_bf16_save_is_the_release_rounded_to_bf16_exactly(files):
    p = prove(files, "hf-bf16")
    assert p.passed and p.verdict == "tiny rounded to bf16, exactly", p.to_text()
    assert {t.encoding for t in p.tensors} == {"BF16"}


def test_an_f32_file_of_bf16_values_is_the_release_rounded_to_bf16(files):
    p = prove(files, "upcast")
    assert p.passed and p.verdict == "tiny rounded to bf16, exactly", p.to_text()
    assert all(t.encoding == "F32" and t.note.endswith("rounded to bf16") for t in p.tensors if t.kind == "rounded")


@pytest.mark.parametrize("key", ["gguf-f16", "f16-by-llama"])
def test_an_f16_gguf_is_the_release_rounded_to_f16_exactly(files, key):
    p = prove(files, key, "k256")
    assert p.passed and p.verdict == "k256 rounded to f16, exactly", p.to_text()
    assert {(t.encoding, t.kind) for t in p.tensors} == {("F16", "rounded"), ("F32", "identical")}


def test_the_old_style_file_s_attn_bias_buffers_are_checked_and_set_aside(files):
    p = prove(files, "old-style")
    aside = next(m for m in p.metadata if m.what == "set aside")
    assert aside.passed and "2 attn.bias buffers (the causal mask, checked)" in aside.detail


def test_a_single_state_dict_file_says_n_head_is_not_in_it(files):
    p = prove(files, "base.bin")
    hparams = next(m for m in p.metadata if m.what == "hparams")
    assert "n_head" not in hparams.detail.split(" from ")[0] and "n_head is not stored" in hparams.detail
    assert next(m for m in p.metadata if m.what == "vocabulary").detail.startswith("none in the file")


@pytest.mark.parametrize("ftype", ["q8_0", "q4_k_m"])
def test_llama_cpp_s_quantization_of_the_f32_gguf_has_identical_blocks(files, ftype):
    p = prove(files, f"{ftype}-from-f32", "k256")
    assert p.passed and p.verdict == f"k256 quantized to {ftype.upper()} by llama.cpp's quantizer: 28 tensors, blocks identical", p.to_text()
    quantized = [t for t in p.tensors if t.encoding != "F32"]
    assert quantized and all(t.kind == "blocks identical" for t in quantized)
    if ftype == "q4_k_m":
        assert {t.encoding for t in quantized} == {"Q4_K", "Q6_K"}


def test_a_gguf_rewritten_by_gguf_py_keeps_its_blocks(files):
    p = prove(files, "rewritten", "k256")
    assert p.passed and p.verdict == "k256 quantized to Q4_K_M by llama.cpp's quantizer: 28 tensors, blocks identical", p.to_text()


@pytest.mark.parametrize("ftype", ["q8_0", "q4_k_m"])
def test_quantized_from_an_f16_gguf_is_within_bound_not_identical(files, ftype):
    p = prove(files, f"{ftype}-from-f16", "k256")
    assert p.passed and p.verdict_kind == "within-bound", p.to_text()
    assert p.verdict.startswith(f"k256 quantized to {ftype.upper()}: blocks within ")
    assert p.verdict.endswith("not byte-identical to this llama.cpp")
    within = [t for t in p.tensors if t.kind == "within bound"]
    assert within and all(0 < t.nmse <= 1e-2 and t.block_ratio is not None for t in within)
    assert all("rounded to f16" in t.note for t in within)  # recognised: ggml's own blocks of f16(release)


# --- tampered files fail, naming what differs ---------------------------------------------------------------------

def test_one_tensor_scaled_by_1_01_fails_and_says_so(files):
    p = prove(files, "scaled")
    assert not p.passed and p.verdict.startswith("NOT tiny: 1 of 28 tensors differ beyond any rounding"), p.to_text()
    assert "model/h0/mlp/c_fc/w looks like the release's tensor scaled by 1.01" in p.verdict
    bad = next(t for t in p.tensors if t.kind == "differs")
    assert bad.rel_err == pytest.approx(0.01, rel=1e-3) and bad.nmse == pytest.approx(1e-4, rel=1e-2)


def test_two_layers_swapped_fail_as_swapped(files):
    p = prove(files, "swapped")
    assert not p.passed, p.to_text()
    assert p.verdict == ("NOT tiny: 2 of 28 tensors differ beyond any rounding "
                         "(model/h0/mlp/c_fc/w and model/h1/mlp/c_fc/w look swapped)")


def test_a_transposed_square_matrix_is_recognised(files):
    p = prove(files, "transposed")
    assert not p.passed and p.verdict == ("NOT tiny: 1 of 28 tensors differ beyond any rounding (model/h1/attn/c_proj/w "
                                          "looks like the release's tensor transposed)"), p.to_text()


def test_a_changed_q8_0_block_scale_fails_naming_the_tensor_and_block(files):
    p = prove(files, "q8_0-scale", "k256")
    assert not p.passed and p.verdict == ("NOT k256: 1 of 28 tensors differ beyond any rounding "
                                          "(blk.0.ffn_up.weight)"), p.to_text()
    bad = next(t for t in p.tensors if t.kind == "differs")
    assert bad.stored_name == "blk.0.ffn_up.weight" and "block 5 of row 0" in bad.note


def test_a_different_model_of_the_same_shape_fails(files):
    p = prove(files, "other-model")
    assert not p.passed and p.verdict.endswith("(a different model of the same shape)"), p.to_text()
    assert sum(t.kind == "differs" for t in p.tensors) >= 20


def test_a_different_vocabulary_fails_naming_the_token(files):
    p = prove(files, "other-vocab")
    assert not p.passed, p.to_text()
    assert p.verdict.startswith("NOT tiny: vocabulary token 100 is ")
    assert all(t.passed for t in p.tensors)


def test_a_release_of_other_shapes_is_not_proven_tensor_by_tensor(files):
    p = prove(files, "hf-f32", "k256")
    assert not p.passed and p.verdict.startswith("NOT k256: the shapes differ (n_layer 2, n_embd 64") and not p.tensors


# --- the command: exit codes, --json, candidates, one-line errors ---------------------------------------------------

def test_cli_exit_0_for_a_pass_and_1_for_a_fail_with_the_verdict_last(files, monkeypatch):
    isolate(monkeypatch, files["home"])
    ok = invoke("verify", str(files["hf-f32"]), "--against", "tiny", "--weights-only")
    assert ok.exit_code == 0 and ok.stdout.splitlines()[-1] == "PASS identical to tiny (f32)", ok.stdout
    bad = invoke("verify", str(files["swapped"]), "--against", "tiny")
    assert bad.exit_code == 1 and bad.stdout.splitlines()[-1].startswith("FAIL NOT tiny: 2 of 28"), bad.stdout


def test_cli_json_carries_the_verdict_and_every_tensor(files, monkeypatch):
    isolate(monkeypatch, files["home"])
    r = invoke("verify", str(files["q4_k_m-from-f16"]), "--against", str(files["k256"]), "--json", "--weights-only")
    data = json.loads(r.stdout)
    assert r.exit_code == 0 and data["passed"] and data["verdict_kind"] == "within-bound"
    assert data["verdict"].startswith("k256 quantized to Q4_K_M: blocks within") and len(data["tensors"]) == 28
    r = invoke("verify", str(files["scaled"]), "--against", "tiny", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["verdict_kind"] == "differs"


def test_without_against_the_releases_on_disk_with_its_shapes_are_tried(files, monkeypatch):
    isolate(monkeypatch, files["home"])
    r = invoke("verify", str(files["hf-f32"]), "--weights-only")
    assert r.exit_code == 0 and r.stdout.splitlines()[-1] == "PASS identical to tiny (f32)", r.stdout


def test_without_against_and_nothing_on_disk_it_says_which_release_to_pull(files, tmp_path, monkeypatch):
    from gpt2hub import registry

    isolate(monkeypatch, tmp_path / "home")
    r = invoke("verify", str(files["hf-f32"]))
    one_line_error(r, "no release on disk to prove it against", "no known release has its shapes (n_layer 2, n_embd 64")
    registry.save_user_manifest(registry.create_manifest(files["tiny"], "tiny"))
    r = invoke("verify", str(files["hf-f32"]))
    one_line_error(r, "the shapes are tiny's: gpt2hub pull tiny")


def test_bad_inputs_are_one_line_errors(files, tmp_path, monkeypatch):
    isolate(monkeypatch, files["home"])
    one_line_error(invoke("verify", str(tmp_path / "absent"), "--against", "tiny"), "no such file or folder")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    one_line_error(invoke("verify", str(junk), "--against", "tiny"), "not a checkpoint gpt2hub reads", ".safetensors")
    one_line_error(invoke("verify", str(files["hf-f32"]), "--against", "gpt2-chatbot"), "unknown release")
    one_line_error(invoke("verify", "--against", "tiny"), "name the file or folder to prove")
    cut = tmp_path / "cut.safetensors"
    data = (files["hf-f32"] / "model.safetensors").read_bytes()
    cut.write_bytes(data[:-4096])
    one_line_error(invoke("verify", str(cut), "--against", "tiny"), "cannot read it as GPT-2", "truncated")


# --- logits through the file's own consumer, after the proofs -----------------------------------------------------

def test_an_hf_folder_runs_through_transformers_within_the_f32_noise(files, monkeypatch):
    isolate(monkeypatch, files["home"])
    r = invoke("verify", str(files["hf-f32"]), "--against", "tiny")
    assert r.exit_code == 0, r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("  logits"))
    assert line.startswith("  logits       ok   transformers (f32): max |delta| ") and "essentially identical" in line


def test_a_q4_k_m_gguf_runs_through_llama_cpp_with_the_figures_people_compare(files):
    p = gpt2hub.verify_against(files["q4_k_m-from-f32"], str(files["k256"]))
    lg = p.logits
    assert p.passed and lg.ran and lg.passed and lg.consumer == "llama.cpp" and lg.dtype == "q4_k_m", p.to_text()
    assert lg.held_max_abs <= lg.bound and 0 < lg.nmse < 0.1 and 0 <= lg.kl < 1e-2 and lg.band
    assert 0 <= lg.top5 <= 1 and 0 <= lg.top1 <= 1
    assert json.loads(json.dumps(p.to_dict()))["logits"]["consumer"] == "llama.cpp"


def test_an_onnx_folder_is_read_through_its_format_and_run_by_onnxruntime(files):
    pytest.importorskip("onnxruntime")
    p = gpt2hub.verify_against(files["onnx"], str(files["tiny"]))
    assert p.passed and p.verdict == "identical to tiny (f32)" and p.source_kind == "onnx", p.to_text()
    assert p.logits.consumer == "onnxruntime" and p.logits.passed and p.logits.nmse < 1e-6
    assert "compared with the release's" in next(m for m in p.metadata if m.what == "vocabulary").detail


def test_a_lone_state_dict_file_has_no_consumer_to_run(files):
    p = gpt2hub.verify_against(files["base.bin"], str(files["tiny"]))
    assert p.passed and not p.logits.ran and "no program loads this file alone" in p.logits.note


def test_a_crafted_safetensors_header_is_refused_in_one_line(tmp_path, files):
    crafted = tmp_path / "crafted.safetensors"
    header = json.dumps({"wte.weight": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 4]},
                         "wpe.weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [4, 8]}}).encode()
    crafted.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 8)
    with pytest.raises(VerificationError) as e:
        gpt2hub.verify_against(crafted, str(files["tiny"]), logits=False)
    one_line(e)
