"""`gpt2hub convert FILE.gguf`: a GGUF of architecture gpt2 as a source, read in place.

The files are written by the programs users have: gpt2hub's own converter (f32, f16, bf16, q8_0), llama.cpp's
quantizer (`llama_model_quantize`, Q4_K_M, as llama-quantize) and gguf-py's GGUFWriter (a rewrite of those, as a
stranger's tool would lay it out). Exact encodings must come back exactly (F32 bit for bit, F16/BF16 as the release
rounded); block types must come back as gguf-py's own dequantization of each tensor, and say so.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from gpt2hub import source_kinds
from gpt2hub.errors import Gpt2hubError
from gpt2hub.gguf_source import GgufCheckpoint
from gpt2hub.layout import HParams
from gpt2hub.source_tensors import read
from gpt2hub.testing.release import write_release
from gpt2hub.vocabulary import Vocab
from tests.checks import invoke, one_line, one_line_error

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

N_LAYER = 2  # SHAPES["tiny"] and the K-quant release alike
TRANSPOSED = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")  # ggml's (out, in) of GPT-2's Conv1D (in, out)
SIDE_FILES = ("config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer.json")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GPT2HUB_MANIFESTS", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def ggufs(tiny_converted) -> dict[str, Path]:
    """gpt2hub's own GGUFs of the tiny release (real GPT-2 vocabulary), by dtype."""
    return {d: tiny_converted.parent / f"original-{d}.gguf" for d in ("f32", "f16", "bf16", "q8_0")}


@pytest.fixture(scope="module")
def k_f32(tmp_path_factory) -> Path:
    """gpt2hub's f32 GGUF of a release 256 wide (K-quants need rows of 256), with GPT-2's generated small vocabulary
    to keep it light."""
    root = tmp_path_factory.mktemp("k256")
    release = write_release(root / "k256", n_layer=N_LAYER, n_embd=256, n_head=4, n_ctx=32, vocab="generated")
    return gpt2hub.convert(release, to="gguf", dtype="f32", out=root / "k256-f32.gguf").path


@pytest.fixture(scope="module")
def k_quant(k_f32) -> Path:
    """Q4_K_M written by llama.cpp's own quantizer (as llama-quantize) from the f32 GGUF."""
    llama_cpp = pytest.importorskip("llama_cpp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    out = k_f32.with_name("k256-q4_k_m.gguf")
    assert llama_cpp.llama_model_quantize(os.fsencode(k_f32), os.fsencode(out), ctypes.byref(params)) == 0
    return out


def _spec(path: Path) -> tuple[list, dict]:
    """A GGUF as gguf-py's GGUFReader reads it: [(key, value, type, sub_type)] and {tensor: (data, ggml type)}."""
    reader = gguf.GGUFReader(path)
    kvs = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment"):
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        kvs.append((key, field.contents(), field.types[0], sub))
    return kvs, {t.name: (np.array(t.data), t.tensor_type) for t in reader.tensors}


def rewrite(spec: tuple[list, dict], out: Path, arch: str = "gpt2", fields: dict | None = None,
            tensors: dict | None = None, alignment: int = 64) -> Path:
    """The spec written by gguf-py's GGUFWriter (its own order and `alignment`), with `fields` values and `tensors`
    ({name: (data, type) or None to drop}) replaced or added; gpt2.* keys renamed for another `arch`."""
    kvs, stored = spec
    w = gguf.GGUFWriter(out, arch)
    w.add_custom_alignment(alignment)
    for key, value, vtype, sub in kvs:
        value = (fields or {}).get(key, value)
        w.add_key_value(key.replace("gpt2.", f"{arch}.", 1), value, vtype, sub_type=sub)
    for name, item in {**stored, **(tensors or {})}.items():
        if item is not None:
            w.add_tensor(name, item[0], raw_dtype=item[1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def f16_spec(ggufs):
    return _spec(ggufs["f16"])


@pytest.fixture(scope="module")
def k_spec(k_f32):
    return _spec(k_f32)


def safetensors_of(path: Path, out: Path) -> tuple[dict[str, np.ndarray], object]:
    """The safetensors convert writes of a GGUF: its tensors, and the report."""
    r = gpt2hub.convert(path, to="safetensors", out=out)
    return safetensors_numpy.load_file(r.path / "model.safetensors"), r


def gguf_name(hf: str) -> str:
    """An HF GPT-2 parameter's GGUF name, by gguf-py's own GPT-2 name map (not gpt2hub's tables)."""
    base, _, suffix = hf.rpartition(".")
    return f"{gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, N_LAYER).get_name(base)}.{suffix}"


def assert_dequantized(tensors: dict[str, np.ndarray], path: Path) -> set[str]:
    """Each converted tensor equals gguf-py's dequantization of the GGUF's (transposed back for Conv1D weights);
    returns the GGUF's tensor types."""
    stored = gguf.GGUFReader(path).tensors
    want = {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(tuple(reversed(t.shape)))
            for t in stored}  # ggml's dims reversed: numpy's shape
    assert {gguf_name(n) for n in tensors} == set(want)
    for name, got in tensors.items():
        w = want[gguf_name(name)]
        w = w.T if gguf_name(name).split(".")[-2] in TRANSPOSED and w.ndim == 2 else w
        assert got.dtype == np.float32 and np.array_equal(got, w), name
    return {t.tensor_type.name for t in stored}


# --- what is read --------------------------------------------------------------------------------

def test_a_gguf_file_is_detected_as_the_gguf_source_kind(ggufs, tiny_converted):
    assert source_kinds.detect(ggufs["q8_0"]).name == "gguf"
    assert source_kinds.detect(tiny_converted / "vocab.bpe") is None


def test_hparams_and_vocabulary_are_the_release_s(ggufs, tiny_converted):
    with GgufCheckpoint(ggufs["f32"]) as ckpt:
        assert ckpt.hparams == HParams.from_file(tiny_converted / "hparams.json")
        assert ckpt.hparams.variant() == {} and ckpt.hparams.eps == 1e-5
        release = Vocab.from_folder(tiny_converted)
        assert (ckpt.vocab.tokens, ckpt.vocab.merges, ckpt.vocab.eot_id) == \
            (release.tokens, release.merges, release.eot_id)
        assert ckpt.vocab.added == ()
        for mine, theirs in ((ckpt.vocab.encoder_json, "encoder.json"), (ckpt.vocab.vocab_bpe, "vocab.bpe")):
            assert mine.read_bytes() == (tiny_converted / theirs).read_bytes()  # OpenAI's files, byte for byte
        assert ckpt.notes == [] and ckpt.ignored == []


def test_f32_round_trip_is_bit_identical_to_the_release_s_safetensors(ggufs, tiny_converted, tmp_path):
    got, r = safetensors_of(ggufs["f32"], tmp_path / "st")
    release = tiny_converted.parent / "original-safetensors"
    want = safetensors_numpy.load_file(release / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes(), name
    for name in SIDE_FILES:
        assert (r.path / name).read_bytes() == (release / name).read_bytes(), name
    assert r.source_kind == "gguf" and r.notes == []


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_f16_and_bf16_come_back_as_the_release_rounded_then_widened_exactly(ggufs, tiny_converted, tmp_path, dtype):
    got, r = safetensors_of(ggufs[dtype], tmp_path / "st")
    want = safetensors_numpy.load_file(tiny_converted.parent / "original-safetensors" / "model.safetensors")
    rounded = {"f16": lambda a: a.astype(np.float16).astype(np.float32),
               "bf16": lambda a: gguf.quants.dequantize(gguf.quants.quantize(a, gguf.GGMLQuantizationType.BF16),
                                                        gguf.GGMLQuantizationType.BF16)}[dtype]
    for name, a in want.items():
        weight = a.ndim == 2 and name != "wpe.weight"  # norms, biases and wpe stay F32 in a GGUF
        expected = rounded(a) if weight else a
        assert got[name].tobytes() == expected.astype(np.float32).tobytes(), name
    assert any("widened to float32 exactly" in n and dtype.upper() in n for n in r.notes), r.notes


def test_q8_0_is_gguf_py_s_dequantization_and_says_so(ggufs, tmp_path):
    got, r = safetensors_of(ggufs["q8_0"], tmp_path / "st")
    assert assert_dequantized(got, ggufs["q8_0"]) == {"Q8_0", "F32"}
    assert r.notes[0] == ("dequantized from GGUF: 9 tensors Q8_0, 19 F32 — not the original weights, only their "
                          "quantized approximation")


def test_llama_cpp_s_q4_k_m_is_gguf_py_s_dequantization_and_says_so(k_quant, tmp_path):
    got, r = safetensors_of(k_quant, tmp_path / "st")
    types = assert_dequantized(got, k_quant)
    assert "Q4_K" in types
    note = r.notes[0]
    assert note.startswith("dequantized from GGUF: ") and "Q4_K" in note and "quantized approximation" in note


def test_a_gguf_py_rewrite_with_a_copied_output_weight_reads_as_tied(f16_spec, ggufs, tmp_path):
    """LC-old's layout (output.weight = token_embd), written by GGUFWriter at another alignment: tied, and said."""
    wte = f16_spec[1]["token_embd.weight"]
    path = rewrite(f16_spec, tmp_path / "copied.gguf", tensors={"output.weight": wte})
    got, r = safetensors_of(path, tmp_path / "st")
    want, _ = safetensors_of(ggufs["f16"], tmp_path / "st-own")
    assert got.keys() == want.keys() and all(np.array_equal(got[n], want[n]) for n in want)
    assert any("output.weight is token_embd.weight's copy" in n for n in r.notes)
    with GgufCheckpoint(path) as ckpt:
        assert ckpt.hparams.tied and ckpt.ignored == ["output.weight"]


def test_an_output_weight_of_its_own_reads_as_an_untied_head(f16_spec, tmp_path):
    wte, kind = f16_spec[1]["token_embd.weight"]
    head = (wte * np.float16(0.5)).astype(np.float16)
    path = rewrite(f16_spec, tmp_path / "untied.gguf", tensors={"output.weight": (head, kind)})
    with GgufCheckpoint(path) as ckpt:
        assert not ckpt.hparams.tied and ckpt.ignored == []
        assert np.array_equal(read(ckpt.data_paths, ckpt.entries["model/lm_head"]), head.astype(np.float32))
    got, r = safetensors_of(path, tmp_path / "st")
    assert np.array_equal(got["lm_head.weight"], head.astype(np.float32))
    assert np.array_equal(got["wte.weight"], wte.astype(np.float32))
    assert json.loads((r.path / "config.json").read_text())["tie_word_embeddings"] is False


def test_one_part_of_a_split_gguf_is_refused(k_spec, tmp_path):
    kvs, stored = k_spec
    path = rewrite((kvs + [("split.count", 3, gguf.GGUFValueType.UINT16, None)], stored), tmp_path / "part.gguf")
    with pytest.raises(Gpt2hubError) as e:
        GgufCheckpoint(path)
    assert "one part of a GGUF split in 3" in one_line(e)


def test_llama_cpp_s_padding_tokens_are_not_tokens_and_extra_rows_are_kept(k_spec, tmp_path):
    kvs, stored = k_spec
    fields = {k: v for k, v, _, _ in kvs}
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    n = len(tokens)
    wte, kind = stored["token_embd.weight"]
    extra = np.ones((3, wte.shape[1]), wte.dtype)
    padded = np.concatenate([wte, extra])
    path = rewrite(k_spec, tmp_path / "padded.gguf", tensors={"token_embd.weight": (padded, kind)},
                   fields={"tokenizer.ggml.tokens": tokens + [f"[PAD{n}]", f"[PAD{n + 1}]"],
                           "tokenizer.ggml.token_type": types + [int(gguf.TokenType.UNUSED)] * 2})
    with GgufCheckpoint(path) as ckpt:
        assert ckpt.hparams.n_vocab == n + 3 and ckpt.vocab.tokens == tokens
        assert any("2 padding entries" in note for note in ckpt.notes)
        assert any(f"{n + 3} rows for {n} tokens" in note for note in ckpt.notes)
        assert np.array_equal(read(ckpt.data_paths, ckpt.entries["model/wte"])[n:], extra)


def test_tokens_after_endoftext_are_added_tokens(k_spec, tmp_path):
    kvs, stored = k_spec
    fields = {k: v for k, v, _, _ in kvs}
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    n = len(tokens)
    wte, kind = stored["token_embd.weight"]
    grown = np.concatenate([wte, wte[:2]])
    path = rewrite(k_spec, tmp_path / "added.gguf", tensors={"token_embd.weight": (grown, kind)},
                   fields={"tokenizer.ggml.tokens": tokens + ["<|im_start|>", "hello"],
                           "tokenizer.ggml.token_type": types + [int(gguf.TokenType.CONTROL),
                                                                 int(gguf.TokenType.USER_DEFINED)]})
    with GgufCheckpoint(path) as ckpt:
        assert ckpt.vocab.tokens == tokens and ckpt.vocab.n_tokens == n + 2
        assert ckpt.vocab.added == ((n, "<|im_start|>", True), (n + 1, "hello", False))


# --- what is refused, in one line -----------------------------------------------------------------

def test_another_architecture_is_refused_naming_it(k_spec, tmp_path):
    path = rewrite(k_spec, tmp_path / "llama.gguf", arch="llama")
    one_line_error(invoke("convert", str(path), "--to", "safetensors"), "general.architecture is 'llama'")
    assert not list(tmp_path.glob("llama*safetensors*"))


@pytest.mark.parametrize("keep", [0.6, 0.002])
def test_a_truncated_file_is_refused(ggufs, tmp_path, keep):
    path = tmp_path / "cut.gguf"
    data = ggufs["f32"].read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(Gpt2hubError) as e:
        gpt2hub.convert(path, to="safetensors", out=tmp_path / "st")
    assert "runs past the end of the file" in one_line(e)
    assert not (tmp_path / "st").exists()


def _patched(src: Path, out: Path, offset: int, value: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset:offset + 8] = value.to_bytes(8, "little")
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("what, offset, said", [
    ("tensor count", 8, "tensors"),
    ("first key's length", 24, "a string runs past the end of the file"),
    ("token array's count", None, "entries (at most"),
])
def test_crafted_counts_and_lengths_are_refused_before_anything_is_read(ggufs, tmp_path, what, offset, said):
    src = ggufs["f32"]
    if offset is None:  # the array count after the key, its type (ARRAY) and the element type (STRING)
        key = b"tokenizer.ggml.tokens"
        offset = src.read_bytes().index(key) + len(key) + 8
    path = _patched(src, tmp_path / "crafted.gguf", offset, 1 << 62)
    with pytest.raises(Gpt2hubError) as e:
        GgufCheckpoint(path)
    assert said in one_line(e), what


def test_a_tensor_of_the_wrong_shape_is_refused(k_spec, tmp_path):
    up, kind = k_spec[1]["blk.0.ffn_up.weight"]
    path = rewrite(k_spec, tmp_path / "shape.gguf", tensors={"blk.0.ffn_up.weight": (up.reshape(up.shape[::-1]), kind)})
    with pytest.raises(Gpt2hubError) as e:
        GgufCheckpoint(path)
    assert "blk.0.ffn_up.weight has dims [1024, 256]; the gpt2.* metadata implies [256, 1024]" in one_line(e)


def test_a_tensor_beyond_the_block_count_or_missing_is_refused(k_spec, tmp_path):
    norm = k_spec[1]["blk.1.attn_norm.weight"]
    extra = rewrite(k_spec, tmp_path / "extra.gguf", tensors={"blk.2.attn_norm.weight": norm})
    missing = rewrite(k_spec, tmp_path / "missing.gguf", tensors={"blk.1.ffn_down.bias": None})
    with pytest.raises(Gpt2hubError) as e:
        GgufCheckpoint(extra)
    assert "tensor blk.2.attn_norm.weight is not part of a GPT-2 of gpt2.block_count 2" in one_line(e)
    with pytest.raises(Gpt2hubError) as e:
        GgufCheckpoint(missing)
    assert "no tensor blk.1.ffn_down.bias" in one_line(e)


def test_a_tensor_type_that_holds_no_weights_is_refused(k_spec, tmp_path):
    bias, _ = k_spec[1]["output_norm.bias"]
    path = rewrite(k_spec, tmp_path / "int.gguf", tensors={"output_norm.bias": (bias.astype(np.int32), None)})
    with pytest.raises(Gpt2hubError) as e:
        GgufCheckpoint(path)
    assert "output_norm.bias is I32" in one_line(e)


def test_a_vocabulary_that_is_not_gpt2_s_bpe_is_refused(k_spec, tmp_path):
    kvs, _ = k_spec
    tokens = next(v for k, v, _, _ in kvs if k == "tokenizer.ggml.tokens")
    spm = rewrite(k_spec, tmp_path / "spm.gguf", fields={"tokenizer.ggml.model": "llama"})
    twice = rewrite(k_spec, tmp_path / "twice.gguf", fields={"tokenizer.ggml.tokens": [tokens[1]] + tokens[1:]})
    with pytest.raises(Gpt2hubError) as e:
        GgufCheckpoint(spm)
    assert "tokenizer.ggml.model is 'llama'" in one_line(e)
    with pytest.raises(Gpt2hubError) as e:
        GgufCheckpoint(twice)
    assert "twice (ids 0 and 1)" in one_line(e)


def test_variant_hparams_come_from_the_gpt2_keys(k_spec, tmp_path):
    """feed_forward_length other than 4 * n_embd is n_inner; a FLOAT32 epsilon reads as the decimal written."""
    kvs, stored = k_spec
    narrow = {}
    for i in range(N_LAYER):
        for name, cut in ((f"blk.{i}.ffn_up.weight", np.s_[:512]), (f"blk.{i}.ffn_up.bias", np.s_[:512]),
                          (f"blk.{i}.ffn_down.weight", np.s_[:, :512])):
            a, kind = stored[name]
            narrow[name] = (np.ascontiguousarray(a[cut]), kind)
    path = rewrite(k_spec, tmp_path / "narrow.gguf", tensors=narrow,
                   fields={"gpt2.feed_forward_length": 512, "gpt2.attention.layer_norm_epsilon": 1e-6})
    with GgufCheckpoint(path) as ckpt:
        assert ckpt.hparams.variant() == {"n_inner": 512, "eps": 1e-6}
        c_fc = read(ckpt.data_paths, ckpt.entries["model/h1/mlp/c_fc/w"])
        assert np.array_equal(c_fc, narrow["blk.1.ffn_up.weight"][0].T)  # OpenAI's (in, out)


def test_an_activation_recorded_as_approximated_is_the_model_s(k_spec, tmp_path):
    """A GGUF gpt2hub wrote from an exact-GELU model (llama.cpp computes tanh) reads back as that model."""
    from gpt2hub.converters.gguf import APPROXIMATED

    kvs, stored = k_spec
    said = [(APPROXIMATED, ["activation gelu_exact"], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)]
    path = rewrite((kvs + said, stored), tmp_path / "exact.gguf")
    with GgufCheckpoint(path) as ckpt:
        assert ckpt.hparams.activation == "gelu_exact"
        assert any("activation gelu_exact" in n for n in ckpt.notes)
