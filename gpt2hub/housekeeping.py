"""The store's disk use, and removing conversions or whole releases from it (`gpt2hub du`, `gpt2hub rm`).

Only what gpt2hub wrote is ever removed: a release's format outputs (found by name and place; a header is read
only to pick a --dtype, and one that cannot be read is removed as damaged), the original's files named by its
manifest with their pull leftovers (`.part`, range records, the verified record), the temp files of writes whose
process is gone, and the locks.
Nothing is followed through a symbolic link (gpt2hub makes none in the store): a link where a removal
would go refuses the whole removal, and anything else found in a release folder is kept and reported.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from . import registry, store
from .errors import Gpt2hubError, StoreError, UnknownRelease
from . import settings
from .settings import CONVERT_LOCK

LOCK_NAME = settings.PULL_LOCK
LOCKS = (LOCK_NAME, CONVERT_LOCK)
# A temp file of one of gpt2hub's writes, named for the file it becomes and the writer's pid: atomic.py's
# `.NAME.tmp-PID-RANDOM` (also convert's outputs, their `.f32` side file and --force's swap), and older
# versions' `.NAME.tmp-PID` (`.f32`), `.NAME.old-PID` and `.NAME.PID.tmp`.
TEMP = re.compile(r"\.(?P<name>.+?)\.(?:(?:tmp|old)-(?P<pid>\d+)(?:-[^/]+|\.f32)?|(?P<old_pid>\d+)\.tmp)")
DAMAGED, LEFTOVER = "damaged", "leftover"  # Entry.note: why a file that is not a readable output is removed


@dataclass
class Entry:
    """One file or folder of the store and the bytes it takes on disk."""

    path: Path
    bytes: int
    format: str  # one of store.FORMATS, or "" for the release's own files (the pull lock)
    dtype: str | None = None  # read only to pick a --dtype
    note: str = ""  # DAMAGED (its dtype could not be read) or LEFTOVER (a temp file of a write that was stopped)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "bytes": self.bytes, "format": self.format, "dtype": self.dtype,
                "note": self.note}


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
            if p.name not in store.FORMATS and p.name not in LOCKS:
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

    locks = [FileLock(str(folder / name)) for name in LOCKS]
    try:
        if not dry_run:
            for lock, what in zip(locks, ("pull", "convert")):
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    raise StoreError(f"{release}: a {what} of it is running; try again when it is done") from None
        plan, kept = _plan(release, folder, chosen, dtype)
        if not dry_run:
            for e in plan:
                _delete(e.path)
            for fmt in chosen:
                _rmdir_if_empty(folder / fmt)
            if everything:
                for name in LOCKS:  # held by us: nobody waits on a release being removed
                    (folder / name).unlink(missing_ok=True)
                _rmdir_if_empty(folder)
        return Removal(release, plan, kept, dry_run)
    finally:
        for lock in reversed(locks):
            if lock.is_locked:
                lock.release()


def _plan(release: str, folder: Path, formats: list[str], dtype: str | None) -> tuple[list[Entry], list[Path]]:
    from . import converters

    plan: list[Entry] = []
    kept: list[Path] = []
    ours: set[Path] = set()  # temp files of gpt2hub's writes: removed when their writer is gone, else left alone
    top = sorted(folder.iterdir())
    for fmt in formats:  # a folder format's temp output is a sibling of its folder: `.safetensors.tmp-PID`
        if fmt != "original" and converters.get(fmt).writes_folder:
            plan += _leftovers(top, fmt, ours, {fmt})
    for fmt in formats:
        d = folder / fmt
        if not d.exists() and not d.is_symlink():
            continue
        _refuse_link(d, f"the {fmt} folder")
        if fmt == "original":
            owned = _original_files(release)
            inside = sorted(d.iterdir())
            plan += _leftovers(inside, fmt, ours, owned | {store.VERIFIED_RECORD})
            for p in inside:
                if _ours_in_original(p.name, owned):
                    _refuse_links_below(p)
                    plan.append(Entry(p, on_disk(p), fmt))
                elif p not in ours:
                    kept.append(p)
            continue
        outputs = _outputs(release, fmt)
        for out in outputs:
            _refuse_links_below(out)
            if dtype is None:
                plan.append(Entry(out, on_disk(out), fmt))
                continue
            out_dtype = _dtype(fmt, out)
            if out_dtype is None or out_dtype == dtype:
                plan.append(Entry(out, on_disk(out), fmt, out_dtype, "" if out_dtype else DAMAGED))
        if d.is_dir() and d not in outputs:
            inside = sorted(d.iterdir())
            plan += _leftovers(inside, fmt, ours, suffix=converters.get(fmt).file_suffix)
            kept += [p for p in inside if p not in outputs and p not in ours]
    if set(formats) == set(store.FORMATS):
        kept += [p for p in top if p.name not in store.FORMATS and p.name not in LOCKS and p not in ours]
    return plan, kept


def _leftovers(paths: list[Path], fmt: str, ours: set[Path], names: set[str] | frozenset[str] = frozenset(),
               suffix: str | None = None) -> list[Entry]:
    """The temp files among `paths` of gpt2hub's writes of `names` (or, in a file format's folder, of any file
    with its `suffix`), added to `ours`; those whose writer is gone are returned, to remove."""
    found = []
    for p in paths:
        m = TEMP.fullmatch(p.name)
        if m is None or not (m["name"] in names or suffix is not None and m["name"].endswith(suffix)):
            continue
        ours.add(p)
        if not _running(int(m["pid"] or m["old_pid"])):
            _refuse_links_below(p)
            found.append(Entry(p, on_disk(p), fmt, note=LEFTOVER))
    return found


def _running(pid: int) -> bool:
    """Whether a process with this id exists (another user's counts: it cannot be signalled, but it is there)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):
        return False
    return True


def _outputs(release: str, fmt: str) -> list[Path]:
    """The finished outputs of one format in the store: where convert puts them, and only those."""
    from .release import Release

    home_release = Release(release, store.release_dir(release), True, None)
    return [p for p in home_release.output_paths(fmt) if p.exists() or p.is_symlink()]


def _dtype(fmt: str, out: Path) -> str | None:
    """The weight type a conversion on disk stores, as its format reads it; None where it cannot be read (damaged).
    A missing package (ImportError) is not damage, and is raised."""
    from . import converters

    try:
        return converters.get(fmt).read_dtype(out)
    except (Gpt2hubError, OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


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
