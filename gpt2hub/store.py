"""Where releases live on disk: `<home>/<name>/<format>/`, and what state each is in."""

from __future__ import annotations

from pathlib import Path

from . import converters, settings
from .errors import Gpt2hubError
from .integrity import RECORD_NAME as VERIFIED_RECORD, Record, read_record

HOME_ENV = settings.HOME
FORMATS = ("original", *converters.names())  # the original checkpoint, then the registry's formats
PARTIAL_SUFFIX = ".part"


def home() -> Path:
    """$GPT2HUB_HOME, else the user's cache folder (`$XDG_CACHE_HOME` or `~/.cache`) + `/gpt2hub`.

    Resolved (absolute, links followed), so every command names a release's folders the same way.
    """
    if explicit := settings.value(HOME_ENV):
        return Path(explicit).expanduser().resolve()
    cache = settings.library(settings.XDG_CACHE_HOME) or Path.home() / ".cache"
    return (Path(cache).expanduser() / "gpt2hub").resolve()


def inside(root: Path, name: str) -> Path:
    """`root / name`, refused unless it resolves (links followed) to a path directly inside `root`."""
    path = root / name
    if path.resolve().parent != root.resolve():
        raise Gpt2hubError(f"{path}: resolves outside {root}; refusing to write there")
    return path


def release_dir(name: str, fmt: str = "original") -> Path:
    """The folder of one format of one release (it may not exist yet)."""
    if fmt not in FORMATS:
        raise Gpt2hubError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    return home() / name / fmt


def read_verified(name: str) -> Record | None:
    """The record pull left in a release's original folder, or None."""
    return read_record(release_dir(name))


def original_state(name: str) -> str:
    """'verified' (pulled: every recorded file present at its recorded size; see the record for what vouched
    for each), 'partial' or 'absent'."""
    return folder_state(release_dir(name))


def folder_state(folder: Path) -> str:
    """original_state of any folder pull writes to; a record of some files only (`pull --only`) is 'partial'."""
    record = read_record(folder)
    if record is not None and not record.partial and record.files and all(
            _size(folder / f) == info.size for f, info in record.files.items()):
        return "verified"
    if folder.is_dir() and any(p.name != VERIFIED_RECORD for p in folder.iterdir()):
        return "partial"
    return "absent"


def converted_formats(name: str) -> list[str]:
    """Formats other than the original that have a finished output folder."""
    return [f for f in FORMATS[1:] if _finished(release_dir(name, f))]


def _finished(folder: Path) -> bool:
    # Converters build their output under a temporary name and rename it into place,
    # so a folder at the final path with a visible file in it is complete.
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def status(manifest) -> dict:
    """A release's registry facts and local state, as `gpt2hub list` shows them (with, once pulled, what
    each file was checked against)."""
    record = read_verified(manifest.name) if original_state(manifest.name) == "verified" else None
    return {
        "name": manifest.name,
        "aliases": list(manifest.aliases),
        "parameters": manifest.parameters,
        "download_size": manifest.download_size,
        "download_size_known": manifest.download_size_known,
        "state": _shown_state(manifest.name),
        "formats": converted_formats(manifest.name),
        "path": str(home() / manifest.name),
        "checks": {n: f.check.value for n, f in sorted(record.files.items())} if record else {},
    }


def _shown_state(name: str) -> str:
    """'verified' only where every file was checked against something OpenAI published; 'pulled' where some
    rest on a mirror or on their size only (see `gpt2hub info NAME`)."""
    state = original_state(name)
    if state == "verified" and not read_verified(name).verified:
        return "pulled"
    return state
