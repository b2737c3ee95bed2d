"""An llm.c checkpoint (`gpt2_124M.bin`, `gpt2_124M_bf16.bin`: karpathy/llm.c's train_gpt2.py `write_model`) read
in place as a source, every tensor a byte range of the one file, so every converter streams it unchanged.

The layout is converters/llmc.py's (its tables and header reader, imported): a 256-int32 header, then each kind
of tensor for all layers at once (ln1w: L x C, qkvw: L x 3C x C, ...), so layer i's tensor is the i-th slice of
its kind; matrices nn.Linear (out, in); wte padded with rows up to padded_vocab_size, of which the first
vocab_size are read; the head tied. Version 3 is all float32, version 5 all bf16 (widened exactly).
llm.c's tokenizer file (`gpt2_tokenizer.bin`) holds raw token bytes and no merges, so it is checked to be
GPT-2's and GPT-2's own encoder.json + vocab.bpe are used (gpt2hub.vocab_fallback).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from . import encodings
from .converters import expand
from .converters.llmc import (APPROXIMATED_FILE, BLOCK_RULES, ENCODINGS, FORMAT, GLOBAL_RULES, HEADER_INTS,
                              MODEL_MAGIC, ORDER, PADDED, TOKENIZER_FILE, TOKENIZER_MAGIC, VERSIONS, header_hparams,
                              read_header, tokenizer_bytes)
from .errors import ConversionError
from .layout import HParams, tensor_shapes
from .source_kinds import OpenOptions, SourceKind
from .source_tensors import SourceTensor, stored_shape
from .vocab_fallback import N_TOKENS, gpt2_vocab

if TYPE_CHECKING:
    from .vocabulary import Vocab

KIND = FORMAT.name  # --from llmc reads what --to llmc writes
HEADER_FIELDS = 8  # magic, version, max_seq_len, vocab_size, num_layers, num_heads, channels, padded_vocab_size
TOKENIZER_VERSIONS = (1, 2)  # llmc/tokenizer.h: version 1 has no EOT id in the header (GPT-2's 50256 is assumed)


def _first_int(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    return struct.unpack("<i", head)[0] if len(head) == 4 else None


def is_llmc_model(path: Path) -> bool:
    """llm.c's model magic first; the version is judged by `open`, so a version 4 file is told why, in one line."""
    return _first_int(path) == MODEL_MAGIC


def model_entries(path: Path, header: tuple[int, ...], h: HParams) -> dict[str, SourceTensor]:
    """Every tensor of GPT-2 as a byte range of the file; a one-line error unless the file's size is exactly the
    header's plus the sizes the header implies."""
    encoding = ENCODINGS[{v: k for k, v in VERSIONS.items()}[header[1]]]
    shapes = tensor_shapes(h)
    slots: dict[str, tuple[str, int, int]] = {}  # tf name -> (kind, layer, bytes of one layer's slice)
    kind_bytes = dict.fromkeys(ORDER, 0)
    rules = expand(GLOBAL_RULES, BLOCK_RULES, h.n_layer)
    for tf, rule in rules.items():
        kind, _, layer = rule.name.partition("[")
        n = encodings.nbytes(encoding, stored_shape(shapes[tf], rule.transpose))
        slots[tf] = (kind, int(layer[:-1]) if layer else 0, n)
        kind_bytes[kind] += n
    kind_bytes[PADDED] = encodings.nbytes(encoding, (header[7], h.n_embd))  # padded_vocab_size rows on disk
    starts, at = {}, HEADER_INTS * 4
    for kind in ORDER:
        starts[kind] = at
        at += kind_bytes[kind]
    size = path.stat().st_size
    if size != at:
        raise ConversionError(f"{path}: {size:,} bytes, but its header (version {header[1]}, {h.n_layer} layers, "
                              f"channels {h.n_embd}, max_seq_len {h.n_ctx}, padded_vocab_size {header[7]}) implies "
                              f"{at:,} (truncated, or a header that does not describe the file)")
    return {tf: SourceTensor.at(tf, shapes[tf], 0, starts[kind] + layer * n, encoding, rules[tf].transpose)
            for tf, (kind, layer, n) in slots.items()}


def find_tokenizer(folder: Path) -> Path | None:
    """gpt2_tokenizer.bin beside the model, else the one `*tokenizer.bin` there with llm.c's tokenizer magic."""
    if (folder / TOKENIZER_FILE).is_file():
        return folder / TOKENIZER_FILE
    found = [p for p in sorted(folder.glob("*tokenizer.bin")) if p.is_file() and _first_int(p) == TOKENIZER_MAGIC]
    if len(found) > 1:
        raise ConversionError(f"{folder}: {len(found)} llm.c tokenizer files ({', '.join(p.name for p in found[:3])}); "
                              f"keep one, or name the model's {TOKENIZER_FILE}")
    return found[0] if found else None


def gpt2_token_records(vocab: Vocab) -> tuple[int, str]:
    """(length, sha256) of the token records train_gpt2.py writes after the header for the vocabulary, kept in the
    vocabulary's cache: building them takes 0.4 s, matching a file against them a millisecond."""
    def build() -> str:
        body = tokenizer_bytes(vocab)[HEADER_INTS * 4:]
        return json.dumps({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})

    facts = json.loads(vocab.derived("llmc-token-records.json", build))
    return facts["bytes"], facts["sha256"]


def check_tokenizer(path: Path, vocab: Vocab) -> None:
    """A one-line error unless the file holds the vocabulary's tokens, as train_gpt2.py's `write_tokenizer` writes
    them (version 2) or its first version did (no EOT id). Reads no more than that file is long."""
    head = HEADER_INTS * 4
    size, digest = gpt2_token_records(vocab)
    try:
        with open(path, "rb") as f:
            got = f.read(head + size + 1)
    except OSError as e:
        raise ConversionError(f"{path}: cannot read the tokenizer file ({e.strerror})") from None
    if len(got) < head:
        raise ConversionError(f"{path}: {len(got)} bytes, shorter than llm.c's {head}-byte tokenizer header")
    magic, version, count, eot = struct.unpack("<4i", got[:16])
    if magic != TOKENIZER_MAGIC or version not in TOKENIZER_VERSIONS:
        raise ConversionError(f"{path}: magic {magic} version {version} is not an llm.c tokenizer file "
                              f"({TOKENIZER_MAGIC}, version 1 or 2)")
    n = vocab.n_tokens
    if count != n or (version == 2 and eot != vocab.eot_id):
        raise ConversionError(f"{path}: {count:,} tokens, EOT id {eot if version == 2 else 'unsaid'}; GPT-2 has "
                              f"{n:,} tokens and EOT id {vocab.eot_id} (gpt2hub reads llm.c files of GPT-2's "
                              "vocabulary only)")
    if len(got) == head + size and hashlib.sha256(got[head:]).hexdigest() == digest:
        return
    want, at = tokenizer_bytes(vocab), head  # it differs: say where
    for i in range(n):
        k = want[at] + 1
        if got[at:at + k] != want[at:at + k]:
            mine = got[at + 1:at + 1 + got[at]] if at < len(got) else b""
            raise ConversionError(f"{path}: token {i} is {mine[:24]!r}, GPT-2's is {want[at + 1:at + k][:24]!r} "
                                  "(gpt2hub reads llm.c files of GPT-2's vocabulary only)")
        at += k
    raise ConversionError(f"{path}: bytes after GPT-2's {n:,} tokens (not a tokenizer file train_gpt2.py writes)")


def recorded_fields(folder: Path) -> dict[str, str]:
    """The model's own values of the fields gpt2hub's llm.c writer computed at GPT-2's value, as it records them
    beside the model (APPROXIMATED_FILE, "activation gelu_exact" lines); {} where there is no such file."""
    path = folder / APPROXIMATED_FILE
    if not path.is_file():
        return {}
    if path.stat().st_size > 4096:
        raise ConversionError(f"{path}: {path.stat().st_size:,} bytes; gpt2hub writes a line per field")
    fields = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.strip().partition(" ")
        if key and key not in FORMAT.approximates:
            raise ConversionError(f"{path}: names {key[:40]!r}, not a field llm.c files approximate "
                                  f"({', '.join(sorted(FORMAT.approximates))})")
        if key:
            fields[key] = value.strip()
    return fields


class LlmcCheckpoint:
    """An llm.c model file as converters read a source (see gpt2hub.source_kinds): `.entries` {OpenAI's variable
    name: SourceTensor}, `.data_paths` ([the file]), `.index_path`, `.hparams`, `.vocab`, `.notes`."""

    def __init__(self, path: Path | str, options: OpenOptions = OpenOptions()):
        self.path = self.index_path = Path(path)
        header = read_header(self.path)  # one line for a short file, another magic, or a version but 3 and 5
        self.hparams = header_hparams(self.path, header)
        self.notes: list[str] = []
        recorded = recorded_fields(self.path.parent)
        if recorded:
            marker = str(self.path.parent / APPROXIMATED_FILE)
            self.hparams = HParams.from_dict({**self.hparams.to_dict(), **recorded}, marker)
            self.notes.append(f"{', '.join(f'{k} {v}' for k, v in recorded.items())}: the model's own, from "
                              f"{APPROXIMATED_FILE} (gpt2hub wrote this llm.c file computing GPT-2's value instead)")
        if header[3] != N_TOKENS:
            raise ConversionError(f"{self.path}: header vocab_size {header[3]:,}; llm.c's layout and tokenizer file "
                                  f"(no merges) hold GPT-2's {N_TOKENS:,} tokens, the only vocabulary gpt2hub reads "
                                  "from llm.c")
        self.data_paths = [self.path]
        self.entries = model_entries(self.path, header, self.hparams)
        self.hparams_from = f"header of {self.path.name}"
        self.ignored: list[str] = []
        unused = [v for v in header[HEADER_FIELDS:] if v]
        if unused:
            self.notes.append(f"{self.path.name}: {len(unused)} of header ints {HEADER_FIELDS}-{HEADER_INTS - 1} "
                              "nonzero (train_gpt2.py writes 0 and llm.c reads none of them)")
        self.vocab = self._vocab(options)

    def _vocab(self, options: OpenOptions) -> Vocab:
        """GPT-2's encoder.json + vocab.bpe, after checking the tokenizer file beside the model (if any) is GPT-2's."""
        tokenizer = find_tokenizer(self.path.parent)
        need = f"{self.path}: an llm.c checkpoint, whose tokenizer file holds no merges"
        vocab, where = gpt2_vocab(options, need)
        if tokenizer is None:
            self.notes.append(f"tokenizer: no {TOKENIZER_FILE} beside {self.path.name}; {where}")
        else:
            check_tokenizer(tokenizer, vocab)
            self.notes.append(f"tokenizer: {tokenizer.name} matches GPT-2's {vocab.n_tokens:,} tokens; {where}")
        return vocab

    def close(self) -> None:
        pass

    def __enter__(self) -> "LlmcCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


SOURCE = SourceKind(name=KIND, rank=30, is_file=True, detect=is_llmc_model, open=LlmcCheckpoint,
                    accepts="an llm.c checkpoint file (gpt2_*.bin, magic 20240326, version 3 or 5)")
