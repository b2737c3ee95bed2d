"""GGUF for llama.cpp: the `gpt2` architecture, named and laid out as convert_hf_to_gguf writes it.

Metadata and tensor infos go through gguf-py's GGUFWriter (add_tensor_info), then each tensor's
data is written here one row-chunk at a time after `write_ti_data_to_file`, instead of
`add_tensor`, which holds every array until the file is written. Norms, biases and position_embd
stay F32 whatever the dtype, as llama.cpp's converter and llama-quantize keep them.
"""

from __future__ import annotations

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
}
ARCH = "gpt2"
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # gguf TokenType
QUANTIZATION_VERSION = 2  # GGML_QUANT_VERSION


def filename(release: str, dtype: str) -> str:
    """The one place the GGUF file name is decided: `<release>-<dtype>.gguf`."""
    return f"{release}-{dtype}.gguf"


def _ggml_type(rule: Rule, dtype: str) -> str:
    return "F32" if rule.keep_f32 else DTYPES[dtype][0]


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


def write(source: Source, out: Path, dtype: str, progress: Progress) -> None:
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
        qtype = gguf.GGMLQuantizationType[_ggml_type(p.rule, dtype)]
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
            ggml_type = _ggml_type(p.rule, dtype)
            for data, n in pipelined(lambda b: (_encode(b, ggml_type), b.nbytes), row_chunks(source, p)):
                f.write(memoryview(data).cast("B"))
                progress(n)
        w.write_padding(f, f.tell())
    finally:
        w.close()


CONVERTER = Converter(name="gguf", dtypes=tuple(DTYPES), default_dtype="f32", writes_folder=False, write=write,
                      requires="gguf", extra="gguf")
