"""Output formats behind one interface: each module is a name table plus a loop that streams tensors.

A converter reads a `Source` (an open TF checkpoint, its hparams, its vocabulary) and writes one
output (a folder or a file) in bounded memory: tensors go from the memory map to the output one
row-chunk at a time, so peak memory is a few chunks whatever the model size.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, TypeVar

import numpy as np

from gpt2hub.errors import CheckpointError, ConversionError
from gpt2hub.layout import SCOPE, HParams, tensor_shapes
from gpt2hub.tfcheckpoint import Checkpoint, TensorEntry

FORMATS = ("safetensors", "pytorch", "gguf", "llmc", "onnx")
ENDOFTEXT = "<|endoftext|>"
CHUNK_BYTES = 32 << 20  # source bytes per conversion step: bounds the working set
Progress = Callable[[int], None]
T, R = TypeVar("T"), TypeVar("R")


# --- the interface ----------------------------------------------------------------------------

class WriteFn(Protocol):
    def __call__(self, source: "Source", out: Path, dtype: str, progress: Progress) -> list[str] | None:
        """Write the output; may return lines worth telling the user (e.g. which tensor got which type)."""


@dataclass(frozen=True)
class Converter:
    """One output format: its dtypes, whether it writes a folder or a file, and its writer."""

    name: str
    dtypes: tuple[str, ...]
    default_dtype: str
    writes_folder: bool
    write: WriteFn
    requires: str | None = None  # the import the writer needs, and the extra that installs it
    extra: str | None = None


def get(fmt: str) -> Converter:
    """The converter of a format, imported on demand (so torch/gguf load only when used)."""
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    return importlib.import_module(f"{__name__}.{fmt}").CONVERTER


# --- what converters read ---------------------------------------------------------------------

@dataclass(frozen=True)
class Vocab:
    """The BPE vocabulary of a release: tokens by id (byte-level unicode), merges, <|endoftext|>."""

    tokens: list[str]
    merges: list[str]  # "a b" pairs, in rank order
    eot_id: int
    encoder_json: Path
    vocab_bpe: Path

    @classmethod
    def from_folder(cls, folder: Path) -> "Vocab":
        encoder_json, vocab_bpe = folder / "encoder.json", folder / "vocab.bpe"
        for p in (encoder_json, vocab_bpe):
            if not p.is_file():
                raise ConversionError(f"{p}: no such file (the tokenizer needs encoder.json and vocab.bpe)")
        try:
            encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ConversionError(f"{encoder_json}: not valid JSON ({e})") from None
        if not isinstance(encoder, dict) or sorted(encoder.values()) != list(range(len(encoder))):
            raise ConversionError(f"{encoder_json}: ids are not 0..{len(encoder) - 1} (not a GPT-2 encoder)")
        if ENDOFTEXT not in encoder:
            raise ConversionError(f"{encoder_json}: no {ENDOFTEXT} token")
        tokens = sorted(encoder, key=encoder.__getitem__)
        lines = vocab_bpe.read_text(encoding="utf-8").split("\n")
        merges = [line for line in lines[1 if lines[0].startswith("#version") else 0:] if line]
        if any(len(m.split(" ")) != 2 for m in merges):
            raise ConversionError(f"{vocab_bpe}: a merge line is not two symbols separated by a space")
        return cls(tokens, merges, encoder[ENDOFTEXT], encoder_json, vocab_bpe)


@dataclass
class Source:
    """An open checkpoint and what is known about it; converters only read from it."""

    ckpt: Checkpoint
    hparams: HParams
    vocab: Vocab
    release: str
    version: str
    data_sha256: list[str] | None = None  # per data shard, from the verified record or manifest
    untie: bool = False
    max_shard_bytes: int | None = None  # pytorch only: None means the format's default

    def entries(self) -> list[TensorEntry]:
        """Every model tensor, in data-file order (so the source is read sequentially)."""
        names = tensor_shapes(self.hparams)
        return sorted((self.ckpt.entries[n] for n in names), key=lambda e: (e.shard_id, e.offset))


# --- names and shapes as tables ----------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """How one TF variable appears in a format: its name ("{i}" = layer), layout and dtype policy."""

    name: str
    transpose: bool = False  # Conv1D (in, out) -> nn.Linear/ggml (out, in)
    keep_f32: bool = False  # norms, biases, position embeddings: never narrowed


@dataclass(frozen=True)
class Planned:
    """One tensor as a format will write it."""

    entry: TensorEntry
    name: str
    rule: Rule
    shape: tuple[int, ...]  # the shape as written (after squeeze and transpose)


def plan(source: Source, global_rules: dict[str, Rule], block_rules: dict[str, Rule]) -> list[Planned]:
    """Every model tensor of the source, renamed and reshaped by a format's tables, in data order."""
    out = []
    for e in source.entries():
        rest = e.name[len(SCOPE):]
        if rest in global_rules:
            rule = global_rules[rest]
            name = rule.name
        else:
            layer, _, key = rest.partition("/")
            rule = block_rules[key]
            name = rule.name.format(i=int(layer[1:]))
        shape = matrix_shape(e.shape)
        out.append(Planned(e, name, rule, shape[::-1] if rule.transpose else shape))
    return out


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Conv1D weights are stored [1, in, out]; every format writes them as (in, out) matrices."""
    return shape[1:] if len(shape) == 3 and shape[0] == 1 else shape


# --- reading a tensor in bounded pieces ---------------------------------------------------------
# Reads go through read(2), not the checkpoint's memory map: mapped pages a process has touched
# count in its resident set, so streaming a 6 GB file through a map would "use" 6 GB.

def read_bytes(f, offset: int, size: int, what: str) -> np.ndarray:
    """`size` bytes at `offset` of an open data file, into a fresh buffer."""
    buf = np.empty(size, np.uint8)
    f.seek(offset)
    if f.readinto(buf) != size:
        raise CheckpointError(f"{f.name}: {what} ends early (the data file shrank or is truncated)")
    return buf


def row_chunks(source: Source, p: Planned, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """The tensor in its output layout, as float32 blocks of whole output rows (maybe strided views)."""
    e = p.entry
    shape = matrix_shape(e.shape)
    with open(source.ckpt.data_paths[e.shard_id], "rb") as f:
        if len(shape) == 1 or p.rule.transpose:
            # Vectors, and Conv1D weights (at most 4 n_embd^2 floats: 41 MB for GPT-2 XL), are read whole;
            # a transposed output row is an input column, so it needs every input row.
            a = read_bytes(f, e.offset, e.size, e.name).view("<f4").reshape(shape)
            if len(shape) == 1:
                yield a
                return
            a = a.T  # a strided view: the dtype cast that follows also does the transposing copy
            rows = max(1, chunk_bytes // (a.shape[1] * 4))
            for r in range(0, a.shape[0], rows):
                yield a[r:r + rows]
            return
        row_bytes = shape[1] * 4
        rows = max(1, chunk_bytes // row_bytes)
        for r in range(0, shape[0], rows):
            n = min(rows, shape[0] - r)
            yield read_bytes(f, e.offset + r * row_bytes, n * row_bytes, e.name).view("<f4").reshape(n, shape[1])


# --- dtypes -------------------------------------------------------------------------------------

def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounded to nearest even as torch and ggml do; NaN stays NaN."""
    u = np.array(x, dtype=np.float32, order="C").view(np.uint32)  # a fresh copy, rounded in place
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    if nan.any():
        u[nan] = (u[nan] & 0xFFFF0000) | 0x00400000
    del nan
    bump = u >> 16
    bump &= 1
    bump += 0x7FFF
    u += bump
    del bump
    u >>= 16
    return u.astype(np.uint16)


# Each returns a new C-contiguous array (one pass over a strided input).
CASTS: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray]]] = {
    "f32": (4, np.ascontiguousarray),
    "f16": (2, lambda x: x.astype(np.float16, order="C")),
    "bf16": (2, to_bf16),
}


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


# --- doing two things at once ------------------------------------------------------------------
# hashlib, copy_file_range, file I/O and numpy's casts release the GIL, so threads overlap them.

def pipelined(fn: Callable[[T], R], items: Iterable[T], workers: int = 0) -> Iterator[R]:
    """fn over items on a thread pool, results in order, at most `workers` + 1 items in flight."""
    workers = workers or min(4, os.cpu_count() or 1)
    if workers == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class BackgroundSha256:
    """sha256 of each data shard, computed on a thread while the converter writes; stops on close()."""

    def __init__(self, paths: list[Path]):
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(1)
        self._future = self._pool.submit(lambda: [self._hash(p) for p in paths])

    def _hash(self, path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while (block := f.read(CHUNK_BYTES)) and not self._stop.is_set():
                h.update(block)
        return h.hexdigest()

    def result(self) -> list[str]:
        return self._future.result()

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)
