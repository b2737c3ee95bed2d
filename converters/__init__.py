"""Output formats: each module here declares one `Format`, and this package is their registry.

A format module is a name table plus a loop that streams tensors, and one `FORMAT = Format(...)`
saying everything else about it (dtypes, output names, consumer, read-back, tokenizer, Hub and card
facts). Modules are discovered, so adding a format is adding a module. A writer reads a `ConvertInput`
(an open TF checkpoint, its hparams, its vocabulary) and writes one output (a folder or a file) in
bounded memory: tensors go from the memory map to the output one row-chunk at a time, so peak
memory is a few chunks whatever the model size.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import pkgutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from gpt2hub import lazy, source_tensors
from gpt2hub.errors import CheckpointError, ConversionError
from gpt2hub.layout import HEAD_TENSOR, SCOPE, VARIANT_DEFAULTS, HParams, tensor_shapes
from gpt2hub.source_tensors import matrix_shape
from gpt2hub.stored import StoredOutput

if TYPE_CHECKING:  # types only: the vocabulary's cache lives in the store, which imports this registry
    from gpt2hub.tfcheckpoint import Checkpoint, TensorEntry
    from gpt2hub.vocabulary import Vocab

# Every command reads this registry (the store's format list); numpy loads only when a tensor is touched.
np = lazy.module("numpy")

DEFAULT = "safetensors"  # what `gpt2hub convert` writes when no format is named
CHUNK_BYTES = 32 << 20  # source bytes per conversion step: bounds the working set
PREFETCH_BYTES = 64 << 20  # a decoded tensor up to this size is read ahead whole (GPT-2 XL's largest matrix: 41 MB)
Progress = Callable[[int], None]


# --- the interface ----------------------------------------------------------------------------

class WriteFn(Protocol):
    def __call__(self, source: ConvertInput, out: Path, dtype: str, progress: Progress) -> list[str] | None:
        """Write the output; may return lines worth telling the user (e.g. which tensor got which type)."""


@dataclass(frozen=True)
class Weights:
    """A converted output read back: GPTConfig's fields and every parameter in gpt2hub's reference names.

    Parameters are named and laid out as converters/hf.py writes them (GPT2Model names, Conv1D weights
    (in, out)); values are numpy arrays or torch tensors in the dtype the file stores.
    """

    config: dict[str, Any]  # n_vocab, n_ctx, n_embd, n_head, n_layer, eps, activation, n_inner, tied, attn_scale_by_layer
    tensors: dict[str, Any]


@dataclass(frozen=True)
class TokenizerReader:
    """How verify reads the vocabulary a format carries, for tokenization parity with tiktoken."""

    name: str  # the program, as verify's table names it: "tokenizers", "llama.cpp"
    requires: str  # its import name; without it parity is not checked for this format
    file: Callable[[Path], Path | None]  # the file of an output that holds the vocabulary, None if it has none
    ids: Callable[[Path, str], list[int]]  # that file's token ids for a text (no BOS, no special tokens)


@dataclass(frozen=True)
class Format:
    """Everything gpt2hub knows about one output format; each module here declares one as `FORMAT`."""

    name: str  # --to NAME, and the store folder <home>/<release>/<name>/
    rank: int  # place in every list of formats (CLI choices, store, verify rows, mirror): lower first
    dtypes: tuple[str, ...]  # --dtype choices
    default_dtype: str
    write: WriteFn
    consumer: str  # the program people load it with, as verify names it: "transformers", "llama.cpp"
    is_output: Callable[[Path], bool]  # whether a path is a finished output of this format
    read_weights: Callable[[Path], Weights]  # an output read back (verify's fallback and gpt2hub.model.load)
    read_dtype: Callable[[Path], str]  # the dtype an output on disk stores its weights in
    looks_like: str  # how errors name an output: "an HF model folder", "a .gguf file"
    file_suffix: str | None = None  # one file per dtype, `<release>-<dtype><suffix>`; None: one folder
    tokenizer: TokenizerReader | None = None  # the vocabulary it carries, if any
    # verify's exact weight proofs: (output, release hparams, release vocabulary) -> every tensor as stored (encoding,
    # byte range) and the transform of its source it must be, plus metadata facts
    read_stored: Callable[[Path, HParams, Vocab], StoredOutput] | None = None
    requires: str | None = None  # the import the writer needs, and the extra that installs it
    extra: str | None = None
    untie: bool = False  # accepts --untie (write output.weight rather than tie the head to wte)
    demo_dtypes: tuple[str, ...] = ()  # what `gpt2hub demo` converts to
    hub_prefix: str = ""  # folder in a Hub repo
    hub_default: bool = False  # mirrored to hf:// when --formats is not given
    tags: tuple[str, ...] = ()  # model-card tags
    # Files beside the weights that are a function of the release alone: (source, folder, dtype) writes them
    side_files: Callable[[ConvertInput, Path, str], None] | None = None
    proof_reads: tuple[str, ...] = ()  # other files of an output that the exact weight proof parses and checks
    # What of a GPT-2-family model the format cannot express: a field of layout.VARIANT_DEFAULTS (or ADDED_TOKENS)
    # -> why; a model with any other value there is refused before anything is written. Fields not named: carried.
    cannot_hold: dict[str, str] = field(default_factory=dict, hash=False)
    approximates: frozenset[str] = frozenset()  # of those, what --allow-approximate-activation converts anyway

    @property
    def writes_folder(self) -> bool:
        return self.file_suffix is None

    def file_name(self, release: str, dtype: str) -> str:
        """The one place a single-file output is named: `<release>-<dtype><suffix>`."""
        return f"{release}-{dtype}{self.file_suffix}"

    def output_in(self, folder: Path, release: str, dtype: str) -> Path:
        """The output in a format folder (the store's <home>/<release>/<name>/, or --out DIR): it, or a file in it."""
        return folder if self.writes_folder else folder / self.file_name(release, dtype)

    def output_beside(self, original: Path, dtype: str) -> Path:
        """Where convert writes for a checkpoint folder DIR outside the store: DIR-<name>/ or DIR-<dtype><suffix>."""
        if self.writes_folder:
            return original.parent / f"{original.name}-{self.name}"
        return original.parent / self.file_name(original.name, dtype)

    def outputs_in(self, folder: Path) -> list[Path]:
        """The outputs a format folder may hold: the folder itself, or its files with the suffix."""
        return [folder] if self.writes_folder else sorted(folder.glob(f"*{self.file_suffix}"))

    def outputs_beside(self, original: Path) -> list[Path]:
        """Outputs beside DIR (DIR-<name>/, DIR-*<suffix>) and in a store-like release root (its <name>/)."""
        parent, stem = original.parent, original.name
        if self.writes_folder:
            return [parent / f"{stem}-{self.name}", parent / self.name]
        return sorted(set(parent.glob(f"{stem}-*{self.file_suffix}")) | set(self.outputs_in(parent / self.name)))


# --- the registry: every module in this package that declares FORMAT ---------------------------

@functools.cache
def _registry() -> dict[str, Format]:
    found: list[Format] = []
    for module in pkgutil.iter_modules(__path__):
        fmt = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FORMAT", None)
        if isinstance(fmt, Format):
            found.append(fmt)
    found.sort(key=lambda f: (f.rank, f.name))
    return {f.name: f for f in found}


def formats() -> list[Format]:
    """Every format, in rank order."""
    return list(_registry().values())


def names() -> tuple[str, ...]:
    return tuple(_registry())


def dtypes() -> tuple[str, ...]:
    """Every dtype some format writes, in first-seen order."""
    return tuple(dict.fromkeys(d for f in formats() for d in f.dtypes))


def get(fmt: str) -> Format:
    """A format by name; a one-line error for an unknown one."""
    try:
        return _registry()[fmt]
    except KeyError:
        raise ConversionError(f"unknown format {fmt!r}; formats: {', '.join(names())}") from None


def detect(path: Path) -> Format | None:
    """The format a path is a finished output of, or None."""
    return next((f for f in formats() if f.is_output(path)), None)


def expand(global_rules: dict[str, Rule], block_rules: dict[str, Rule], n_layer: int,
           head: Rule | None = None) -> dict[str, Rule]:
    """A format's tables for n_layer blocks: full TF variable name -> Rule with the layer filled in; `head`: the
    rule of an untied head (model/lm_head), for a model that has one."""
    rules = {SCOPE + k: r for k, r in global_rules.items()}
    if head is not None:
        rules[SCOPE + HEAD_TENSOR] = head
    for i in range(n_layer):
        rules.update({f"{SCOPE}h{i}/{k}": replace(r, name=r.name.format(i=i)) for k, r in block_rules.items()})
    return rules


# --- what converters read ---------------------------------------------------------------------

@dataclass
class ConvertInput:
    """An open checkpoint and what is known about it; converters read from it and note only `hashed`."""

    ckpt: Checkpoint
    hparams: HParams
    vocab: Vocab
    release: str
    version: str
    data_sha256: list[str] | None = None  # per data shard, hashed earlier with the file unchanged since
    hashed: list[str] | None = None  # per data shard, what a writer measured while converting (None: nothing)
    untie: bool = False
    max_shard_bytes: int | None = None  # pytorch only: None means the format's default
    source_kind: str = "tf"  # the source's kind (gpt2hub.source_kinds): "tf" is OpenAI's layout; others are read as one
    # Said in the output's metadata and report: e.g. "dequantized from Q4_K" (a GGUF source), "" when exact
    source_note: str = ""
    # Fields the output computes at GPT-2's value instead of the source's (--allow-approximate-activation):
    # the writer records them, so verify labels the output approximate and measures the gap
    approximated: tuple[str, ...] = ()

    def entries(self) -> list[TensorEntry]:
        """Every model tensor, in data-file order (so the source is read sequentially)."""
        names = tensor_shapes(self.hparams)
        return sorted((self.ckpt.entries[n] for n in names), key=lambda e: (e.shard_id, e.offset))


# --- what a format can hold -----------------------------------------------------------------

ADDED_TOKENS = "added_tokens"  # Format.cannot_hold's key for a vocabulary with tokens added after the BPE ones
APPROXIMATE_FLAG = "--allow-approximate-activation"


def _differences(h: HParams, vocab: Vocab | None) -> dict[str, str]:
    """Each way a model differs from OpenAI's GPT-2, by field, as an error names it: "n_inner 192"."""
    out = {k: f"{k} {v}" for k, v in h.variant().items()}
    added = getattr(vocab, "added", ()) if vocab is not None else ()
    if added:
        out[ADDED_TOKENS] = f"{len(added)} added token{'s' * (len(added) > 1)} ({added[0][1][:40]!r}{', ...' * (len(added) > 1)})"
    return out


def check_holds(fmt: Format, h: HParams, vocab: Vocab | None, allow_approximate: bool = False) -> list[str]:
    """Refuse (ConversionError, one line naming the field) a model the format cannot express; with
    allow_approximate, the fields it converts approximately are returned instead (e.g. ["activation"])."""
    approximated = []
    for key, said in _differences(h, vocab).items():
        if key not in fmt.cannot_hold:
            continue
        if key in fmt.approximates and allow_approximate:
            approximated.append(key)
            continue
        hint = f"; pass {APPROXIMATE_FLAG} to convert anyway" if key in fmt.approximates else ""
        raise ConversionError(f"--to {fmt.name} cannot hold {said} ({fmt.cannot_hold[key]}){hint}")
    return approximated


def computed_hparams(h: HParams, approximated: list[str] | tuple[str, ...]) -> HParams:
    """The model a target computes when it approximates these fields: each at GPT-2's value."""
    return replace(h, **{k: VARIANT_DEFAULTS[k] for k in approximated if k in VARIANT_DEFAULTS})


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


def plan(source: ConvertInput, global_rules: dict[str, Rule], block_rules: dict[str, Rule],
         head: Rule | None = None) -> list[Planned]:
    """Every model tensor of the source, renamed and reshaped by a format's tables (`head`: an untied head's
    rule), in data order."""
    out = []
    for e in source.entries():
        rest = e.name[len(SCOPE):]
        if rest == HEAD_TENSOR:
            if head is None:  # refused before writing (Format.cannot_hold); never dropped
                raise ConversionError(f"{e.name}: this format has no place for an untied head")
            rule, name = head, head.name
        elif rest in global_rules:
            rule = global_rules[rest]
            name = rule.name
        else:
            layer, _, key = rest.partition("/")
            rule = block_rules[key]
            name = rule.name.format(i=int(layer[1:]))
        shape = matrix_shape(e.shape)
        out.append(Planned(e, name, rule, shape[::-1] if rule.transpose else shape))
    return out


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


def copy_range(src, dst, offset: int, dst_pos: int, size: int, progress: Progress) -> None:
    """`size` bytes at `offset` of the open file `src` to `dst_pos` of the open file `dst`: copied by the kernel
    (copy_file_range, as cp does) without entering Python, else read and written a chunk at a time."""
    if _kernel_copy(src.fileno(), dst.fileno(), offset, dst_pos, size, progress):
        return
    os.lseek(dst.fileno(), dst_pos, os.SEEK_SET)
    for pos in range(offset, offset + size, CHUNK_BYTES):
        chunk = read_bytes(src, pos, min(CHUNK_BYTES, offset + size - pos), "data")
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst.fileno(), view):]
        progress(len(chunk))


def copy_runs(source: ConvertInput, entries: list[TensorEntry], f, progress: Progress) -> None:
    """f32 outputs in OpenAI's layout: the entries' float32 bytes, in the order given, from f's position on.
    Plain entries (source_tensors.is_plain) adjacent in the data file go as one copy (the kernel's where it can);
    any other is decoded: a matrix whole, on a thread while the one before it is written (reading and transposing
    overlap the writes), a larger tensor a row-chunk at a time."""
    runs: list[list] = []  # [shard, offset, size] of plain bytes, or [entry] to decode
    for e in entries:
        if not source_tensors.is_plain(e):
            runs.append([e])
        elif runs and len(runs[-1]) == 3 and runs[-1][0] == e.shard_id and runs[-1][1] + runs[-1][2] == e.offset:
            runs[-1][2] += e.size
        else:
            runs.append([e.shard_id, e.offset, e.size])
    ahead = iter([i for i, run in enumerate(runs) if len(run) == 1 and f32_size(run[0]) <= PREFETCH_BYTES])
    f.flush()
    dst_pos = f.tell()
    with ThreadPoolExecutor(1) as pool:
        def decode_next() -> tuple[int, Future] | None:  # one tensor decoded ahead at most: memory stays bounded
            i = next(ahead, None)
            return None if i is None else (i, pool.submit(source_tensors.read, source.ckpt.data_paths, runs[i][0]))

        pending = decode_next()
        for i, run in enumerate(runs):
            if len(run) == 1:
                f.seek(dst_pos)
                if pending is not None and pending[0] == i:
                    blocks = [pending[1].result()]
                    pending = decode_next()
                else:
                    blocks = source_tensors.rows(source.ckpt.data_paths, run[0], transpose=False)
                for block in blocks:
                    data = np.ascontiguousarray(block, "<f4")
                    f.write(memoryview(data).cast("B"))
                    progress(data.nbytes)
                f.flush()
                dst_pos = f.tell()
                continue
            shard, offset, size = run
            with open(source.ckpt.data_paths[shard], "rb") as src:
                copy_range(src, f, offset, dst_pos, size, progress)
                dst_pos += size
    f.seek(dst_pos)


def _kernel_copy(src: int, dst: int, src_pos: int, dst_pos: int, size: int, progress: Progress) -> bool:
    """copy_file_range in chunks (for the progress bar); False if this filesystem pair can't."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, min(CHUNK_BYTES * 2, size - done), src_pos + done, dst_pos + done)
        except OSError:
            if done:
                raise
            return False
        if n == 0:
            raise OSError(f"copy_file_range: source ended {size - done} bytes early")
        done += n
        progress(n)
    return True


def row_chunks(source: ConvertInput, p: Planned, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """The tensor in its output layout, as float32 blocks of whole output rows (maybe strided views)."""
    e = p.entry
    if not source_tensors.is_plain(e):
        yield from source_tensors.rows(source.ckpt.data_paths, e, p.rule.transpose, chunk_bytes)
        return
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


def f32_size(e: TensorEntry) -> int:
    """Bytes of the tensor as float32 in OpenAI's layout (what an f32 output holds of it)."""
    return 4 * math.prod(e.shape)


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
