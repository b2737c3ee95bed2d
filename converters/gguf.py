"""GGUF for llama.cpp: the `gpt2` architecture, named and laid out as convert_hf_to_gguf writes it.

Metadata and tensor infos go through gguf-py's GGUFWriter (add_tensor_info), then each tensor's
data is written here one row-chunk at a time after `write_ti_data_to_file`, instead of
`add_tensor`, which holds every array until the file is written. Norms, biases and position_embd
stay F32 whatever the dtype, as llama.cpp's converter and llama-quantize keep them.

Two kinds of quantized dtypes: the block types gguf-py quantizes in numpy (q8_0, q4_0, q4_1, q5_0,
q5_1; bit-identical to ggml's reference quantizer) are streamed like the float types, every 2-D
weight in the one type. llama.cpp's K-quant mixes (q4_k_m, ...) are made by llama.cpp itself
(`llama_model_quantize`, as llama-quantize) from an F32 GGUF written beside the output and deleted
after, so the per-tensor policy is exactly llama.cpp's; which tensor got which type is reported.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

from gpt2hub.errors import ConversionError

from . import CASTS, Converter, Planned, Progress, Rule, Source, pipelined, plan, row_chunks

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
UNTIED_OUTPUT = Rule("output.weight")  # --untie: a copy of wte, for llama.cpp before March 2025

# --dtype -> (ggml tensor type of the 2-D weights, general.file_type), as gguf-py names them.
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
# --dtype -> llama.cpp's mix, named by llama_cpp's LLAMA_FTYPE_MOSTLY_<upper-case dtype> constant.
LLAMA_MIXES = ("q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k")
QK_K = 256  # K-quant super-block: a row length not divisible by it gets another type from llama.cpp
ARCH = "gpt2"
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # gguf TokenType
QUANTIZATION_VERSION = 2  # GGML_QUANT_VERSION


def filename(release: str, dtype: str) -> str:
    """The one place the GGUF file name is decided: `<release>-<dtype>.gguf`."""
    return f"{release}-{dtype}.gguf"


def _ggml_type(rule: Rule, dtype: str, row: int) -> str:
    """F32 for norms and biases; F16 for a row the type's blocks don't divide (as convert_hf_to_gguf)."""
    import gguf

    if rule.keep_f32:
        return "F32"
    name = DTYPES[dtype][0]
    return name if row % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]][0] == 0 else "F16"


def _encode(block, ggml_type: str):
    """A float32 block of whole rows in a ggml type's bytes (rows are independent in every type)."""
    import gguf
    import numpy as np

    if ggml_type in ("F32", "F16"):
        return CASTS[ggml_type.lower()][1](block)
    return gguf.quants.quantize(np.ascontiguousarray(block), gguf.GGMLQuantizationType[ggml_type])


def _add_metadata(w, source: Source, dtype: str) -> None:
    import gguf

    h, v = source.hparams, source.vocab
    w.add_name(source.release)
    w.add_type("model")
    w.add_block_count(h.n_layer)
    w.add_context_length(h.n_ctx)
    w.add_embedding_length(h.n_embd)
    w.add_feed_forward_length(4 * h.n_embd)
    w.add_head_count(h.n_head)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type(int(gguf.LlamaFileType[DTYPES[dtype][1]]))
    w.add_quantization_version(QUANTIZATION_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(v.tokens)
    w.add_token_types([TOKEN_CONTROL if i == v.eot_id else TOKEN_NORMAL for i in range(len(v.tokens))])
    w.add_token_merges(v.merges)
    w.add_bos_token_id(v.eot_id)
    w.add_eos_token_id(v.eot_id)
    w.add_string("general.source.release", source.release)
    w.add_string("general.converter", f"gpt2hub {source.version}")


def write(source: Source, out: Path, dtype: str, progress: Progress) -> list[str] | None:
    if dtype in LLAMA_MIXES:
        return _write_llama_mix(source, out, dtype, progress)
    _write_streamed(source, out, dtype, progress)
    return None


def _write_streamed(source: Source, out: Path, dtype: str, progress: Progress) -> None:
    import gguf
    import numpy as np

    if len(source.vocab.tokens) != source.hparams.n_vocab:
        raise ConversionError(f"{source.vocab.encoder_json}: {len(source.vocab.tokens)} tokens, but wte has "
                              f"{source.hparams.n_vocab} rows (llama.cpp needs one token per row)")
    planned = plan(source, GLOBAL_RULES, BLOCK_RULES)
    if source.untie:
        wte = next(p for p in planned if p.rule is GLOBAL_RULES["wte"])
        planned.append(Planned(wte.entry, UNTIED_OUTPUT.name, UNTIED_OUTPUT, wte.shape))
    w = gguf.GGUFWriter(None, ARCH)
    _add_metadata(w, source, dtype)
    for p in planned:
        qtype = gguf.GGMLQuantizationType[_ggml_type(p.rule, dtype, p.shape[-1])]
        rows = p.shape if len(p.shape) > 1 else (1, *p.shape)
        nbytes = int(np.prod(gguf.quants.quant_shape_to_byte_shape(rows, qtype)))
        w.add_tensor_info(p.name, p.shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    w.write_header_to_file(out)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    f = w.fout[0]
    try:
        for p in planned:
            w.write_padding(f, f.tell())
            ggml_type = _ggml_type(p.rule, dtype, p.shape[-1])
            for data, n in pipelined(lambda b: (_encode(b, ggml_type), b.nbytes), row_chunks(source, p)):
                f.write(memoryview(data).cast("B"))
                progress(n)
        w.write_padding(f, f.tell())
    finally:
        w.close()


def _write_llama_mix(source: Source, out: Path, dtype: str, progress: Progress) -> list[str]:
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
    import gguf

    kinds: dict[str, Counter] = {}
    rows: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        if len(t.shape) < 2:
            continue  # norms and biases: always F32
        kind = re.sub(r"^blk\.\d+\.", "blk.*.", t.name)
        kinds.setdefault(kind, Counter())[t.tensor_type.name] += 1
        rows[kind] = int(t.shape[0])
    lines = []
    for kind, types in kinds.items():
        line = f"{kind}: " + ", ".join(f"{n} {name}" for name, n in types.most_common())
        if rows[kind] % QK_K and set(types) != {"F32"}:  # F32 is policy (position_embd), not a fallback
            line += f" (rows of {rows[kind]} are not a multiple of {QK_K}: no K-quant possible, llama.cpp fell back)"
        lines.append(line)
    return lines


CONVERTER = Converter(name="gguf", dtypes=(*DTYPES, *LLAMA_MIXES), default_dtype="f32", writes_folder=False, write=write,
                      requires="gguf", extra="gguf")
