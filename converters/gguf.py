"""GGUF for llama.cpp: the `gpt2` architecture, named and laid out as convert_hf_to_gguf writes it.

Metadata, tensor infos and data go through gguf-py's GGUFWriter (add_tensor, write_tensors_to_file).
Each tensor is handed to it as a `_Streamed` stand-in whose tofile() writes the tensor one
row-chunk at a time, instead of a whole array: GGUFWriter keeps every added array until the file is
written. Norms, biases and position_embd stay F32 whatever the dtype, as llama.cpp's converter and
llama-quantize keep them.
"""

from __future__ import annotations

from pathlib import Path

from gpt2hub import lazy
from gpt2hub.errors import ConversionError

from . import (CASTS, Format, Planned, Progress, Rule, Source, TokenizerReader, Weights, expand, pipelined, plan,
               row_chunks)
from . import hf

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
UNTIED_OUTPUT = Rule("output.weight")  # --untie: a copy of wte, for llama.cpp before March 2025

# --dtype -> (ggml tensor type of the 2-D weights, general.file_type), as gguf-py's enums name them.
DTYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}
ARCH = "gpt2"
SUFFIX = ".gguf"


def _ggml_type(rule: Rule, dtype: str) -> str:
    return "F32" if rule.keep_f32 else DTYPES[dtype][0]


def _encode(block, ggml_type: str):
    """A float32 block of whole rows in a ggml type's bytes (rows are independent in every type)."""
    import gguf

    if ggml_type in ("F32", "F16"):
        return CASTS[ggml_type.lower()][1](block)
    return gguf.quants.quantize(np.ascontiguousarray(block), gguf.GGMLQuantizationType[ggml_type])


def _add_metadata(w, source: Source, dtype: str) -> None:
    import gguf

    h, v = source.hparams, source.vocab
    w.add_name(source.release)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_block_count(h.n_layer)
    w.add_context_length(h.n_ctx)
    w.add_embedding_length(h.n_embd)
    w.add_feed_forward_length(4 * h.n_embd)
    w.add_head_count(h.n_head)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type(int(gguf.LlamaFileType[DTYPES[dtype][1]]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(v.tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i == v.eot_id else gguf.TokenType.NORMAL for i in range(len(v.tokens))])
    w.add_token_merges(v.merges)
    w.add_bos_token_id(v.eot_id)
    w.add_eos_token_id(v.eot_id)
    w.add_string("general.source.release", source.release)
    w.add_string("general.converter", f"gpt2hub {source.version}")


class _Streamed:
    """A tensor as GGUFWriter.add_tensor takes it, whose tofile() encodes and writes it a row-chunk at a time.

    gguf-py's own lazy tensors (gguf.lazy.LazyNumpyTensor) build each whole tensor in tofile(); this writes
    32 MB blocks, cast or quantized on threads while the previous block is written.
    """

    def __init__(self, source: Source, p: Planned, ggml_type: str, nbytes: int, progress: Progress):
        self.source, self.planned, self.ggml_type, self.nbytes, self.progress = source, p, ggml_type, nbytes, progress
        self.shape = p.shape
        self.dtype = np.dtype(np.float32)  # what the writer reads for the info; raw_dtype gives the real type

    def tofile(self, f) -> None:
        encode = self.ggml_type
        for data, n in pipelined(lambda b: (_encode(b, encode), b.nbytes), row_chunks(self.source, self.planned)):
            f.write(memoryview(data).cast("B"))
            self.progress(n)


def write(source: Source, out: Path, dtype: str, progress: Progress) -> None:
    import gguf

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
        ggml_type = _ggml_type(p.rule, dtype)
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


# --- reading a file back ----------------------------------------------------------------------

def is_output(path: Path) -> bool:
    return path.suffix == SUFFIX and path.is_file()


def read_config(reader, source: str) -> dict:
    """GPTConfig's fields from a GGUF file's gpt2.* metadata (n_vocab from token_embd's shape)."""
    import gguf

    keys = gguf.Keys
    arch = reader.get_field(keys.General.ARCHITECTURE)
    if arch is None or arch.contents() != ARCH:
        raise ConversionError(f"{source}: general.architecture is {arch.contents() if arch else None!r}, not {ARCH!r}")
    fields = {"n_ctx": keys.LLM.CONTEXT_LENGTH, "n_embd": keys.LLM.EMBEDDING_LENGTH, "n_head": keys.Attention.HEAD_COUNT,
              "n_layer": keys.LLM.BLOCK_COUNT, "eps": keys.Attention.LAYERNORM_EPS}
    values = {}
    for field, key in fields.items():
        f = reader.get_field(key.format(arch=ARCH))
        if f is None:
            raise ConversionError(f"{source}: no {key.format(arch=ARCH)} in the metadata")
        values[field] = float(f.contents()) if field == "eps" else int(f.contents())
    embd = next((t for t in reader.tensors if t.name == GLOBAL_RULES["wte"].name), None)
    if embd is None:
        raise ConversionError(f"{source}: no {GLOBAL_RULES['wte'].name} tensor")
    values["n_vocab"] = int(embd.shape[1])  # GGUF dims are (ne0=n_embd, ne1=n_vocab)
    return values


def read_weights(path: Path) -> Weights:
    """The file's config and tensors (dequantized to float32 unless F32/F16), in gpt2hub's names and layout."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: not a GGUF file ({e})") from None
    config = read_config(reader, str(path))
    by_name = {t.name: t for t in reader.tensors}
    names = hf.reference_names(config["n_layer"])
    kept = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    tensors = {}
    for tf, rule in expand(GLOBAL_RULES, BLOCK_RULES, config["n_layer"]).items():
        t = by_name.get(rule.name)
        if t is None:
            raise ConversionError(f"{path}: no tensor {rule.name}")
        a = np.asarray(t.data if t.tensor_type in kept else gguf.quants.dequantize(t.data, t.tensor_type))
        tensors[names[tf]] = a.T if rule.transpose else a  # GGUF stores Conv1D weights (out, in)
    return Weights(config, tensors)


def read_dtype(path: Path) -> str:
    """The file's dtype from general.file_type, else the commonest type among its 2-D tensors."""
    import gguf

    reader = gguf.GGUFReader(path)
    f = reader.get_field(gguf.Keys.General.FILE_TYPE)
    by_file_type = {int(gguf.LlamaFileType[file_type]): dtype for dtype, (_, file_type) in DTYPES.items()}
    if f is not None and int(f.contents()) in by_file_type:
        return by_file_type[int(f.contents())]
    types = [t.tensor_type.name.lower() for t in reader.tensors if len(t.shape) == 2]
    return max(set(types), key=types.count) if types else "unknown"


def _llama_ids(path: Path, text: str) -> list[int]:
    """llama.cpp's tokenization of text with the file's own vocabulary."""
    from gpt2hub.consumers import load_llama

    llm = load_llama(path, n_ctx=64)
    try:
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    finally:
        llm.close()


FORMAT = Format(name="gguf", rank=30, dtypes=tuple(DTYPES), default_dtype="f32", write=write, consumer="llama.cpp",
                is_output=is_output, read_weights=read_weights, read_dtype=read_dtype, looks_like=f"a {SUFFIX} file",
                file_suffix=SUFFIX, tokenizer=TokenizerReader("llama.cpp", "llama_cpp", lambda path: path, _llama_ids),
                requires="gguf", extra="gguf", untie=True, demo_dtypes=("f16", "q8_0"), tags=("gguf",))
