"""The store's disk use, and removing conversions or whole releases from it (`gpt2hub du`, `gpt2hub rm`).

Only what gpt2hub wrote is ever removed: a release's format outputs, the original's files named by its
manifest with their pull leftovers (`.part`, range records, the verified record), and the pull lock.
Nothing is followed through a symbolic link (gpt2hub makes none in the store): a link where a removal
would go refuses the whole removal, and anything else found in a release folder is kept and reported.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from . import registry, store
from .errors import Gpt2hubError, UnknownRelease

LOCK_NAME = ".pull.lock"  # pulling.LOCK_NAME, without importing pulling (and requests) to read it


class StoreError(Gpt2hubError):
    """A removal that would touch something not gpt2hub's, or a release busy with a pull."""


@dataclass
class Entry:
    """One file or folder of the store and the bytes it takes on disk."""

    path: Path
    bytes: int
    format: str  # one of store.FORMATS, or "" for the release's own files (the pull lock)
    dtype: str | None = None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "bytes": self.bytes, "format": self.format, "dtype": self.dtype}


@dataclass
class Usage:
    """Bytes on disk of one release in the store, per format and per file."""

    name: str
    path: Path
    formats: dict[str, int]  # format -> bytes, every format present
    files: list[Entry]
    other: list[Entry] = field(default_factory=list)  # not gpt2hub's, counted apart

    @property
    def bytes(self) -> int:
        return sum(self.formats.values()) + sum(e.bytes for e in self.other)

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "bytes": self.bytes, "formats": self.formats,
                "files": [e.to_dict() for e in self.files], "other": [e.to_dict() for e in self.other]}


@dataclass
class Removal:
    """What `rm` removed (or, with dry_run, would remove) and what it left."""

    name: str
    removed: list[Entry]
    kept: list[Path]
    dry_run: bool

    @property
    def freed(self) -> int:
        return sum(e.bytes for e in self.removed)

    def to_dict(self) -> dict:
        return {"name": self.name, "dry_run": self.dry_run, "freed": self.freed,
                "removed": [e.to_dict() for e in self.removed], "kept": [str(p) for p in self.kept]}


# --- disk use ----------------------------------------------------------------------------------

def on_disk(path: Path) -> int:
    """Bytes allocated to a file, or to every file below a folder, never following a link (as `du -s`,
    less the folders' own blocks: those are freed or kept with the files, and would only add noise)."""
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_blocks * 512
    try:
        children = list(os.scandir(path))
    except OSError:
        return 0
    return sum(on_disk(Path(c.path)) for c in children)


def usage(name: str) -> Usage:
    """Disk use of a release in the store (by name or alias; a folder of the store with no manifest too)."""
    folder = _release_folder(name)
    files, formats, other = [], {}, []
    for fmt in store.FORMATS:
        d = folder / fmt
        if not d.is_dir() or d.is_symlink():
            continue
        for p in sorted(_walk(d)):
            files.append(Entry(p, on_disk(p), fmt))
        formats[fmt] = sum(e.bytes for e in files if e.format == fmt)
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.name not in store.FORMATS and p.name != LOCK_NAME:
                other.append(Entry(p, on_disk(p), ""))
    return Usage(folder.name, folder, formats, files, other)


def usages(name: str | None = None) -> list[Usage]:
    """Disk use of one release, or of every release folder in the store."""
    if name is not None:
        return [usage(name)]
    home = store.home()
    if not home.is_dir():
        return []
    return [usage(p.name) for p in sorted(home.iterdir())
            if p.is_dir() and not p.is_symlink() and p.name != "manifests" and not p.name.startswith(".")]


def release_bytes(name: str) -> int:
    """Bytes on disk under `<home>/<name>/` (0 when nothing is there), for `gpt2hub list`."""
    folder = store.home() / name
    return on_disk(folder) if folder.is_dir() and not folder.is_symlink() else 0


def _walk(folder: Path):
    """Every file below a folder, links included as entries but never followed."""
    for root, dirs, names in os.walk(folder):
        for n in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            yield Path(root) / n


def _release_folder(name: str) -> Path:
    try:
        return store.home() / registry.resolve(name).name
    except UnknownRelease:
        folder = store.home() / name
        if _plain_name(name) and folder.is_dir():
            return folder
        raise


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..", "manifests") and "/" not in name and os.sep not in name


# --- removal -----------------------------------------------------------------------------------

def remove(name: str, formats: list[str] | tuple[str, ...] | None = None, dtype: str | None = None,
           everything: bool = False, dry_run: bool = False) -> Removal:
    """Remove a release's conversions (default: all of them, keeping the original), the given formats, or
    with `everything` the whole release; `dtype` narrows to outputs of that weight type. `dry_run` removes nothing."""
    folder = _release_folder(name)
    release = folder.name
    if formats and everything:
        raise StoreError("--all removes every format; give it or --format, not both")
    chosen = list(store.FORMATS) if everything else list(formats or store.FORMATS[1:])
    for fmt in chosen:
        if fmt not in store.FORMATS:
            raise StoreError(f"unknown format {fmt!r}; formats: {', '.join(store.FORMATS)}")
    if dtype is not None and ("original" in chosen and formats):
        raise StoreError("--dtype picks conversions; the original has no dtype to pick")
    _refuse_link(folder, "the release folder")
    if not folder.exists():
        return Removal(release, [], [], dry_run)

    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / LOCK_NAME))
    if not dry_run:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise StoreError(f"{release}: a pull of it is running; try again when it is done") from None
    try:
        plan, kept = _plan(release, folder, chosen, dtype)
        if not dry_run:
            for e in plan:
                _delete(e.path)
            for fmt in chosen:
                _rmdir_if_empty(folder / fmt)
            if everything:
                (folder / LOCK_NAME).unlink(missing_ok=True)  # held by us: nobody waits on a release being removed
                _rmdir_if_empty(folder)
        return Removal(release, plan, kept, dry_run)
    finally:
        if lock.is_locked:
            lock.release()


def _plan(release: str, folder: Path, formats: list[str], dtype: str | None) -> tuple[list[Entry], list[Path]]:
    plan: list[Entry] = []
    kept: list[Path] = []
    for fmt in formats:
        d = folder / fmt
        if not d.exists() and not d.is_symlink():
            continue
        _refuse_link(d, f"the {fmt} folder")
        if fmt == "original":
            owned = _original_files(release)
            for p in sorted(d.iterdir()):
                if _ours_in_original(p.name, owned):
                    _refuse_links_below(p)
                    plan.append(Entry(p, on_disk(p), fmt))
                else:
                    kept.append(p)
            continue
        outputs = _outputs(release, fmt)
        for out in outputs:
            _refuse_links_below(out)
            out_dtype = _dtype(fmt, out)
            if dtype is None or out_dtype == dtype:
                plan.append(Entry(out, on_disk(out), fmt, out_dtype))
        if d.is_dir() and d not in outputs:
            kept += [p for p in sorted(d.iterdir()) if p not in outputs]
    if set(formats) == set(store.FORMATS):
        kept += [p for p in sorted(folder.iterdir()) if p.name not in store.FORMATS and p.name != LOCK_NAME]
    return plan, kept


def _outputs(release: str, fmt: str) -> list[Path]:
    """The finished outputs of one format in the store: where convert puts them, and only those."""
    from .release import Release

    home_release = Release(release, store.release_dir(release), True, None)
    return [p for p in home_release.output_paths(fmt) if p.exists() or p.is_symlink()]


def _dtype(fmt: str, out: Path) -> str | None:
    """The weight type a conversion on disk stores, as its format reads it."""
    from . import converters

    return converters.get(fmt).read_dtype(out)


def _original_files(release: str) -> set[str]:
    try:
        return {f.name for f in registry.resolve(release).files}
    except UnknownRelease:
        return set(registry.OPENAI_FILES)


def _ours_in_original(name: str, owned: set[str]) -> bool:
    """A release file, what a pull of one leaves (.part, range record, temporaries) or the verified record."""
    if name == store.VERIFIED_RECORD or name.startswith(store.VERIFIED_RECORD + "."):
        return True
    base = name.split(store.PARTIAL_SUFFIX)[0] if store.PARTIAL_SUFFIX in name else name
    return base in owned


def _refuse_link(path: Path, what: str) -> None:
    if path.is_symlink():
        raise StoreError(f"{path}: {what} is a symbolic link (gpt2hub makes none); not removing anything through it")


def _refuse_links_below(path: Path) -> None:
    _refuse_link(path, "this")
    if path.is_dir():
        for p in _walk(path):
            _refuse_link(p, "an entry of a conversion")


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
