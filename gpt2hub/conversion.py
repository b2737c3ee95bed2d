"""Convert a GPT-2 checkpoint (a pulled release, a TF checkpoint folder or a Hugging Face GPT-2 folder) to every format.

The driver: find the input, settle the hparams against the tensor shapes, refuse what cannot be
written before writing anything, then let one converter stream the tensors into a temporary name
next to the output and rename it into place only when it is complete.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import atomic, converters, encodings, hashes, source_kinds, store, tfcheckpoint, vocabulary
from .settings import CONVERT_LOCK
from .version import __version__
from .printing import size_text
from .progress import ProgressEvent, Reporter, bytes_counter, emit
from .release import Release, locate
from .errors import ConversionError
from .layout import HParams, check_shapes, infer_hparams, is_model_tensor
from .tfcheckpoint import DTYPES, Checkpoint


@dataclass
class ConversionReport:
    """What a conversion read and wrote."""

    path: Path
    format: str
    dtype: str
    release: str
    source: Path
    tensors: int
    bytes_read: int
    hparams: dict
    hparams_from: str  # "hparams.json", "--hparams FILE", "manifest", "inferred from shapes" or "config.json"
    ignored: list[str] = field(default_factory=list)  # non-model variables: optimizer slots, step counters, HF buffers
    notes: list[str] = field(default_factory=list)  # what the converter reports, e.g. llama.cpp's tensor types
    seconds: float = 0.0
    source_kind: str = tfcheckpoint.KIND  # a gpt2hub.source_kinds name: "tf" is OpenAI's layout

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"], d["source"] = str(self.path), str(self.source)
        return d


def convert(name_or_dir: str | Path | None = None, to: str | None = None, dtype: str | None = None,
            out: Path | str | None = None, force: bool = False, *, untie: bool = False,
            hparams: Path | str | None = None, manifest: Path | str | None = None, progress: Reporter | None = None,
            max_shard_bytes: int | None = None, from_: str | None = None,
            vocab: Path | str | None = None, allow_approximate_activation: bool = False) -> ConversionReport:
    """Convert a release (a name, a folder, or the one pulled) to `to`; nothing is written on a bad input (see gpt2hub.convert)."""
    started = time.perf_counter()
    to = to or converters.DEFAULT
    converter = converters.get(to)
    dtype = dtype or converter.default_dtype
    if dtype not in converter.dtypes:
        raise ConversionError(f"{to} has no dtype {dtype!r}; choose one of {', '.join(converter.dtypes)}")
    if converter.requires and importlib.util.find_spec(converter.requires) is None:
        raise ConversionError(f"--to {to} needs the {converter.requires} package: pip install 'gpt2hub[{converter.extra}]'")
    if untie and not converter.untie:
        untied = " and ".join(f.name for f in converters.formats() if f.untie)
        raise ConversionError(f"--untie applies to {untied} only ({to} ties the head to wte)")

    found = locate(name_or_dir, manifest, error=ConversionError, kinds=None, from_=from_)
    from .original import open_options

    options = open_options(found, vocab)  # --vocab, else GPT-2's vocabulary import stored beside a one-file checkpoint
    with _holding_lock(found, progress):
        return _convert(found, converter, dtype, out, force, untie, hparams, progress, max_shard_bytes, started, options,
                        allow_approximate_activation)


def _convert(found: Release, converter: converters.Format, dtype: str, out: Path | str | None, force: bool, untie: bool,
             hparams: Path | str | None, progress: Reporter | None, max_shard_bytes: int | None,
             started: float, options: source_kinds.OpenOptions, allow_approximate: bool = False) -> ConversionReport:
    to = converter.name
    folder, release, m = found.original, found.name, found.manifest
    kind = source_kinds.get(found.kind)
    source_notes: list[str] = []
    if kind.open is not None:
        ckpt = kind.open(folder, options)  # names, shapes, dtypes and every config field checked
        if hparams is not None:
            ckpt.close()
            raise ConversionError(f"--hparams applies to TF checkpoints; {folder}'s hparams come from its "
                                  f"{ckpt.hparams_from}")
        h, hparams_from, vocab, ignored = ckpt.hparams, ckpt.hparams_from, ckpt.vocab, sorted(ckpt.ignored)
        source_notes = list(ckpt.notes)
        model = {n: e.shape for n, e in ckpt.entries.items()}
    else:
        ckpt = Checkpoint(folder)
        model = {n: e.shape for n, e in ckpt.entries.items() if is_model_tensor(n)}
        ignored = sorted(n for n in ckpt.entries if not is_model_tensor(n))
        h, hparams_from = _hparams(folder, hparams, m, model)
        vocab = None
    check_shapes(h, model, str(ckpt.index_path))
    for name in model:
        e = ckpt.entries[name]
        if e.sliced or DTYPES.get(e.dtype_code % 100) != DTYPES[1]:
            raise ConversionError(f"{ckpt.index_path}: {name} is {'sliced' if e.sliced else e.dtype_name}; "
                                  "only whole float32 tensors can be converted")
    vocab = vocab or vocabulary.Vocab.from_folder(folder)
    try:  # every field the target cannot hold is refused here, before anything is written
        approximated = converters.check_holds(converter, h, vocab, allow_approximate)
    except ConversionError:
        ckpt.close()
        raise
    computed = converters.computed_hparams(h, approximated)
    source_notes += [f"approximated: {k} {getattr(h, k)} computed as GPT-2's {getattr(computed, k)} "
                     f"({converter.cannot_hold[k]}); verify measures the gap" for k in approximated]
    source = converters.ConvertInput(ckpt=ckpt, hparams=h, vocab=vocab,
                                     release=release, version=__version__, data_sha256=_known_sha256(ckpt),
                                     untie=untie, max_shard_bytes=max_shard_bytes, source_kind=found.kind,
                                     source_note="; ".join(source_notes), approximated=tuple(approximated))

    final = _output_path(out, converter, dtype, release, found.beside)
    _check_replaceable(final, converter, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(final)
    total = sum(converters.f32_size(ckpt.entries[n]) for n in model) + \
        (converters.f32_size(ckpt.entries["model/wte"]) if untie else 0)
    stats = [p.stat() for p in ckpt.data_paths]  # a hash measured while converting is remembered only if unchanged
    try:
        _check_free_space(final, output_bytes(total, dtype), f"{to} {dtype}")
        if converter.writes_folder:
            tmp.mkdir()
        task = f"{to} {dtype}"
        emit(progress, ProgressEvent.begin(task, total))
        try:
            notes = source_notes + (converter.write(source, tmp, dtype, bytes_counter(progress, task)) or [])
        finally:
            emit(progress, ProgressEvent.end(task))
        _install(tmp, final)
        for path, st, digest in zip(ckpt.data_paths, stats, source.hashed or []):
            hashes.remember(path, digest, st)  # the next convert of these bytes need not hash them again
    except OSError as e:
        _remove(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ConversionError(f"{final}: no space left on the device ({e.strerror}) while writing {to} {dtype}; "
                                  "nothing was left behind") from None
        raise
    except BaseException:
        _remove(tmp)
        raise
    finally:
        ckpt.close()
    return ConversionReport(path=final, format=to, dtype=dtype, release=release, source=folder, tensors=len(model),
                            bytes_read=total, hparams=h.to_dict(), hparams_from=hparams_from, ignored=ignored,
                            notes=notes, seconds=time.perf_counter() - started, source_kind=found.kind)


def output_bytes(f32_bytes: int, dtype: str) -> int:
    """The least a conversion to `dtype` writes: the weights' float32 bytes at the dtype's bytes per value (a llama.cpp
    mix, not one encoding, is made from a float32 file written beside the output first: its f32 bytes)."""
    encoding = dtype.upper()
    if not encodings.is_known(encoding):
        return f32_bytes
    block = encodings.block_size(encoding)
    return f32_bytes * encodings.row_bytes(encoding, block) // (4 * block)


def _check_free_space(final: Path, need: int, what: str) -> None:
    """Refuse, before a byte is written, an output the filesystem it goes to has no room for."""
    free = shutil.disk_usage(final.parent).free
    if need > free:
        raise ConversionError(f"{final}: not enough free space for {what}: needs at least {size_text(need)} "
                              f"({need:,} bytes), {size_text(free)} ({free:,} bytes) free")


def output_path(release: str, fmt: str, dtype: str) -> Path:
    """Where a release's conversion lives in the store: <home>/<release>/<fmt>/, or the dtype's file in it."""
    return converters.get(fmt).output_in(store.release_dir(release, fmt), release, dtype)


def _hparams(folder: Path, given: Path | str | None, m, shapes: dict) -> tuple[HParams, str]:
    if given is not None:
        return HParams.from_file(Path(given)), f"--hparams {given}"
    if (folder / "hparams.json").is_file():
        return HParams.from_file(folder / "hparams.json"), "hparams.json"
    if m is not None:
        return m.hparams, f"manifest {m.name}"
    return infer_hparams(shapes), "inferred from shapes (n_head = n_embd / 64)"


def _known_sha256(ckpt) -> list[str] | None:
    """Data-file sha256s hashed before (by pull or mirror) with the file's size, mtime and ctime unchanged
    since; None means hash while converting. A manifest's or record's hash vouches for no bytes on disk now."""
    known = [hashes.known(path) for path in ckpt.data_paths]
    return None if None in known else known  # type: ignore[return-value]


@contextlib.contextmanager
def _holding_lock(found: Release, progress: Reporter | None):
    """Hold the release's convert lock (a release in the store) while converting it: `rm` refuses meanwhile."""
    if not found.in_store:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(str(store.release_dir(found.name).parent / CONVERT_LOCK))
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        emit(progress, ProgressEvent.message(f"gpt2hub: another convert or rm of {found.name} is running; "
                                             "waiting for it"))
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _output_path(out: Path | str | None, fmt: converters.Format, dtype: str, release: str, folder: Path) -> Path:
    if out is not None:
        out = Path(out).expanduser().resolve()
        if not fmt.writes_folder and out.is_dir():  # a folder to put the file in
            return fmt.output_in(out, release, dtype)
        return out
    if folder == store.release_dir(release).resolve():
        return output_path(release, fmt.name, dtype)
    # A folder outside the store: write beside it, never into the store under a name it may not own.
    return fmt.output_beside(folder, dtype)


def _check_replaceable(final: Path, fmt: converters.Format, force: bool) -> None:
    """Refuse, before any work, an output that exists (without --force) or is not ours to replace."""
    if not final.exists():
        return
    if not force:
        raise ConversionError(f"{final}: already exists; pass --force to replace it")
    if not fmt.writes_folder and not final.is_file():
        raise ConversionError(f"{final}: exists and is not a file; not replacing it")
    # --force replaces a conversion of this format or an empty folder, never some other folder.
    if fmt.writes_folder and not (final.is_dir() and (fmt.is_output(final) or not any(final.iterdir()))):
        raise ConversionError(f"{final}: exists and is not a converted model folder; not replacing it")


def _temp_path(final: Path) -> Path:
    """A fresh name beside `final` in atomic.py's scheme (`.NAME.tmp-PID-RANDOM`), so `rm` knows a leftover."""
    return final.parent / (atomic.temp_name_prefix(final) + secrets.token_hex(4))


def _install(tmp: Path, final: Path) -> None:
    """Move a complete output into place; an old one (--force) is removed only after the swap."""
    if not final.exists():
        os.rename(tmp, final)
        return
    if tmp.is_file() and final.is_file():
        os.replace(tmp, final)
        return
    old = _temp_path(final)
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
