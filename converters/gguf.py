"""GGUF for llama.cpp: the `gpt2` architecture, named and laid out as convert_hf_to_gguf writes it.

Metadata, tensor infos and data go through gguf-py's GGUFWriter (add_tensor, write_tensors_to_file).
Each tensor is handed to it as a `_Streamed` stand-in whose tofile() writes the tensor one
row-chunk at a time, instead of a whole array: GGUFWriter keeps every added array until the file is
written. Norms, biases and position_embd stay F32 whatever the dtype, as llama.cpp's converter and
llama-quantize keep them.

Two kinds of quantized dtypes: the block types (q8_0, q4_0, q4_1, q5_0, q5_1) are streamed like the
float types, every 2-D weight in the one type, quantized by ggml's own C code where llama-cpp-python is
installed and else by gguf-py's numpy quantizer (bit-identical to it). llama.cpp's K-quant mixes (q4_k_m, ...) are made by llama.cpp itself
(`llama_model_quantize`, as llama-quantize) from an F32 GGUF written beside the output and deleted
after, so the per-tensor policy is exactly llama.cpp's; which tensor got which type is reported.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2hub import lazy
from gpt2hub.casts import CASTS
from gpt2hub.errors import ConversionError
from gpt2hub.ggufheader import Header, read_header
from gpt2hub.layout import GELU_TANH, SCOPE, HParams
from gpt2hub.stored import Expected, Stored, StoredOutput
from gpt2hub.threads import pipelined

from . import ConvertInput, Format, Planned, Progress, Rule, TokenizerReader, Weights, expand, plan, row_chunks
from . import hf

if TYPE_CHECKING:
    from gpt2hub.vocabulary import Vocab

np = lazy.module("numpy")  # loaded when a tensor is touched, not when the registry is read

GLOBAL_RULES: dict[str, Rule] = {
    "wte": Rule("token_embd.weight"),
    "wpe": Rule("position_embd.weight", keep_f32=True),
    "ln_f/g": Rule("output_norm.weight", keep_f32=True),
    "ln_f/b": Rule("output_norm.bias", keep_f32=True),
}
BLOCK_RULES: dict[str, Rule] = {
    "ln_1/g": Rule("blk.{i}.attn_norm.weight", keep_f32=True),
    "ln_1/b": Rule("blk.{i}.attn_norm.bias", keep_f32=True),
    "attn/c_attn/w": Rule("blk.{i}.attn_qkv.weight", transpose=True),
    "attn/c_attn/b": Rule("blk.{i}.attn_qkv.bias", keep_f32=True),
    "attn/c_proj/w": Rule("blk.{i}.attn_output.weight", transpose=True),
    "attn/c_proj/b": Rule("blk.{i}.attn_output.bias", keep_f32=True),
    "ln_2/g": Rule("blk.{i}.ffn_norm.weight", keep_f32=True),
    "ln_2/b": Rule("blk.{i}.ffn_norm.bias", keep_f32=True),
    "mlp/c_fc/w": Rule("blk.{i}.ffn_up.weight", transpose=True),
    "mlp/c_fc/b": Rule("blk.{i}.ffn_up.bias", keep_f32=True),
    "mlp/c_proj/w": Rule("blk.{i}.ffn_down.weight", transpose=True),
    "mlp/c_proj/b": Rule("blk.{i}.ffn_down.bias", keep_f32=True),
}
UNTIED_OUTPUT = Rule("output.weight")  # an untied head (model/lm_head); with --untie, a copy of wte for llama.cpp before March 2025
APPROXIMATED = "gpt2hub.approximated"  # the fields llama.cpp computes at GPT-2's value (--allow-approximate-activation)

# --dtype -> (ggml tensor type of the 2-D weights, general.file_type), as gguf-py's enums name them.
DTYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}
# llama.cpp's mixes by --dtype: general.file_type gguf.LlamaFileType.MOSTLY_<DTYPE>, made by llama_model_quantize
# with llama_cpp.LLAMA_FTYPE_MOSTLY_<DTYPE>.
LLAMA_MIXES = ("q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k")
QK_K = 256  # K-quant super-block: a row length not divisible by it gets another type from llama.cpp
ARCH = "gpt2"
SUFFIX = ".gguf"


def _ggml_type(rule: Rule, dtype: str, row: int) -> str:
    """F32 for norms and biases; F16 for a row the type's blocks don't divide (as convert_hf_to_gguf)."""
    import gguf

    if rule.keep_f32:
        return "F32"
    name = DTYPES[dtype][0]
    return name if row % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]][0] == 0 else "F16"


def _encode(block, ggml_type: str):
    """A float32 block of whole rows in a ggml type's bytes (rows are independent in every type): ggml's own C
    quantizer where llama-cpp-python is installed (5-10x faster), else gguf-py's numpy one (the same bytes)."""
    import gguf

    if ggml_type in ("F32", "F16"):
        return CASTS[ggml_type.lower()][1](block)
    qtype = gguf.GGMLQuantizationType[ggml_type]
    if _ggml_quantize_chunk() is not None:
        return ggml_quantize(block, qtype)
    return gguf.quants.quantize(np.ascontiguousarray(block), qtype)


@functools.lru_cache(maxsize=None)
def _ggml_quantize_chunk():
    """`ggml_quantize_chunk` from llama-cpp-python's libggml-base, or None where it is not installed."""
    import ctypes

    try:
        import llama_cpp
    except ImportError:
        return None
    try:  # a build or platform whose library is elsewhere, or will not load: gguf-py's quantizer instead
        quantize = ctypes.CDLL(_ggml_base_library(llama_cpp)).ggml_quantize_chunk
    except (OSError, AttributeError):
        return None
    quantize.restype = ctypes.c_size_t
    quantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                         ctypes.c_int64, ctypes.c_void_p]
    return quantize


def _ggml_base_library(llama_cpp) -> str:
    """Where llama-cpp-python's wheel puts ggml's base library."""
    return os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so")


def ggml_quantize(rows, qtype) -> "np.ndarray":
    """ggml's own quantizer (no imatrix), as llama-quantize runs it: float32 rows (n, k) -> the type's block
    bytes (n, bytes per row)."""
    import gguf

    quantize = _ggml_quantize_chunk()
    if quantize is None:
        raise ConversionError("ggml's quantizer comes with llama-cpp-python: pip install 'gpt2hub[llama]'")
    src = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, rows.shape[-1])
    out = np.empty(gguf.quants.quant_shape_to_byte_shape(src.shape, gguf.GGMLQuantizationType(qtype)), np.uint8)
    n = quantize(int(qtype), src.ctypes.data, out.ctypes.data, 0, src.shape[0], src.shape[1], None)
    if n != out.nbytes:
        raise ConversionError(f"ggml_quantize_chunk wrote {n} bytes for {out.nbytes} expected")
    return out


def _add_metadata(w, source: ConvertInput, dtype: str) -> None:
    import gguf

    h, v = source.hparams, source.vocab
    w.add_name(source.release)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_block_count(h.n_layer)
    w.add_context_length(h.n_ctx)
    w.add_embedding_length(h.n_embd)
    w.add_feed_forward_length(h.n_ff)
    w.add_head_count(h.n_head)
    w.add_layer_norm_eps(h.eps)
    w.add_file_type(int(gguf.LlamaFileType[DTYPES[dtype][1]]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    tokens, types = token_list(v, h.n_vocab)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(v.merges)
    w.add_bos_token_id(v.eot_id)
    w.add_eos_token_id(v.eot_id)
    w.add_string("general.source.release", source.release)
    w.add_string("general.converter", f"gpt2hub {source.version}")
    if source.approximated:
        w.add_array(APPROXIMATED, [f"{k} {getattr(h, k)}" for k in source.approximated])


def token_list(v: Vocab, n_vocab: int) -> tuple[list[str], list[int]]:
    """tokenizer.ggml.tokens and token_type: the BPE tokens (<|endoftext|> CONTROL), the added ones (CONTROL if
    special, else USER_DEFINED), then "[PAD{id}]" (UNUSED) up to n_vocab, as llama.cpp's convert_hf_to_gguf pads."""
    import gguf

    T = gguf.TokenType
    tokens = v.tokens + [content for _, content, _ in v.added]
    if len(tokens) > n_vocab:
        raise ConversionError(f"{v.encoder_json}: {len(tokens)} tokens, but wte has {n_vocab} rows "
                              "(llama.cpp needs a row per token)")
    types = [int(T.CONTROL if i == v.eot_id else T.NORMAL) for i in range(len(v.tokens))]
    types += [int(T.CONTROL if special else T.USER_DEFINED) for _, _, special in v.added]
    pads = range(len(tokens), n_vocab)
    return tokens + [f"[PAD{i}]" for i in pads], types + [int(T.UNUSED)] * len(pads)


class _Streamed:
    """A tensor as GGUFWriter.add_tensor takes it, whose tofile() encodes and writes it a row-chunk at a time.

    gguf-py's own lazy tensors (gguf.lazy.LazyNumpyTensor) build each whole tensor in tofile(); this writes
    32 MB blocks, cast or quantized on threads while the previous block is written.
    """

    def __init__(self, source: ConvertInput, p: Planned, ggml_type: str, nbytes: int, progress: Progress):
        self.source, self.planned, self.ggml_type, self.nbytes, self.progress = source, p, ggml_type, nbytes, progress
        self.shape = p.shape
        self.dtype = np.dtype(np.float32)  # what the writer reads for the info; raw_dtype gives the real type

    def tofile(self, f) -> None:
        encode = self.ggml_type
        for data, n in pipelined(lambda b: (_encode(b, encode), b.nbytes), row_chunks(self.source, self.planned)):
            f.write(memoryview(data).cast("B"))
            self.progress(n)


def write(source: ConvertInput, out: Path, dtype: str, progress: Progress) -> list[str] | None:
    if dtype in LLAMA_MIXES:
        return _write_llama_mix(source, out, dtype, progress)
    _write_streamed(source, out, dtype, progress)
    return None


def _write_streamed(source: ConvertInput, out: Path, dtype: str, progress: Progress) -> None:
    import gguf

    token_list(source.vocab, source.hparams.n_vocab)  # a row for every token, before anything is written
    planned = plan(source, GLOBAL_RULES, BLOCK_RULES, UNTIED_OUTPUT)
    if source.untie and source.hparams.tied:
        wte = next(p for p in planned if p.rule is GLOBAL_RULES["wte"])
        planned.append(Planned(wte.entry, UNTIED_OUTPUT.name, UNTIED_OUTPUT, wte.shape))
    w = gguf.GGUFWriter(None, ARCH)
    _add_metadata(w, source, dtype)
    for p in planned:
        ggml_type = _ggml_type(p.rule, dtype, p.shape[-1])
        qtype = gguf.GGMLQuantizationType[ggml_type]
        rows = p.shape if len(p.shape) > 1 else (1, *p.shape)
        nbytes = int(np.prod(gguf.quants.quant_shape_to_byte_shape(rows, qtype)))
        w.add_tensor(p.name, _Streamed(source, p, ggml_type, nbytes, progress), raw_shape=p.shape, raw_dtype=qtype)
    try:
        w.write_header_to_file(out)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def _write_llama_mix(source: ConvertInput, out: Path, dtype: str, progress: Progress) -> list[str]:
    """llama.cpp quantizes an F32 GGUF of the source to its `dtype` mix; returns what each tensor became."""
    import ctypes

    try:
        import llama_cpp
    except ImportError:
        raise ConversionError(f"--dtype {dtype} is made by llama.cpp's quantizer: pip install 'gpt2hub[llama]'") from None
    f32 = out.with_name(out.name + ".f32")
    try:
        _write_streamed(source, f32, "f32", progress)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{dtype.upper()}")
        params.nthread = os.cpu_count() or 1
        logger = logging.getLogger("llama-cpp-python")  # llama-cpp-python prints llama.cpp's log at its level
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            failed = llama_cpp.llama_model_quantize(os.fsencode(f32), os.fsencode(out), ctypes.byref(params))
        finally:
            logger.setLevel(level)
        if failed:
            raise ConversionError(f"{out}: llama.cpp's quantizer failed to write {dtype}")
    finally:
        f32.unlink(missing_ok=True)
    return tensor_types(out)


def tensor_types(path: Path) -> list[str]:
    """One line per kind of 2-D tensor (layers folded to `blk.*`): the ggml types it holds, and why not a K-quant."""
    kinds: dict[str, Counter] = {}
    rows: dict[str, int] = {}
    for t in read_header(path).tensors:
        if len(t.dims) < 2:
            continue  # norms and biases: always F32
        kind = re.sub(r"^blk\.\d+\.", "blk.*.", t.name)
        kinds.setdefault(kind, Counter())[t.type.name] += 1
        rows[kind] = t.dims[0]
    lines = []
    for kind, types in kinds.items():
        line = f"{kind}: " + ", ".join(f"{n} {name}" for name, n in types.most_common())
        if rows[kind] % QK_K and set(types) != {"F32"}:  # F32 is policy (position_embd), not a fallback
            line += f" (rows of {rows[kind]} are not a multiple of {QK_K}: no K-quant possible, llama.cpp fell back)"
        lines.append(line)
    return lines


# --- reading a file back ----------------------------------------------------------------------

def is_output(path: Path) -> bool:
    return path.suffix == SUFFIX and path.is_file()


def read_config(header: Header, source: str) -> dict:
    """GPTConfig's fields from a GGUF file's gpt2.* metadata (n_vocab from token_embd's shape, an untied head from
    output.weight); the activation and attention scaling are those llama.cpp's gpt2 graph computes."""
    import gguf

    keys = gguf.Keys
    arch = header.fields.get(keys.General.ARCHITECTURE)
    if arch != ARCH:
        raise ConversionError(f"{source}: general.architecture is {arch!r}, not {ARCH!r}")
    fields = {"n_ctx": keys.LLM.CONTEXT_LENGTH, "n_embd": keys.LLM.EMBEDDING_LENGTH, "n_head": keys.Attention.HEAD_COUNT,
              "n_layer": keys.LLM.BLOCK_COUNT, "eps": keys.Attention.LAYERNORM_EPS,
              "n_inner": keys.LLM.FEED_FORWARD_LENGTH}
    values = {}
    for field, key in fields.items():
        v = header.fields.get(key.format(arch=ARCH))
        if not isinstance(v, (int, float)):
            raise ConversionError(f"{source}: no {key.format(arch=ARCH)} in the metadata")
        values[field] = float(v) if field == "eps" else int(v)
    embd = next((t for t in header.tensors if t.name == GLOBAL_RULES["wte"].name), None)
    if embd is None or len(embd.dims) != 2:
        raise ConversionError(f"{source}: no 2-D {GLOBAL_RULES['wte'].name} tensor")
    values["n_vocab"] = embd.dims[1]  # GGUF dims are (ne0=n_embd, ne1=n_vocab)
    values["tied"] = not any(t.name == UNTIED_OUTPUT.name for t in header.tensors)
    values.update(activation=GELU_TANH, attn_scale_by_layer=False)
    return values


def approximated(header: Header) -> list[str]:
    """The fields the file records it computes at GPT-2's value (gpt2hub.approximated): ["activation"]."""
    said = header.fields.get(APPROXIMATED)
    return [str(x).split()[0] for x in said] if isinstance(said, list) else []


def read_weights(path: Path) -> Weights:
    """The file's config and tensors (dequantized to float32 unless F32/F16), in gpt2hub's names and layout."""
    import gguf

    header = read_header(path)
    config = read_config(header, str(path))
    by_name = {t.name: t for t in header.tensors}
    tied = config["tied"]
    names = hf.reference_names(config["n_layer"], tied)
    kept = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}
    data = np.memmap(path, np.uint8, mode="r")
    tensors = {}
    for tf, rule in expand(GLOBAL_RULES, BLOCK_RULES, config["n_layer"], None if tied else UNTIED_OUTPUT).items():
        t = by_name.get(rule.name)
        if t is None:
            raise ConversionError(f"{path}: no tensor {rule.name}")
        raw = data[t.offset:t.offset + t.nbytes]
        shape = tuple(reversed(t.dims))
        if t.type in kept:
            a = raw.view(kept[t.type]).reshape(shape)
        else:
            a = gguf.quants.dequantize(raw.reshape(math.prod(shape[:-1]), -1), t.type).reshape(shape)
        tensors[names[tf]] = a.T if rule.transpose else a  # GGUF stores Conv1D weights (out, in)
    return Weights(config, tensors)


def read_dtype(path: Path, header: Header | None = None) -> str:
    """The file's dtype from general.file_type, else the commonest type among its 2-D tensors."""
    import gguf

    header = header or read_header(path)
    file_type = header.fields.get(gguf.Keys.General.FILE_TYPE)
    by_file_type = {int(gguf.LlamaFileType[file_type]): dtype for dtype, (_, file_type) in DTYPES.items()}
    by_file_type.update({int(gguf.LlamaFileType[f"MOSTLY_{mix.upper()}"]): mix for mix in LLAMA_MIXES})
    if isinstance(file_type, int) and file_type in by_file_type:
        return by_file_type[file_type]
    types = [t.type.name.lower() for t in header.tensors if len(t.dims) == 2]
    return max(set(types), key=types.count) if types else "unknown"


def _llama_ids(path: Path, text: str) -> list[int]:
    """llama.cpp's tokenization of text with the file's own vocabulary."""
    from gpt2hub.llamacpp import llama_tokenize

    return llama_tokenize(path, text)


def read_stored(path: Path, hparams: HParams, vocab: Vocab) -> StoredOutput:
    """Every tensor as stored (ggml type, byte range, numpy-order shape) and what it must be: F32 for the rules that
    keep it, the file's type for the rest, Conv1D weights transposed; the vocabulary as encoder.json/vocab.bpe."""
    import gguf

    header = read_header(path)
    dtype = read_dtype(path, header)
    weight_type = DTYPES[dtype][0] if dtype in DTYPES else None  # a llama-quantize mix: types vary per tensor
    head = None if hparams.tied else UNTIED_OUTPUT
    expected = {r.name: Expected(tf, "F32" if r.keep_f32 else weight_type, r.transpose)
                for tf, r in expand(GLOBAL_RULES, BLOCK_RULES, hparams.n_layer, head).items()}
    tensors = {t.name: Stored(t.name, t.type.name, tuple(reversed(t.dims)), path, t.offset, t.nbytes)  # dims: ne0 first
               for t in header.tensors}
    if UNTIED_OUTPUT.name in tensors and hparams.tied:  # --untie: a copy of wte
        expected[UNTIED_OUTPUT.name] = Expected(SCOPE + "wte", weight_type, False)
    problems = []
    keys = gguf.Keys.Tokenizer
    tokens, types = token_list(vocab, hparams.n_vocab)
    for key, want in ((keys.LIST, tokens), (keys.TOKEN_TYPE, types), (keys.MERGES, vocab.merges)):
        got = header.fields.get(key)
        if got != want:
            where = "missing" if not isinstance(got, list) else f"{len(got)} entries" if len(got) != len(want) else \
                f"entry {next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)} differs"
            problems.append(f"{key}: {where}; the release's vocabulary has {len(want)}")
    for key in (keys.BOS_ID, keys.EOS_ID):
        got = header.fields.get(key)
        if got != vocab.eot_id:
            problems.append(f"{key} is {got}, <|endoftext|> is {vocab.eot_id}")
    return StoredOutput(dtype, read_config(header, str(path)), tensors, expected, problems, approximated(header))


FORMAT = Format(name="gguf", rank=30, dtypes=(*DTYPES, *LLAMA_MIXES), default_dtype="f32", write=write, consumer="llama.cpp",
                is_output=is_output, read_weights=read_weights, read_dtype=read_dtype, read_stored=read_stored, looks_like=f"a {SUFFIX} file",
                file_suffix=SUFFIX, tokenizer=TokenizerReader("llama.cpp", "llama_cpp", lambda path: path, _llama_ids),
                requires="gguf", extra="gguf", untie=True, demo_dtypes=("f16", "q8_0"), tags=("gguf",),
                cannot_hold={"activation": "llama.cpp's gpt2 graph computes GPT-2's tanh GELU",
                             "attn_scale_by_layer": "llama.cpp's gpt2 graph has no per-layer attention scaling"},
                approximates=frozenset({"activation"}))
