"""llm.c checkpoints: `gpt2_<release>.bin` (or `_bf16.bin`) and `gpt2_tokenizer.bin`, as karpathy/llm.c's
train_gpt2.py (`write_model`, `write_tokenizer`) writes them and train_gpt2.c reads them.

Model file: a header of 256 little-endian int32 (magic, version, max_seq_len, vocab_size, n_layer,
n_head, n_embd, padded_vocab_size), then every parameter in llm.c's `ParameterTensors` order, each
per-layer kind written for all layers before the next kind. Matrices are nn.Linear (out, in), the
transpose of the checkpoint's Conv1D; wte is padded with zero rows to a multiple of 128 (50257 ->
50304); the head is tied to wte. Version 3 is all fp32, version 5 all bf16 (norms included).
Tokenizer file: a 256-int32 header (magic, version 2, token count, EOT id), then per token id one
length byte and the token's raw bytes. verify reads both back exactly (`read_stored`): every tensor's
byte range, the padding rows included, and the tokenizer file against the release's encoder.json.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

from typing import TYPE_CHECKING

from gpt2hub import lazy
from gpt2hub.casts import CASTS
from gpt2hub.errors import ConversionError
from gpt2hub.layout import BLOCK_TENSORS, GELU_TANH, HPARAM_MAX, HParams
from gpt2hub.stored import Expected, Stored, StoredOutput
from gpt2hub.threads import pipelined
from gpt2hub.tokenizer import byte_decoder

from . import ADDED_TOKENS, ConvertInput, Format, Planned, Progress, Rule, Weights, expand, plan, row_chunks
from . import hf

if TYPE_CHECKING:
    from gpt2hub.vocabulary import Vocab

np = lazy.module("numpy")  # loaded when a tensor is touched, not when the registry is read

MODEL_MAGIC, TOKENIZER_MAGIC, TOKENIZER_VERSION = 20240326, 20240328, 2
HEADER_INTS = 256
VERSIONS = {"f32": 3, "bf16": 5}  # train_gpt2.py write_model: 3 = all fp32, 5 = all bf16 (padded vocab)
VOCAB_MULTIPLE = 128  # train_gpt2.py pad_vocab
PADDED = "wte"  # the kind padded with zero rows to VOCAB_MULTIPLE
ENCODINGS = {"f32": "F32", "bf16": "BF16"}  # dtype -> encoding of every tensor (gguf-py's type names)
TOKENIZER_FILE = "gpt2_tokenizer.bin"
# The fields written at GPT-2's value (--allow-approximate-activation), one per line; llm.c's header has no place
APPROXIMATED_FILE = "gpt2hub-approximated.txt"

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


def model_header(source: ConvertInput, dtype: str) -> bytes:
    h = source.hparams
    ints = [MODEL_MAGIC, VERSIONS[dtype], h.n_ctx, h.n_vocab, h.n_layer, h.n_head, h.n_embd, padded_vocab(h.n_vocab)]
    return struct.pack(f"<{HEADER_INTS}i", *ints, *[0] * (HEADER_INTS - len(ints)))


def file_order(planned: list[Planned]) -> list[Planned]:
    """Kinds in ORDER, layers ascending within a kind."""
    def key(p: Planned) -> tuple[int, int]:
        kind, _, layer = p.name.partition("[")
        return ORDER.index(kind), int(layer.rstrip("]") or 0)
    return sorted(planned, key=key)


def tokenizer_bytes(v: Vocab) -> bytes:
    """gpt2_tokenizer.bin: every token's raw bytes by id (`enc.decode_bytes([i])`), after the header."""
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


def write(source: ConvertInput, out: Path, dtype: str, progress: Progress) -> None:
    h = source.hparams
    if len(source.vocab.tokens) != h.n_vocab:
        raise ConversionError(f"{source.vocab.encoder_json}: {len(source.vocab.tokens)} tokens, but wte has "
                              f"{h.n_vocab} rows (llm.c decodes ids through the tokenizer file)")
    (out / TOKENIZER_FILE).write_bytes(tokenizer_bytes(source.vocab))
    if source.approximated:
        (out / APPROXIMATED_FILE).write_text("".join(f"{k} {getattr(h, k)}\n" for k in source.approximated))
    size, cast = CASTS[dtype]
    with open(out / model_filename(source.release, dtype), "wb") as f:
        f.write(model_header(source, dtype))
        for p in file_order(plan(source, GLOBAL_RULES, BLOCK_RULES)):
            for data, n in pipelined(lambda b: (cast(b), b.nbytes), row_chunks(source, p)):
                f.write(memoryview(data).cast("B"))
                progress(n)
            if p.name == PADDED:  # zero rows up to the padded vocabulary: a run of zero bytes in either dtype
                f.write(bytes((padded_vocab(h.n_vocab) - h.n_vocab) * h.n_embd * size))


# --- reading a folder back ------------------------------------------------------------------------

def _model_file(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob("gpt2_*.bin") if p.name != TOKENIZER_FILE) if folder.is_dir() else []
    return found[0] if len(found) == 1 else None


def is_output(path: Path) -> bool:
    return (path / TOKENIZER_FILE).is_file() and _model_file(path) is not None


def read_header(path: Path) -> tuple[int, ...]:
    raw = b""
    if path.is_file():
        with open(path, "rb") as f:  # the header only, not the model
            raw = f.read(HEADER_INTS * 4)
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


def _checked_model(folder: Path) -> tuple[Path, tuple[int, ...], str, dict[str, tuple[int, tuple[int, ...]]]]:
    """(model file, header, dtype, kind -> (byte offset, shape as stored)); a one-line error where the size is not
    the header's."""
    model = _model_file(folder)
    if model is None:
        raise ConversionError(f"{folder}: no single gpt2_<release>.bin llm.c checkpoint")
    header = read_header(model)
    _, version, n_ctx, n_vocab, n_layer, n_head, n_embd, vp = header[:8]
    header_hparams(model, header)
    dtype = {v: k for k, v in VERSIONS.items()}[version]
    shapes = {"wte": (vp, n_embd), "wpe": (n_ctx, n_embd), "lnfw": (n_embd,), "lnfb": (n_embd,)}
    for key, rule in BLOCK_RULES.items():  # every layer's slice of a kind has the same shape
        shapes[rule.name.split("[")[0]] = (n_layer, *_layer_shape(key, n_embd))
    kinds, at = {}, HEADER_INTS * 4
    for kind in ORDER:
        kinds[kind] = (at, shapes[kind])
        at += math.prod(shapes[kind]) * CASTS[dtype][0]
    if model.stat().st_size != at:
        raise ConversionError(f"{model}: {model.stat().st_size:,} bytes, the header implies {at:,}")
    return model, header, dtype, kinds


def header_hparams(path: Path, header: tuple[int, ...]) -> HParams:
    """The header's hyperparameters, bounded as a manifest's are (HParams' caps) before any shape is computed
    from them; the padded vocabulary between the vocabulary and the same cap."""
    _, _, n_ctx, n_vocab, n_layer, n_head, n_embd, vp = header[:8]
    try:
        hp = HParams(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer)
    except ConversionError as e:
        raise ConversionError(f"{path}: header {str(e).removeprefix('hparams: ')}") from None
    if not n_vocab <= vp <= HPARAM_MAX["n_vocab"]:
        raise ConversionError(f"{path}: header padded_vocab_size {vp:,} is not between vocab_size {n_vocab:,} "
                              f"and gpt2hub's limit of {HPARAM_MAX['n_vocab']:,}")
    return hp


def _tensor_of(rule: Rule, kinds: dict[str, tuple[int, tuple[int, ...]]], item: int) -> tuple[int, tuple[int, ...]]:
    """(byte offset, shape) of the tensor a rule names: a kind, or layer i's slice of it."""
    kind, _, layer = rule.name.partition("[")
    offset, shape = kinds[kind]
    if not layer:
        return offset, shape
    return offset + int(layer[:-1]) * math.prod(shape[1:]) * item, shape[1:]


def read_weights(folder: Path) -> Weights:
    """The folder's model file, unpadded and in gpt2hub's reference names and Conv1D (in, out) layout (float32)."""
    model, header, dtype, kinds = _checked_model(folder)
    n_vocab = header[3]
    item = CASTS[dtype][0]
    raw = np.memmap(model, np.uint8, "r")
    names = hf.reference_names(header[4])
    tensors = {}
    for tf, rule in expand(GLOBAL_RULES, BLOCK_RULES, header[4]).items():
        offset, shape = _tensor_of(rule, kinds, item)
        chunk = raw[offset:offset + math.prod(shape) * item]
        a = chunk.view("<f4") if dtype == "f32" else (chunk.view("<u2").astype(np.uint32) << 16).view(np.float32)
        a = a.reshape(shape)
        a = a[:n_vocab] if rule.name == PADDED else a
        tensors[names[tf]] = np.ascontiguousarray(a.T) if rule.transpose else a
    return Weights(_config(header), tensors)


def _config(header: tuple[int, ...]) -> dict:
    """GPTConfig's fields from the header; eps and the activation are train_gpt2.c's constants."""
    _, _, n_ctx, n_vocab, n_layer, n_head, n_embd = header[:7]
    return dict(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer, eps=1e-5,
                activation=GELU_TANH, n_inner=None, tied=True, attn_scale_by_layer=False)


def approximated(folder: Path) -> list[str]:
    """The fields the folder records it computes at GPT-2's value (APPROXIMATED_FILE): ["activation"]."""
    path = folder / APPROXIMATED_FILE
    if not path.is_file() or path.stat().st_size > 4096:
        return []
    return [line.split()[0] for line in path.read_text(errors="replace").splitlines() if line.strip()]


def read_stored(folder: Path, hparams: HParams, vocab: Vocab) -> StoredOutput:
    """Every tensor's byte range in the model file and what it must be: the source in the header's dtype,
    Conv1D weights transposed, wte followed by zero rows up to the padded vocabulary; the tokenizer file
    as train_gpt2.py writes it from the release's encoder.json."""
    model, header, dtype, kinds = _checked_model(folder)
    item, encoding = CASTS[dtype][0], ENCODINGS[dtype]
    tensors, expected = {}, {}
    for rule in expand(GLOBAL_RULES, BLOCK_RULES, header[4]).values():  # as the file's header lays them out
        offset, shape = _tensor_of(rule, kinds, item)
        tensors[rule.name] = Stored(rule.name, encoding, shape, model, offset, math.prod(shape) * item)
    for tf, rule in expand(GLOBAL_RULES, BLOCK_RULES, hparams.n_layer).items():  # as the release implies them
        pad = padded_vocab(hparams.n_vocab) - hparams.n_vocab if rule.name == PADDED else 0
        expected[rule.name] = Expected(tf, encoding, rule.transpose, pad)
    problems = _tokenizer_problems(folder / TOKENIZER_FILE, vocab)
    unused = [i for i, v in enumerate(header) if i >= 8 and v]
    if unused:
        problems.append(f"{model.name}: header int {unused[0]} is {header[unused[0]]} ({len(unused)} of ints 8-255 "
                        "nonzero), train_gpt2.py writes 0")
    return StoredOutput(dtype, _config(header), tensors, expected, problems, approximated(folder))


def _tokenizer_problems(path: Path, vocab: Vocab) -> list[str]:
    """Where gpt2_tokenizer.bin differs from what train_gpt2.py writes for the vocabulary (empty if nowhere)."""
    got, want = path.read_bytes(), tokenizer_bytes(vocab)
    if got == want:
        return []
    head = HEADER_INTS * 4
    if got[:head] != want[:head]:
        names = ("magic", "version", "token count", "EOT id")
        a, b = (struct.unpack(f"<{HEADER_INTS}i", x[:head]) if len(x) >= head else None for x in (got, want))
        if a is None:
            return [f"{path.name}: shorter than its {head}-byte header"]
        i = next(i for i in range(HEADER_INTS) if a[i] != b[i])
        return [f"{path.name}: header {names[i] if i < len(names) else f'int {i}'} is {a[i]}, train_gpt2.py writes {b[i]}"]
    at = head
    for i in range(len(vocab.tokens)):
        n = want[at] + 1
        if got[at:at + n] != want[at:at + n]:
            return [f"{path.name}: token {i} is not encoder.json's bytes for it"]
        at += n
    return [f"{path.name}: {len(got) - len(want)} bytes after the last token"]


def _layer_shape(key: str, c: int) -> tuple[int, ...]:
    """One layer's tensor of a kind as llm.c stores it (matrices (out, in))."""
    dims = {"1": 1, "E": c, "3E": 3 * c, "4E": 4 * c}
    shape = tuple(dims[d] for d in BLOCK_TENSORS[key] if d != "1")
    return shape[::-1] if BLOCK_RULES[key].transpose else shape


FORMAT = Format(name="llmc", rank=40, dtypes=tuple(VERSIONS), default_dtype="f32", write=write, consumer="gpt2hub",
                is_output=is_output, read_weights=read_weights, read_dtype=read_dtype, read_stored=read_stored,
                looks_like="an llm.c folder", proof_reads=("gpt2_tokenizer.bin",),
                demo_dtypes=("f32",), hub_prefix="llmc/", tags=("llm.c",),
                # train_gpt2.c's GPT-2: layernorm eps 1e-5, tanh GELU, a 4 * C MLP, the head tied to wte
                cannot_hold={"n_inner": "llm.c assumes 4 * n_embd", "eps": "llm.c's layernorm uses 1e-5",
                             "activation": "llm.c computes GPT-2's tanh GELU", "tied": "llm.c ties the head to wte",
                             "attn_scale_by_layer": "llm.c scales attention by 1/sqrt(head_dim) only",
                             ADDED_TOKENS: "llm.c's gpt2_tokenizer.bin holds the BPE vocabulary only"},
                approximates=frozenset({"activation"}))
