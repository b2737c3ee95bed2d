"""Where releases live on disk: `<home>/<name>/<format>/`, and what state each is in."""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import converters
from .errors import Gpt2hubError

HOME_ENV = "GPT2HUB_HOME"
FORMATS = ("original", *converters.names())  # the original checkpoint, then the registry's formats
VERIFIED_RECORD = ".gpt2hub-verified.json"  # written by pull once every file checked out
PARTIAL_SUFFIX = ".part"


def home() -> Path:
    """$GPT2HUB_HOME, else the user's cache folder (`$XDG_CACHE_HOME` or `~/.cache`) + `/gpt2hub`."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "gpt2hub"


def release_dir(name: str, fmt: str = "original") -> Path:
    """The folder of one format of one release (it may not exist yet)."""
    if fmt not in FORMATS:
        raise Gpt2hubError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    return home() / name / fmt


def read_verified(name: str) -> dict | None:
    """The record pull left after verifying a release, or None."""
    return read_record(release_dir(name))


def read_record(folder: Path) -> dict | None:
    """The record pull left in a folder it verified (the store's original/ or a `pull --to` folder), or None."""
    path = folder / VERIFIED_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_verified(name: str, record: dict) -> Path:
    return write_record(release_dir(name), record)


def write_record(folder: Path, record: dict) -> Path:
    path = folder / VERIFIED_RECORD
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def original_state(name: str) -> str:
    """'verified' (every recorded file present at its recorded size), 'partial' or 'absent'."""
    return folder_state(release_dir(name))


def folder_state(folder: Path) -> str:
    """original_state of any folder pull writes to; a record of some files only (`pull --only`) is 'partial'."""
    record = read_record(folder)
    if record is not None and not record.get("partial"):
        files = record.get("files")
        if isinstance(files, dict) and files and all(
                isinstance(info, dict) and _size(folder / f) == info.get("size") for f, info in files.items()):
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
    """A release's registry facts and local state, as `gpt2hub list` shows them."""
    return {
        "name": manifest.name,
        "aliases": list(manifest.aliases),
        "parameters": manifest.parameters,
        "download_size": manifest.download_size,
        "download_size_known": manifest.download_size_known,
        "state": original_state(manifest.name),
        "formats": converted_formats(manifest.name),
        "path": str(home() / manifest.name),
    }
