"""`gpt2hub convert MODEL.bin`: an llm.c checkpoint (version 3 f32, version 5 bf16) as a source.

The files are written by gpt2hub.testing.llmc_source, which follows llm.c's train_gpt2.py (`write_model`,
`write_tokenizer`) with its own torch calls, from the tiny release's weights; gpt2hub's own llm.c writer
(converters/llmc.py) is checked against it byte for byte, and a round trip through it proves the reader against
gpt2hub's writer too. Every output must hold the release's values: bit-identical from version 3, the release
rounded to bf16 (to nearest even) and widened from version 5.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from tests.checks import invoke, isolate, one_line_error

torch = pytest.importorskip("torch")  # the writer makes train_gpt2.py's torch calls

from gpt2hub.testing.llmc_source import write_llmc  # noqa: E402

N_LAYER, N_EMBD, N_HEAD, N_CTX, N_VOCAB, PADDED = 2, 64, 4, 64, 50257, 50304  # SHAPES["tiny"], GPT-2's vocabulary
HEADER = 1024


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    isolate(monkeypatch, tmp_path / "home")
    return tmp_path / "home"


@pytest.fixture(scope="module")
def made(tiny_release, tmp_path_factory) -> dict[str, Path]:
    """llm.c files of the tiny release (v3, v5, v3 without a tokenizer file), and the release converted by gpt2hub
    to safetensors, tf and llmc (f32 and bf16), for comparison."""
    root = tmp_path_factory.mktemp("llmc")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, root / "home")
        files = {
            "v3": write_llmc(tiny_release, root / "v3"),
            "v5": write_llmc(tiny_release, root / "v5", dtype="bfloat16"),
            "bare": write_llmc(tiny_release, root / "bare", tokenizer=False),
        }
        for to, dtype in (("safetensors", "f32"), ("tf", "f32"), ("llmc", "f32"), ("llmc", "bf16")):
            files[f"release-{to}-{dtype}"] = gpt2hub.convert(tiny_release, to=to, dtype=dtype,
                                                             out=root / f"release-{to}-{dtype}").path
    return files


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(folder / "model.safetensors")


def _convert(path: Path, out: Path, release: Path, **kw):
    return gpt2hub.convert(path, to=kw.pop("to", "safetensors"), out=out, vocab=release, **kw)


def _bf16(a: np.ndarray) -> np.ndarray:
    """float32 rounded to the nearest bf16 (ties to even), widened back: exact."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


def _with_header(src: Path, dst: Path, **ints: int) -> Path:
    """A copy of an llm.c file with header ints replaced (by index: i0=magic, i1=version, ...)."""
    raw = bytearray(src.read_bytes())
    for key, value in ints.items():
        struct.pack_into("<i", raw, 4 * int(key[1:]), value)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(raw))
    return dst


# --- the files are llm.c's ---------------------------------------------------------------------

def test_the_written_files_have_llm_c_layout_and_equal_gpt2hubs_own_llmc_output(made):
    header = struct.unpack("<256i", made["v3"].read_bytes()[:HEADER])
    assert header[:8] == (20240326, 3, N_CTX, N_VOCAB, N_LAYER, N_HEAD, N_EMBD, PADDED) and not any(header[8:])
    per_layer = 12 * N_EMBD * N_EMBD + 13 * N_EMBD  # 4 norms, qkv, proj, fc, fcproj and their biases
    values = PADDED * N_EMBD + N_CTX * N_EMBD + N_LAYER * per_layer + 2 * N_EMBD
    assert made["v3"].stat().st_size == HEADER + 4 * values and made["v5"].stat().st_size == HEADER + 2 * values
    # two writers, one written from train_gpt2.py and one from gpt2hub's tables, agree to the byte
    assert made["v3"].read_bytes() == (made["release-llmc-f32"] / "gpt2_tiny.bin").read_bytes()
    assert made["v5"].read_bytes() == (made["release-llmc-bf16"] / "gpt2_tiny_bf16.bin").read_bytes()
    tokenizer = (made["v3"].parent / "gpt2_tokenizer.bin").read_bytes()
    assert tokenizer == (made["release-llmc-f32"] / "gpt2_tokenizer.bin").read_bytes()


# --- every tensor is the release's -----------------------------------------------------------------

def test_a_version_3_file_converts_to_safetensors_bit_identical_to_the_release(made, tiny_release, tmp_path):
    r = _convert(made["v3"], tmp_path / "out", tiny_release)
    assert r.source_kind == "llmc" and r.tensors == 4 + 12 * N_LAYER and r.hparams_from == "header of gpt2_124M.bin"
    assert r.hparams == {"n_vocab": N_VOCAB, "n_ctx": N_CTX, "n_embd": N_EMBD, "n_head": N_HEAD, "n_layer": N_LAYER}
    assert r.notes == [f"tokenizer: gpt2_tokenizer.bin matches GPT-2's 50,257 tokens; GPT-2's vocabulary from "
                       f"--vocab {tiny_release}"]
    got, want = _tensors(r.path), _tensors(made["release-safetensors-f32"])
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == np.float32 and got[name].tobytes() == want[name].tobytes(), name


def test_a_version_5_file_converts_to_the_release_rounded_to_bf16_exactly(made, tiny_release, tmp_path):
    r = _convert(made["v5"], tmp_path / "out", tiny_release)
    got, want = _tensors(r.path), _tensors(made["release-safetensors-f32"])
    assert got.keys() == want.keys()
    rounded = 0
    for name in want:
        assert got[name].dtype == np.float32 and got[name].shape == want[name].shape, name
        assert got[name].tobytes() == _bf16(want[name]).tobytes(), name
        rounded += int((got[name] != want[name]).sum())
    assert rounded > 0  # the release's values are not bf16 already: the rounding is really tested


def test_a_version_3_file_converts_to_tf_byte_identical_to_the_releases_tf_output(made, tiny_release, tmp_path):
    r = _convert(made["v3"], tmp_path / "out", tiny_release, to="tf")
    for name in ("model.ckpt.data-00000-of-00001", "model.ckpt.index", "hparams.json", "encoder.json", "vocab.bpe"):
        assert (r.path / name).read_bytes() == (made["release-tf-f32"] / name).read_bytes(), name


def test_release_to_llmc_and_back_is_bit_identical(made, tiny_release, tmp_path):
    """gpt2hub's writer (convert --to llmc) and this reader: the round trip loses nothing."""
    result = invoke("convert", str(tiny_release), "--to", "llmc", "--out", str(tmp_path / "llmc"), "--quiet")
    assert result.exit_code == 0, result.stderr
    model = tmp_path / "llmc" / "gpt2_tiny.bin"
    result = invoke("convert", str(model), "--to", "safetensors", "--out", str(tmp_path / "back"),
                    "--vocab", str(tiny_release), "--quiet")
    assert result.exit_code == 0, result.stderr
    got, want = _tensors(tmp_path / "back"), _tensors(made["release-safetensors-f32"])
    assert {n: a.tobytes() for n, a in got.items()} == {n: a.tobytes() for n, a in want.items()}


# --- the tokenizer file -------------------------------------------------------------------------------

def test_without_a_tokenizer_file_gpt2s_vocabulary_is_used_and_said(made, tiny_release, tmp_path):
    r = _convert(made["bare"], tmp_path / "out", tiny_release)
    assert r.notes == [f"tokenizer: no gpt2_tokenizer.bin beside gpt2_124M.bin; GPT-2's vocabulary from "
                       f"--vocab {tiny_release}"]
    assert (r.path / "vocab.json").read_bytes() == (tiny_release / "encoder.json").read_bytes()
    assert _tensors(r.path).keys() == _tensors(made["release-safetensors-f32"]).keys()


def test_without_gpt2s_vocabulary_anywhere_the_convert_is_refused_in_one_line(made, tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-tiktoken-cache"))
    out = tmp_path / "out"
    one_line_error(invoke("convert", str(made["v3"]), "--to", "safetensors", "--out", str(out)),
                   f"{made['v3']}: an llm.c checkpoint, whose tokenizer file holds no merges",
                   "GPT-2's vocabulary is not here: pass --vocab DIR")
    assert not out.exists()


def test_any_tokenizer_bin_with_llm_cs_magic_is_checked_and_named(made, tiny_release, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copyfile(made["v3"], folder / "model.bin")
    shutil.copyfile(made["v3"].parent / "gpt2_tokenizer.bin", folder / "my_tokenizer.bin")
    r = _convert(folder / "model.bin", tmp_path / "out", tiny_release)
    assert r.notes[0].startswith("tokenizer: my_tokenizer.bin matches GPT-2's 50,257 tokens")


def test_a_version_1_tokenizer_file_without_an_eot_id_is_gpt2s(made, tiny_release, tmp_path):
    """llm.c's first tokenizer files had version 1 and no EOT id (llmc/tokenizer.h assumes 50256)."""
    folder = tmp_path / "run"
    shutil.copytree(made["v3"].parent, folder)
    _with_header(made["v3"].parent / "gpt2_tokenizer.bin", folder / "gpt2_tokenizer.bin", i1=1, i3=0)
    assert _convert(folder / "gpt2_124M.bin", tmp_path / "out", tiny_release).notes[0].startswith(
        "tokenizer: gpt2_tokenizer.bin matches")


def _tokenizer_variant(made, folder: Path, change) -> Path:
    shutil.copytree(made["v3"].parent, folder)
    raw = bytearray((folder / "gpt2_tokenizer.bin").read_bytes())
    (folder / "gpt2_tokenizer.bin").write_bytes(bytes(change(raw)))
    return folder / "gpt2_tokenizer.bin"


def _token_changed(raw: bytearray) -> bytearray:
    raw[HEADER + 2 * 2 + 1] ^= 0x20  # token 2's only byte ('#' -> 0x03)
    return raw


def _eot_elsewhere(raw: bytearray) -> bytearray:
    struct.pack_into("<i", raw, 12, 0)
    return raw


@pytest.mark.parametrize("change, needles", [
    (_token_changed, ["token 2 is b'\\x03', GPT-2's is b'#'", "GPT-2's vocabulary only"]),
    (lambda raw: raw + b"\x01!", ["bytes after GPT-2's 50,257 tokens"]),
    (lambda raw: raw[:HEADER + 5000], ["token"]),
    (lambda raw: raw[:100], ["shorter than llm.c's 1024-byte tokenizer header"]),
    (_eot_elsewhere, ["50,257 tokens, EOT id 0; GPT-2 has 50,257 tokens and EOT id 50256"]),
    (lambda raw: struct.pack("<i", 7) + raw[4:], ["magic 7 version 2 is not an llm.c tokenizer file"]),
], ids=["token", "trailing", "truncated", "short", "eot", "magic"])
def test_a_tokenizer_file_that_is_not_gpt2s_is_refused_in_one_line(made, tiny_release, tmp_path, change, needles):
    tokenizer = _tokenizer_variant(made, tmp_path / "run", change)
    out = tmp_path / "out"
    line = one_line_error(invoke("convert", str(tokenizer.parent / "gpt2_124M.bin"), "--to", "safetensors",
                                 "--out", str(out), "--vocab", str(tiny_release)), str(tokenizer), *needles)
    assert len(line) < 400 and not out.exists()


def test_two_candidate_tokenizer_files_are_refused_in_one_line(made, tiny_release, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copyfile(made["v3"], folder / "model.bin")
    for name in ("a_tokenizer.bin", "b_tokenizer.bin"):
        shutil.copyfile(made["v3"].parent / "gpt2_tokenizer.bin", folder / name)
    one_line_error(invoke("convert", str(folder / "model.bin"), "--to", "safetensors", "--vocab", str(tiny_release)),
                   "2 llm.c tokenizer files (a_tokenizer.bin, b_tokenizer.bin)")


# --- detection and crafted files ----------------------------------------------------------------------

def test_the_file_is_detected_from_its_header_and_converts_beside_itself(made, tiny_release, tmp_path):
    model = tmp_path / "any-name.bin"
    shutil.copyfile(made["v3"], model)
    result = invoke("convert", str(model), "--to", "safetensors", "--vocab", str(tiny_release), "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "any-name-safetensors" / "model.safetensors").is_file()


def _truncated(made, path: Path) -> Path:
    path.write_bytes(made["v3"].read_bytes()[:-100])
    return path


@pytest.mark.parametrize("make, needles", [
    (lambda made, p: _truncated(made, p), ["bytes, but its header", "implies", "truncated"]),
    (lambda made, p: _with_header(made["v3"], p, i4=3),
     ["3 layers", "implies 13,495,552", "a header that does not describe the file"]),
    (lambda made, p: _with_header(made["v5"], p, i1=3), ["version 3", "truncated"]),
    (lambda made, p: _with_header(made["v3"], p, i1=4), ["magic 20240326 version 4 is not an llm.c GPT-2 checkpoint"]),
    (lambda made, p: _with_header(made["v3"], p, i4=2_000_000_000), ["n_layer 2,000,000,000 is beyond gpt2hub's limit"]),
    (lambda made, p: _with_header(made["v3"], p, i6=-64), ["n_embd must be a positive integer"]),
    (lambda made, p: _with_header(made["v3"], p, i2=0), ["n_ctx must be a positive integer"]),
    (lambda made, p: _with_header(made["v3"], p, i5=5), ["n_embd 64 is not divisible by n_head 5"]),
    (lambda made, p: _with_header(made["v3"], p, i7=50000), ["padded_vocab_size 50,000 is not between vocab_size"]),
    (lambda made, p: _with_header(made["v3"], p, i7=2**31 - 1), ["padded_vocab_size 2,147,483,647 is not between"]),
    (lambda made, p: _with_header(made["v3"], p, i3=50000, i7=50048), ["vocab_size 50,000", "GPT-2's 50,257 tokens"]),
    (lambda made, p: p.write_bytes(made["v3"].read_bytes()[:600]) and p, ["shorter than llm.c's 1024-byte header"]),
], ids=["truncated", "layers-beyond-file", "v5-read-as-v3", "version-4", "absurd-layers", "negative-channels",
        "zero-context", "heads", "padded-below-vocab", "padded-absurd", "vocab-not-gpt2", "short-header"])
def test_a_crafted_or_damaged_model_file_is_refused_in_one_line(made, tiny_release, tmp_path, make, needles):
    model = make(made, tmp_path / "gpt2_bad.bin")
    out = tmp_path / "out"
    line = one_line_error(invoke("convert", str(model), "--to", "safetensors", "--out", str(out),
                                 "--vocab", str(tiny_release)), str(model), *needles)
    assert len(line) < 400 and not out.exists()


def test_another_magic_is_no_llm_c_file(made, tmp_path):
    model = _with_header(made["v3"], tmp_path / "gpt2_bad.bin", i0=20240328)
    one_line_error(invoke("convert", str(model), "--to", "safetensors"), "not a checkpoint gpt2hub reads",
                   "an llm.c checkpoint file")
    one_line_error(invoke("convert", str(model), "--to", "safetensors", "--from", "llmc"),
                   "accepted with --from llmc: an llm.c checkpoint file")


def test_nonzero_unused_header_ints_are_said(made, tiny_release, tmp_path):
    model = _with_header(made["v3"], tmp_path / "gpt2_x.bin", i9=7, i255=1)
    shutil.copyfile(made["v3"].parent / "gpt2_tokenizer.bin", tmp_path / "gpt2_tokenizer.bin")
    r = _convert(model, tmp_path / "out", tiny_release)
    assert r.notes[0] == ("gpt2_x.bin: 2 of header ints 8-255 nonzero (train_gpt2.py writes 0 and llm.c reads "
                          "none of them)")


# --- what gpt2hub's own llm.c writer records beside a model ----------------------------------------------

def test_an_activation_gpt2hub_recorded_beside_its_llm_c_output_is_restored(made, tiny_release, tmp_path):
    """convert --to llmc --allow-approximate-activation records the model's exact GELU beside the file; reading
    the file back restores it, and the weights are still the release's."""
    import json

    release = tmp_path / "exact"
    shutil.copytree(tiny_release, release)
    hparams = json.loads((release / "hparams.json").read_text())
    (release / "hparams.json").write_text(json.dumps({**hparams, "activation": "gelu_exact"}))
    result = invoke("convert", str(release), "--to", "llmc", "--allow-approximate-activation",
                    "--out", str(tmp_path / "llmc"), "--quiet")
    assert result.exit_code == 0, result.stderr
    r = _convert(tmp_path / "llmc" / "gpt2_exact.bin", tmp_path / "back", tiny_release)
    assert r.hparams["activation"] == "gelu_exact"
    assert r.notes[0].startswith("activation gelu_exact: the model's own, from gpt2hub-approximated.txt")
    got, want = _tensors(r.path), _tensors(made["release-safetensors-f32"])
    assert {n: a.tobytes() for n, a in got.items()} == {n: a.tobytes() for n, a in want.items()}


@pytest.mark.parametrize("text, needles", [
    ("activation relu\n", ["gpt2hub-approximated.txt: activation 'relu' is not one of"]),
    ("n_inner 5\n", ["gpt2hub-approximated.txt: names 'n_inner', not a field llm.c files approximate"]),
    ("x" * 5000, ["5,000 bytes"]),
], ids=["bad-value", "other-field", "oversized"])
def test_a_bad_record_beside_the_model_is_refused_in_one_line(made, tiny_release, tmp_path, text, needles):
    folder = tmp_path / "run"
    shutil.copytree(made["v3"].parent, folder)
    (folder / "gpt2hub-approximated.txt").write_text(text)
    one_line_error(invoke("convert", str(folder / "gpt2_124M.bin"), "--to", "safetensors", "--vocab",
                          str(tiny_release)), *needles)
