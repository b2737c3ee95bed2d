"""llm.c checkpoints: `gpt2_<release>.bin` (or `_bf16.bin`) and `gpt2_tokenizer.bin`, as karpathy/llm.c's
train_gpt2.py (`write_model`, `write_tokenizer`) writes them and train_gpt2.c reads them.

Model file: a header of 256 little-endian int32 (magic, version, max_seq_len, vocab_size, n_layer,
n_head, n_embd, padded_vocab_size), then every parameter in llm.c's `ParameterTensors` order, each
per-layer kind written for all layers before the next kind. Matrices are nn.Linear (out, in), the
transpose of the checkpoint's Conv1D; wte is padded with zero rows to a multiple of 128 (50257 ->
50304); the head is tied to wte. Version 3 is all fp32, version 5 all bf16 (norms included).
Tokenizer file: a 256-int32 header (magic, version 2, token count, EOT id), then per token id one
length byte and the token's raw bytes.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

from gpt2hub import lazy
from gpt2hub.errors import ConversionError
from gpt2hub.layout import BLOCK_TENSORS
from gpt2hub.tokenizer import byte_decoder

from . import CASTS, Format, Planned, Progress, Rule, Source, Weights, expand, pipelined, plan, row_chunks
from . import hf

np = lazy.module("numpy")  # loaded when a tensor is touched, not when the registry is read

MODEL_MAGIC, TOKENIZER_MAGIC, TOKENIZER_VERSION = 20240326, 20240328, 2
HEADER_INTS = 256
VERSIONS = {"f32": 3, "bf16": 5}  # train_gpt2.py write_model: 3 = all fp32, 5 = all bf16 (padded vocab)
VOCAB_MULTIPLE = 128  # train_gpt2.py pad_vocab
TOKENIZER_FILE = "gpt2_tokenizer.bin"

# llm.c's ParameterTensors, in file order; "{i}" names a per-layer slice of a kind.
GLOBAL_RULES: dict[str, Rule] = {
    "wte": Rule("wte"),
    "wpe": Rule("wpe"),
    "ln_f/g": Rule("lnfw"),
    "ln_f/b": Rule("lnfb"),
}
BLOCK_RULES: dict[str, Rule] = {
    "ln_1/g": Rule("ln1w[{i}]"),
    "ln_1/b": Rule("ln1b[{i}]"),
    "attn/c_attn/w": Rule("qkvw[{i}]", transpose=True),
    "attn/c_attn/b": Rule("qkvb[{i}]"),
    "attn/c_proj/w": Rule("attprojw[{i}]", transpose=True),
    "attn/c_proj/b": Rule("attprojb[{i}]"),
    "ln_2/g": Rule("ln2w[{i}]"),
    "ln_2/b": Rule("ln2b[{i}]"),
    "mlp/c_fc/w": Rule("fcw[{i}]", transpose=True),
    "mlp/c_fc/b": Rule("fcb[{i}]"),
    "mlp/c_proj/w": Rule("fcprojw[{i}]", transpose=True),
    "mlp/c_proj/b": Rule("fcprojb[{i}]"),
}
ORDER = ("wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b",
         "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb")


def model_filename(release: str, dtype: str) -> str:
    """train_gpt2.py's names: gpt2_124M.bin (fp32), gpt2_124M_bf16.bin."""
    return f"gpt2_{release}.bin" if dtype == "f32" else f"gpt2_{release}_{dtype}.bin"


def padded_vocab(n_vocab: int) -> int:
    return -(-n_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def model_header(source: Source, dtype: str) -> bytes:
    h = source.hparams
    ints = [MODEL_MAGIC, VERSIONS[dtype], h.n_ctx, h.n_vocab, h.n_layer, h.n_head, h.n_embd, padded_vocab(h.n_vocab)]
    return struct.pack(f"<{HEADER_INTS}i", *ints, *[0] * (HEADER_INTS - len(ints)))


def file_order(planned: list[Planned]) -> list[Planned]:
    """Kinds in ORDER, layers ascending within a kind."""
    def key(p: Planned) -> tuple[int, int]:
        kind, _, layer = p.name.partition("[")
        return ORDER.index(kind), int(layer.rstrip("]") or 0)
    return sorted(planned, key=key)


def tokenizer_bytes(source: Source) -> bytes:
    """gpt2_tokenizer.bin: every token's raw bytes by id (`enc.decode_bytes([i])`), after the header."""
    v = source.vocab
    decode = byte_decoder()
    out = [struct.pack(f"<{HEADER_INTS}i", TOKENIZER_MAGIC, TOKENIZER_VERSION, len(v.tokens), v.eot_id,
                       *[0] * (HEADER_INTS - 4))]
    for i, token in enumerate(v.tokens):
        try:
            raw = bytes(decode[c] for c in token)
        except KeyError:
            raw = b""
        if not 0 < len(raw) < 256:
            raise ConversionError(f"{v.encoder_json}: token {i} ({token[:20]!r}) is not 1-255 bytes of GPT-2's "
                                  "byte alphabet (llm.c stores one length byte per token)")
        out.append(bytes([len(raw)]) + raw)
    return b"".join(out)


def write(source: Source, out: Path, dtype: str, progress: Progress) -> None:
    h = source.hparams
    if len(source.vocab.tokens) != h.n_vocab:
        raise ConversionError(f"{source.vocab.encoder_json}: {len(source.vocab.tokens)} tokens, but wte has "
                              f"{h.n_vocab} rows (llm.c decodes ids through the tokenizer file)")
    (out / TOKENIZER_FILE).write_bytes(tokenizer_bytes(source))
    size, cast = CASTS[dtype]
    with open(out / model_filename(source.release, dtype), "wb") as f:
        f.write(model_header(source, dtype))
        for p in file_order(plan(source, GLOBAL_RULES, BLOCK_RULES)):
            for data, n in pipelined(lambda b: (cast(b), b.nbytes), row_chunks(source, p)):
                f.write(memoryview(data).cast("B"))
                progress(n)
            if p.name == "wte":  # zero rows up to the padded vocabulary: a run of zero bytes in either dtype
                f.write(bytes((padded_vocab(h.n_vocab) - h.n_vocab) * h.n_embd * size))


# --- reading a folder back ------------------------------------------------------------------------

def _model_file(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob("gpt2_*.bin") if p.name != TOKENIZER_FILE) if folder.is_dir() else []
    return found[0] if len(found) == 1 else None


def is_output(path: Path) -> bool:
    return (path / TOKENIZER_FILE).is_file() and _model_file(path) is not None


def read_header(path: Path) -> tuple[int, ...]:
    raw = path.read_bytes()[:HEADER_INTS * 4] if path.is_file() else b""
    if len(raw) < HEADER_INTS * 4:
        raise ConversionError(f"{path}: shorter than llm.c's 1024-byte header")
    header = struct.unpack(f"<{HEADER_INTS}i", raw)
    if header[0] != MODEL_MAGIC or header[1] not in VERSIONS.values():
        raise ConversionError(f"{path}: magic {header[0]} version {header[1]} is not an llm.c GPT-2 checkpoint "
                              f"({MODEL_MAGIC}, version {' or '.join(map(str, VERSIONS.values()))})")
    return header


def read_dtype(folder: Path) -> str:
    model = _model_file(folder)
    version = read_header(model)[1] if model else None
    return {v: k for k, v in VERSIONS.items()}.get(version, "unknown")


def read_weights(folder: Path) -> Weights:
    """The folder's model file, unpadded and in gpt2hub's reference names and Conv1D (in, out) layout (float32)."""
    model = _model_file(folder)
    if model is None:
        raise ConversionError(f"{folder}: no single gpt2_<release>.bin llm.c checkpoint")
    _, version, n_ctx, n_vocab, n_layer, n_head, n_embd, vp = read_header(model)[:8]
    dtype = {v: k for k, v in VERSIONS.items()}[version]
    shapes = {"wte": (vp, n_embd), "wpe": (n_ctx, n_embd), "lnfw": (n_embd,), "lnfb": (n_embd,)}
    for key, rule in BLOCK_RULES.items():  # every layer's slice of a kind has the same shape
        shapes[rule.name.split("[")[0]] = (n_layer, *_layer_shape(key, n_embd))
    sizes = [math.prod(shapes[kind]) for kind in ORDER]
    item = CASTS[dtype][0]
    expected = HEADER_INTS * 4 + sum(sizes) * item
    if model.stat().st_size != expected:
        raise ConversionError(f"{model}: {model.stat().st_size:,} bytes, the header implies {expected:,}")
    raw = np.memmap(model, np.uint8, "r", offset=HEADER_INTS * 4)
    kinds, at = {}, 0
    for kind, n in zip(ORDER, sizes):
        chunk = raw[at * item:(at + n) * item]
        a = chunk.view("<f4") if dtype == "f32" else (chunk.view("<u2").astype(np.uint32) << 16).view(np.float32)
        kinds[kind] = a.reshape(shapes[kind])
        at += n
    names = hf.reference_names(n_layer)
    tensors = {}
    for tf, rule in expand(GLOBAL_RULES, BLOCK_RULES, n_layer).items():
        kind, _, layer = rule.name.partition("[")
        a = kinds[kind][int(layer[:-1])] if layer else kinds[kind]
        a = a[:n_vocab] if kind == "wte" else a
        tensors[names[tf]] = np.ascontiguousarray(a.T) if rule.transpose else a
    config = dict(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer, eps=1e-5,
                  activation="gelu_new")
    return Weights(config, tensors)


def _layer_shape(key: str, c: int) -> tuple[int, ...]:
    """One layer's tensor of a kind as llm.c stores it (matrices (out, in))."""
    dims = {"1": 1, "E": c, "3E": 3 * c, "4E": 4 * c}
    shape = tuple(dims[d] for d in BLOCK_TENSORS[key] if d != "1")
    return shape[::-1] if BLOCK_RULES[key].transpose else shape


FORMAT = Format(name="llmc", rank=40, dtypes=tuple(VERSIONS), default_dtype="f32", write=write, consumer="gpt2hub",
                is_output=is_output, read_weights=read_weights, read_dtype=read_dtype, looks_like="an llm.c folder",
                demo_dtypes=("f32",), hub_prefix="llmc/", tags=("llm.c",))
