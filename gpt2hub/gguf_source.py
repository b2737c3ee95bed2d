"""A GGUF file of architecture gpt2 (written by llama.cpp, gguf-py or gpt2hub) read in place as a checkpoint.

The header is parsed by gpt2hub.ggufheader (every count and length bounded by the bytes left; gguf-py's
GGUFReader takes seconds on GPT-2's vocabulary), names and layouts come from converters/gguf.py's tables, and each
tensor is presented as a SourceTensor over its byte range: F32/F16/BF16 read back exactly, any ggml block type is
dequantized by gguf-py (so what converts is the quantized approximation, and the notes say so). The vocabulary
(tokenizer.ggml.tokens + merges) becomes encoder.json + vocab.bpe in the vocabulary cache.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from collections import Counter
from pathlib import Path

from . import encodings, lazy, vocab_cache
from .converters import expand
from .converters.gguf import APPROXIMATED, ARCH, BLOCK_RULES, FORMAT, GLOBAL_RULES, UNTIED_OUTPUT, read_config
from .errors import ConversionError
from .ggufheader import Header, TensorInfo, read_header
from .layout import ACTIVATIONS, HParams, tensor_shapes
from .source_kinds import OpenOptions, SourceKind
from .source_tensors import SourceTensor, same_bytes, stored_shape
from .tokenizer import ENDOFTEXT
from .vocabulary import Vocab

np = lazy.module("numpy")

KIND = FORMAT.name  # a source of this kind is a file of the gguf format
MAGIC, VERSIONS = b"GGUF", (2, 3)  # gguf.GGUF_MAGIC as bytes, gguf.READER_SUPPORTED_VERSIONS: detect needs no gguf
TOKENIZER_MODEL = "gpt2"  # tokenizer.ggml.model of a byte-level BPE vocabulary
PAD = re.compile(r"\[PAD(\d+)\]")  # convert_hf_to_gguf's stand-in for an id the tokenizer lacks (type UNUSED)


def is_gguf(path: Path) -> bool:
    """GGUF's magic and a version gguf-py reads (any architecture: open names a wrong one in its error)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[:4] == MAGIC and struct.unpack("<I", head[4:])[0] in VERSIONS


@functools.cache
def dequantizable(encoding: str) -> bool:
    """F32/F16/BF16, or a ggml block type gguf-py's dequantizer implements (tried on one zero block)."""
    import gguf

    if encoding in encodings.UNBLOCKED:
        return True
    if not encodings.is_known(encoding) or encodings.block_size(encoding) == 1:
        return False  # F64, I8..I64: not weights of a GPT-2
    try:
        gguf.quants.dequantize(np.zeros((1, encodings.row_bytes(encoding, encodings.block_size(encoding))), np.uint8),
                               encodings.qtype(encoding))
    except NotImplementedError:
        return False
    return True


class GgufCheckpoint:
    """A gpt2 GGUF as converters read a checkpoint (see gpt2hub.source_kinds): `.entries` over the file's byte ranges,
    `.hparams` from the gpt2.* metadata, `.vocab` from tokenizer.ggml.*, `.notes` saying what is not exact."""

    def __init__(self, path: Path | str, options: OpenOptions = OpenOptions()):
        self.path = Path(path)
        self.data_paths = [self.path]
        self.index_path = self.path
        self.hparams_from = f"{ARCH}.* metadata"
        self.ignored: list[str] = []
        self.notes: list[str] = []
        try:
            import gguf
        except ImportError:
            raise ConversionError(f"{self.path}: reading GGUF needs the gguf package: "
                                  f"pip install 'gpt2hub[{FORMAT.extra}]'") from None
        header = read_header(self.path)
        split = header.fields.get(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 1)
        if split != 1:
            raise ConversionError(f"{self.path}: one part of a GGUF split in {str(split)[:20]}; gpt2hub reads a whole "
                                  "file (join the parts with llama-gguf-split --merge)")
        self.infos = _infos(header, self.path)
        self.hparams = self._hparams(header)
        self.entries = self._entries()
        self.vocab = self._vocab(header, options)

    # --- hparams and tensors ---------------------------------------------------------------------

    def _hparams(self, header: Header) -> HParams:
        import gguf

        config = read_config(header, str(self.path))  # general.architecture, the gpt2.* numbers, n_vocab
        kv_key = gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=ARCH)
        n_kv = header.fields.get(kv_key, config["n_head"])
        if n_kv != config["n_head"]:
            raise ConversionError(f"{self.path}: {kv_key} is {str(n_kv)[:40]} but head_count is {config['n_head']}; "
                                  "GPT-2 has a key/value head per head (grouped-query attention is not supported)")
        output = self.infos.get(UNTIED_OUTPUT.name)
        tied = output is None or self._same_bytes(output, self.infos.get(GLOBAL_RULES["wte"].name))
        if output is not None and tied:
            self.ignored.append(output.name)
            self.notes.append(f"{output.name} is {GLOBAL_RULES['wte'].name}'s copy: the head is read as tied to wte")
        activation = self._activation(header, config["activation"])
        try:
            return HParams(n_vocab=config["n_vocab"], n_ctx=config["n_ctx"], n_embd=config["n_embd"],
                           n_head=config["n_head"], n_layer=config["n_layer"],
                           n_inner=None if config["n_inner"] == 4 * config["n_embd"] else config["n_inner"],
                           eps=_float32(config["eps"]), activation=activation, tied=tied)
        except ConversionError as e:  # name the file the bad value came from
            raise ConversionError(f"{self.path}: {str(e).removeprefix('hparams: ')}") from None

    def _activation(self, header: Header, computed: str) -> str:
        """The activation of the model the weights are (gpt2hub.approximated records one llama.cpp computes as
        GPT-2's), else the one llama.cpp's gpt2 graph computes."""
        said = header.fields.get(APPROXIMATED)
        recorded = [str(x).removeprefix("activation ") for x in said if str(x).startswith("activation ")] \
            if isinstance(said, list) else []
        if not recorded:
            return computed
        activation = recorded[0]
        if activation not in ACTIVATIONS:
            raise ConversionError(f"{self.path}: {APPROXIMATED} names activation {activation[:40]!r}, not one of "
                                  f"{', '.join(ACTIVATIONS)}")
        if activation != computed:
            self.notes.append(f"{APPROXIMATED}: the weights are of a model with activation {activation} (llama.cpp "
                              f"computes {computed}): read as {activation}")
        return activation

    def _same_bytes(self, a: TensorInfo, b: TensorInfo | None) -> bool:
        """Whether two tensors of the file hold the same type, dims and bytes (compared in bounded pieces)."""
        if b is None or a.dims != b.dims or a.type != b.type or a.nbytes != b.nbytes:
            return False
        return same_bytes(self.path, a.offset, self.path, b.offset, a.nbytes)

    def _entries(self) -> dict[str, SourceTensor]:
        h = self.hparams
        rules = expand(GLOBAL_RULES, BLOCK_RULES, h.n_layer, None if h.tied else UNTIED_OUTPUT)
        shapes = tensor_shapes(h)
        entries = {}
        for tf, rule in rules.items():  # layer by layer: the first one missing is named
            if rule.name not in self.infos:
                raise ConversionError(f"{self.path}: no tensor {rule.name} (a GPT-2 of {ARCH}.block_count "
                                      f"{h.n_layer} has it)")
            entries[tf] = self._entry(tf, shapes[tf], self.infos[rule.name], rule.transpose)
        extra = sorted(set(self.infos) - {rule.name for rule in rules.values()} - set(self.ignored))
        if extra:
            raise ConversionError(f"{self.path}: tensor {extra[0]} is not part of a GPT-2 of {ARCH}.block_count "
                                  f"{h.n_layer}" + (f" ({len(extra)} such tensors)" if len(extra) > 1 else ""))
        counts = Counter(self.infos[rule.name].type.name for rule in rules.values())
        said = ", ".join(f"{n} {'tensors ' if i == 0 else ''}{t}" for i, (t, n) in
                         enumerate(sorted(counts.items(), key=lambda tn: (tn[0] == "F32", -tn[1]))))
        if any(t not in encodings.UNBLOCKED for t in counts):
            self.notes.append(f"dequantized from GGUF: {said} — not the original weights, only their quantized "
                              "approximation")
        elif set(counts) != {"F32"}:
            self.notes.append(f"read from GGUF: {said} (widened to float32 exactly: the original weights as they "
                              "were rounded when the GGUF was written)")
        return entries

    def _entry(self, tf: str, shape: tuple[int, ...], t: TensorInfo, transposed: bool) -> SourceTensor:
        """The tensor `t` as OpenAI's `tf` of TF `shape`: ggml's dims are the stored (numpy) shape reversed."""
        dims = tuple(reversed(stored_shape(shape, transposed)))
        if tuple(t.dims) != dims:
            raise ConversionError(f"{self.path}: {t.name} has dims {list(t.dims)}; the {ARCH}.* metadata implies "
                                  f"{list(dims)}")
        encoding = t.type.name
        if not dequantizable(encoding):
            raise ConversionError(f"{self.path}: {t.name} is {encoding}; gpt2hub reads F32, F16, BF16 and the ggml "
                                  "block types gguf-py dequantizes")
        if dims[0] % encodings.block_size(encoding):
            raise ConversionError(f"{self.path}: {t.name} has rows of {dims[0]}, not whole {encoding} blocks of "
                                  f"{encodings.block_size(encoding)}")
        entry = SourceTensor.at(tf, shape, 0, t.offset, encoding, transposed)
        if entry.size != t.nbytes:
            raise ConversionError(f"{self.path}: {t.name} spans {t.nbytes} bytes, not the {entry.size} of {encoding} "
                                  f"{list(dims)}")
        return entry

    # --- the vocabulary --------------------------------------------------------------------------

    def _vocab(self, header: Header, options: OpenOptions) -> Vocab:
        """tokenizer.ggml.tokens + merges as encoder.json + vocab.bpe (GPT-2's files, byte for byte, for GPT-2's
        vocabulary), tokens after <|endoftext|> as added tokens; GPT-2's own (vocab_fallback) if the file has none."""
        import gguf

        keys = gguf.Keys.Tokenizer
        tokens, merges = header.fields.get(keys.LIST), header.fields.get(keys.MERGES)
        if tokens is None and merges is None:
            from .vocab_fallback import gpt2_vocab

            vocab, said = gpt2_vocab(options, f"{self.path} carries no {keys.LIST}")
            if vocab.n_tokens > self.hparams.n_vocab:
                raise ConversionError(f"{self.path}: carries no {keys.LIST}, and GPT-2's {vocab.n_tokens} tokens are "
                                      f"more than {GLOBAL_RULES['wte'].name}'s {self.hparams.n_vocab} rows")
            self.notes.append(said)
            return vocab
        model = header.fields.get(keys.MODEL)
        if model != TOKENIZER_MODEL:
            raise ConversionError(f"{self.path}: {keys.MODEL} is {str(model)[:40]!r}; gpt2hub reads GPT-2's byte-level "
                                  f"BPE ({TOKENIZER_MODEL!r}) only")
        for key, value in ((keys.LIST, tokens), (keys.MERGES, merges)):
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise ConversionError(f"{self.path}: {key} is not a list of strings")
        types = header.fields.get(keys.TOKEN_TYPE, [gguf.TokenType.NORMAL] * len(tokens))
        if not isinstance(types, list) or len(types) < len(tokens):
            have = len(types) if isinstance(types, list) else "no"
            raise ConversionError(f"{self.path}: {keys.TOKEN_TYPE} has {have} entries for {len(tokens)} tokens")
        if options.vocab is not None:
            self.notes.append(f"--vocab {options.vocab} not used: the GGUF carries its own vocabulary")
        n = len(tokens)
        while n and (m := PAD.fullmatch(tokens[n - 1])) and int(m.group(1)) == n - 1:
            n -= 1  # convert_hf_to_gguf's padding up to the embedding's rows: not tokens
        if n < len(tokens):
            self.notes.append(f"{keys.LIST} ends in {len(tokens) - n} padding entries ({tokens[n]} ...): not tokens")
        base, added = self._split(tokens[:n], types, keys.LIST)
        rows = self.hparams.n_vocab
        if rows < n:
            raise ConversionError(f"{self.path}: {n} tokens but {GLOBAL_RULES['wte'].name} has {rows} rows")
        if rows > n:
            self.notes.append(f"{GLOBAL_RULES['wte'].name} has {rows} rows for {n} tokens: rows {n}..{rows - 1} "
                              "belong to no token (padding), kept")
        for i, merge in enumerate(merges):
            parts = merge.split(" ")
            if len(parts) != 2 or not all(parts) or "\n" in merge or not _utf8(merge):
                raise ConversionError(f"{self.path}: {keys.MERGES}[{i}] is {merge[:40]!r}, not two symbols separated "
                                      "by a space")
        files = vocab_cache.kept_files({  # OpenAI's two files, byte for byte, for GPT-2's own vocabulary
            "encoder.json": json.dumps({t: i for i, t in enumerate(base)}).encode(),
            "vocab.bpe": ("#version: 0.2\n" + "".join(m + "\n" for m in merges)).encode("utf-8")})
        return Vocab.from_files(files["encoder.json"], files["vocab.bpe"], tuple(added))

    def _split(self, tokens: list[str], types: list, key: str) -> tuple[list[str], list[tuple[int, str, bool]]]:
        """GPT-2's tokens (up to <|endoftext|>) and the added ones after it: (id, content, special)."""
        import gguf

        seen: dict[str, int] = {}
        for i, token in enumerate(tokens):
            if seen.setdefault(token, i) != i:
                raise ConversionError(f"{self.path}: {key} holds {token[:40]!r} twice (ids {seen[token]} and {i})")
            if not _utf8(token):
                raise ConversionError(f"{self.path}: {key}[{i}] is not UTF-8")
        if ENDOFTEXT not in seen:
            raise ConversionError(f"{self.path}: {key} has no {ENDOFTEXT} (not GPT-2's vocabulary)")
        eot = seen[ENDOFTEXT]
        added = []
        for i in range(eot + 1, len(tokens)):
            if types[i] not in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED):
                raise ConversionError(f"{self.path}: {key}[{i}] {tokens[i][:40]!r} follows {ENDOFTEXT} but is not an "
                                      "added token (token_type CONTROL or USER_DEFINED)")
            added.append((i, tokens[i], types[i] == gguf.TokenType.CONTROL))
        return tokens[:eot + 1], added

    def close(self) -> None:
        pass

    def __enter__(self) -> "GgufCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _infos(header: Header, path: Path) -> dict[str, TensorInfo]:
    infos: dict[str, TensorInfo] = {}
    for t in header.tensors:
        if infos.setdefault(t.name, t) is not t:
            raise ConversionError(f"{path}: tensor {t.name[:80]} appears twice in the header")
    return infos


def _utf8(text: str) -> bool:
    """Whether a header string was valid UTF-8 (ggufheader keeps invalid bytes as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _float32(value: float) -> float:
    """A FLOAT32 metadata value as the decimal it was written from (1e-5, not 9.999999747378752e-06)."""
    single = np.float32(value)
    return float(str(single)) if float(single) == value else value


SOURCE = SourceKind(name=KIND, rank=40, is_file=True, detect=is_gguf, open=GgufCheckpoint, exact=False,
                    accepts=f"a GGUF file of architecture {ARCH} (llama.cpp's or gpt2hub's .gguf)")
