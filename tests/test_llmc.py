"""`convert --to llmc`: the files karpathy/llm.c loads, read back by a loader written from llm.c's C layout.

The loader below follows train_gpt2.c (`gpt2_build_from_checkpoint`, `fill_in_parameter_sizes`) and
llmc/tokenizer.h (`tokenizer_init`), not the writer's tables, and feeds gpt2hub's float64 model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import gpt2hub
from gpt2hub.cli import main
from gpt2hub.errors import ConversionError
from tests.checks import one_line
from gpt2hub.testing.release import tiktoken_encoding

TOKENS = [464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688]


def read_llmc_model(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header fields, HF-named float32 tensors in Conv1D (in, out) layout, wte unpadded) from a .bin file."""
    raw = path.read_bytes()
    header = struct.unpack("<256i", raw[:1024])
    assert header[0] == 20240326, "bad magic"
    version, maxT, V, L, NH, C, Vp = header[1:8]
    assert version in (3, 5)
    # train_gpt2.c fill_in_parameter_sizes, in order
    sizes = [("wte", (Vp, C)), ("wpe", (maxT, C)), ("ln1w", (L, C)), ("ln1b", (L, C)), ("qkvw", (L, 3 * C, C)),
             ("qkvb", (L, 3 * C)), ("attprojw", (L, C, C)), ("attprojb", (L, C)), ("ln2w", (L, C)), ("ln2b", (L, C)),
             ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)), ("fcprojw", (L, C, 4 * C)), ("fcprojb", (L, C)),
             ("lnfw", (C,)), ("lnfb", (C,))]
    n = sum(int(np.prod(s)) for _, s in sizes)
    if version == 3:
        flat = np.frombuffer(raw, "<f4", count=n, offset=1024)
    else:  # bf16: the high half of a float32
        flat = (np.frombuffer(raw, "<u2", count=n, offset=1024).astype(np.uint32) << 16).view(np.float32)
    assert len(raw) == 1024 + n * (4 if version == 3 else 2), "file size is not header + parameters"
    params, at = {}, 0
    for name, shape in sizes:
        k = int(np.prod(shape))
        params[name] = flat[at:at + k].reshape(shape)
        at += k
    hf = {"wte.weight": params["wte"][:V], "wpe.weight": params["wpe"],
          "ln_f.weight": params["lnfw"], "ln_f.bias": params["lnfb"]}
    kinds = {"ln1w": "ln_1.weight", "ln1b": "ln_1.bias", "qkvw": "attn.c_attn.weight", "qkvb": "attn.c_attn.bias",
             "attprojw": "attn.c_proj.weight", "attprojb": "attn.c_proj.bias", "ln2w": "ln_2.weight",
             "ln2b": "ln_2.bias", "fcw": "mlp.c_fc.weight", "fcb": "mlp.c_fc.bias", "fcprojw": "mlp.c_proj.weight",
             "fcprojb": "mlp.c_proj.bias"}
    for kind, hf_name in kinds.items():
        for i in range(L):
            a = params[kind][i]
            hf[f"h.{i}.{hf_name}"] = a.T if a.ndim == 2 else a  # nn.Linear (out, in) -> Conv1D (in, out)
    fields = dict(version=version, max_seq_len=maxT, vocab_size=V, n_layer=L, n_head=NH, n_embd=C,
                  padded_vocab_size=Vp, pad_rows=params["wte"][V:])
    return fields, hf


def read_llmc_tokenizer(path: Path) -> tuple[int, list[bytes]]:
    """(EOT id, token bytes by id) as llm.c's tokenizer_init reads gpt2_tokenizer.bin."""
    raw = path.read_bytes()
    magic, version, n, eot = struct.unpack("<4i", raw[:16])
    assert (magic, version) == (20240328, 2)
    tokens, at = [], 1024
    for _ in range(n):
        length = raw[at]
        assert length > 0
        tokens.append(raw[at + 1:at + 1 + length])
        at += 1 + length
    assert at == len(raw), "bytes after the last token"
    return eot, tokens


def logits_of(hparams: dict, tensors: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    from gpt2hub import model

    cfg = model.GPTConfig(hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"], hparams["n_head"], hparams["n_layer"])
    gpt = model.from_tensors(cfg, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, "llmc",
                             dtype=torch.float64)
    with torch.no_grad():
        return gpt(torch.tensor([TOKENS]))[0][0].numpy()


@pytest.fixture(scope="session")
def llmc(tiny_release, tmp_path_factory):
    root = tmp_path_factory.mktemp("llmc")
    return {dtype: gpt2hub.convert(tiny_release, to="llmc", dtype=dtype, out=root / dtype).path
            for dtype in ("f32", "bf16")}


@pytest.fixture(scope="session")
def hparams(tiny_release) -> dict:
    return json.loads((tiny_release / "hparams.json").read_text())


@pytest.fixture(scope="session")
def reference(tiny_release) -> np.ndarray:
    import torch

    from gpt2hub import model

    gpt = model.from_checkpoint(tiny_release, dtype=torch.float64)
    with torch.no_grad():
        return gpt(torch.tensor([TOKENS]))[0][0].numpy()


def test_folder_holds_the_model_and_tokenizer_under_train_gpt2_py_names(llmc, tiny_release):
    name = tiny_release.name
    assert sorted(p.name for p in llmc["f32"].iterdir()) == [f"gpt2_{name}.bin", "gpt2_tokenizer.bin"]
    assert sorted(p.name for p in llmc["bf16"].iterdir()) == [f"gpt2_{name}_bf16.bin", "gpt2_tokenizer.bin"]


@pytest.mark.parametrize("dtype, version", [("f32", 3), ("bf16", 5)])
def test_header_is_train_gpt2_py_header_with_vocab_padded_to_128(llmc, tiny_release, hparams, dtype, version):
    path = next(llmc[dtype].glob("gpt2_*_bf16.bin" if dtype == "bf16" else f"gpt2_{tiny_release.name}.bin"))
    fields, _ = read_llmc_model(path)
    assert fields["version"] == version
    assert (fields["max_seq_len"], fields["vocab_size"], fields["n_layer"], fields["n_head"], fields["n_embd"]) == \
        (hparams["n_ctx"], hparams["n_vocab"], hparams["n_layer"], hparams["n_head"], hparams["n_embd"])
    vp = fields["padded_vocab_size"]
    assert vp % 128 == 0 and vp - 128 < hparams["n_vocab"] <= vp
    if hparams["n_vocab"] == 50257:
        assert vp == 50304
    assert not fields["pad_rows"].any(), "padding rows of wte must be zero"
    assert struct.unpack("<256i", path.read_bytes()[:1024])[8:] == (0,) * 248


def test_f32_weights_are_the_checkpoint_bit_for_bit(llmc, tiny_release):
    from tests.test_convert import source_tensors

    _, tensors = read_llmc_model(llmc["f32"] / f"gpt2_{tiny_release.name}.bin")
    source = source_tensors(tiny_release)
    assert tensors.keys() == source.keys()
    for name, a in source.items():
        assert np.array_equal(tensors[name], a), name


def test_f32_logits_equal_the_reference_exactly(llmc, tiny_release, hparams, reference):
    _, tensors = read_llmc_model(llmc["f32"] / f"gpt2_{tiny_release.name}.bin")
    assert np.array_equal(logits_of(hparams, tensors), reference)


def test_bf16_weights_are_the_checkpoint_rounded_as_torch_does(llmc, tiny_release, hparams, reference):
    import torch

    from tests.test_convert import source_tensors

    _, tensors = read_llmc_model(llmc["bf16"] / f"gpt2_{tiny_release.name}_bf16.bin")
    for name, a in source_tensors(tiny_release).items():
        expected = torch.from_numpy(np.ascontiguousarray(a)).to(torch.bfloat16).float().numpy()
        assert np.array_equal(tensors[name], expected), name
    logits = logits_of(hparams, tensors)
    assert np.abs(logits - reference).max() / np.abs(reference).max() < 2e-2
    assert (logits.argmax(-1) == reference.argmax(-1)).mean() >= 0.9


def test_tokenizer_file_holds_every_token_s_bytes_and_the_eot_id(llmc, tiny_release):
    enc = tiktoken_encoding(tiny_release)
    eot, tokens = read_llmc_tokenizer(llmc["f32"] / "gpt2_tokenizer.bin")
    assert eot == enc.eot_token
    assert len(tokens) == enc.n_vocab
    assert tokens == [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)]
    assert (llmc["f32"] / "gpt2_tokenizer.bin").read_bytes() == (llmc["bf16"] / "gpt2_tokenizer.bin").read_bytes()


def test_cli_converts_a_folder_to_llmc(tiny_release, tmp_path):
    out = tmp_path / "llmc"
    r = CliRunner().invoke(main, ["convert", str(tiny_release), "--to", "llmc", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["format"] == "llmc"
    assert (out / f"gpt2_{tiny_release.name}.bin").is_file()


def test_f16_is_refused_before_writing_anything(tiny_release, tmp_path):
    with pytest.raises(ConversionError) as e:
        gpt2hub.convert(tiny_release, to="llmc", dtype="f16", out=tmp_path / "x")
    assert "llmc has no dtype 'f16'" in one_line(e)
    assert not any(tmp_path.iterdir())


def test_a_vocabulary_shorter_than_wte_is_refused_and_nothing_is_left(tiny_release, tmp_path):
    from gpt2hub.tfcheckpoint import Checkpoint
    from tests.test_convert import copy_checkpoint, no_leftovers

    wte = np.array(Checkpoint(tiny_release).tensor("model/wte"))
    folder = copy_checkpoint(tiny_release, tmp_path / "big", replace={"model/wte": np.vstack([wte, wte[:8]])})
    with pytest.raises(ConversionError) as e:
        gpt2hub.convert(folder, to="llmc", out=tmp_path / "out")
    assert "tokens, but wte has" in one_line(e)
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_gpt2hub_reads_the_folder_back_through_the_format_registry(llmc, reference):
    import torch

    from gpt2hub import converters, model

    folder = llmc["f32"]
    assert converters.detect(folder).name == "llmc" and converters.get("llmc").read_dtype(folder) == "f32"
    assert converters.get("llmc").read_dtype(llmc["bf16"]) == "bf16"
    with torch.no_grad():
        logits = model.load(folder, dtype=torch.float64)(torch.tensor([TOKENS]))[0][0].numpy()
    assert np.array_equal(logits, reference)


def test_a_truncated_model_file_is_a_one_line_error(llmc, tmp_path):
    import shutil

    from gpt2hub import converters

    folder = tmp_path / "cut"
    shutil.copytree(llmc["f32"], folder)
    model_file = next(p for p in folder.iterdir() if p.name != "gpt2_tokenizer.bin")
    with open(model_file, "r+b") as f:
        f.truncate(model_file.stat().st_size - 4)
    with pytest.raises(ConversionError) as e:
        converters.get("llmc").read_weights(folder)
    assert "bytes, the header implies" in one_line(e)


# --- verify proves the model file exactly ---------------------------------------------------------


def verify_copy(llmc: dict, tiny_release: Path, tmp_path: Path, dtype: str = "f32", edit=None):
    """verify's report on a release root holding the original and a copy of the llm.c folder, edited first."""
    import shutil

    (tmp_path / "original").symlink_to(tiny_release, target_is_directory=True)
    shutil.copytree(llmc[dtype], tmp_path / "llmc")
    if edit is not None:
        edit(next(p for p in (tmp_path / "llmc").iterdir() if p.name != "gpt2_tokenizer.bin"))
    return gpt2hub.verify(tmp_path, formats="llmc")


def file_check(report, what: str):
    check, = [f for f in report.files if f.format == "llmc" and f.what == what]
    return check


def poke(path: Path, offset: int, fmt: str, change) -> None:
    """One little-endian value of `fmt` at `offset` of a file, replaced by change(value)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        value, = struct.unpack(fmt, f.read(struct.calcsize(fmt)))
        f.seek(offset)
        f.write(struct.pack(fmt, change(value)))


@pytest.mark.parametrize("dtype, kind", [("f32", "28 f32 bit-identical"), ("bf16", "28 bf16 = source rounded to nearest even")])
def test_verify_proves_every_tensor_and_the_zero_padding(llmc, tiny_release, tmp_path, dtype, kind):
    report = verify_copy(llmc, tiny_release, tmp_path, dtype)
    weights, meta = file_check(report, "weights"), file_check(report, "metadata")
    assert (weights.passed, weights.detail) == (True, f"all 28 tensors: {kind}")
    assert meta.passed and report.passed, meta.detail


def test_one_element_one_ulp_off_fails_the_weight_proof(llmc, tiny_release, hparams, tmp_path):
    C, Vp = hparams["n_embd"], -(-hparams["n_vocab"] // 128) * 128
    wpe_3_5 = 1024 + (Vp * C + 3 * C + 5) * 4  # train_gpt2.c: wpe follows the padded wte
    report = verify_copy(llmc, tiny_release, tmp_path,
                         edit=lambda p: poke(p, wpe_3_5, "<I", lambda bits: bits + 1))
    weights = file_check(report, "weights")
    assert not weights.passed and weights.detail.startswith("wpe[3, 5] is ") and not report.passed


def test_nonzero_padding_rows_fail_the_weight_proof(llmc, tiny_release, hparams, tmp_path):
    C, V = hparams["n_embd"], hparams["n_vocab"]
    row = V + 2  # the third padding row, first element
    report = verify_copy(llmc, tiny_release, tmp_path, edit=lambda p: poke(p, 1024 + row * C * 4, "<f", lambda x: 1.0))
    weights = file_check(report, "weights")
    assert not weights.passed and weights.detail.startswith(f"wte: padding row {row} is not zero"), weights.detail


def test_a_transposed_square_matrix_fails(llmc, tiny_release, hparams, tmp_path):
    C, L, Vp, T = hparams["n_embd"], hparams["n_layer"], -(-hparams["n_vocab"] // 128) * 128, hparams["n_ctx"]
    # train_gpt2.c order: wte, wpe, ln1w, ln1b, qkvw, qkvb, then attprojw (L, C, C); layer 1's slice
    at = 1024 + 4 * (Vp * C + T * C + 2 * L * C + L * 3 * C * C + L * 3 * C + C * C)

    def transpose(path: Path) -> None:
        with open(path, "r+b") as f:
            f.seek(at)
            w = np.frombuffer(f.read(C * C * 4), "<f4").reshape(C, C)
            f.seek(at)
            f.write(w.T.tobytes())

    weights = file_check(verify_copy(llmc, tiny_release, tmp_path, edit=transpose), "weights")
    assert not weights.passed and weights.detail.startswith("attprojw[1][")


def test_a_tokenizer_file_with_one_token_changed_fails_the_metadata(llmc, tiny_release, tmp_path):
    def edit(model: Path) -> None:
        tok = model.parent / "gpt2_tokenizer.bin"
        raw = bytearray(tok.read_bytes())
        raw[1024 + 1] ^= 1  # token 0's byte
        tok.write_bytes(bytes(raw))

    meta = file_check(verify_copy(llmc, tiny_release, tmp_path, edit=edit), "metadata")
    assert not meta.passed and meta.detail == "gpt2_tokenizer.bin: token 0 is not encoder.json's bytes for it"


def test_a_header_at_odds_with_the_file_size_fails_the_weight_row(llmc, tiny_release, tmp_path):
    report = verify_copy(llmc, tiny_release, tmp_path, edit=lambda p: poke(p, 4 * 7, "<i", lambda vp: vp + 128))
    weights = file_check(report, "weights")
    assert not weights.passed and "bytes, the header implies" in weights.detail and not report.passed
