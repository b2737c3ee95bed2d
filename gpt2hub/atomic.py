"""Writing a final file whole or not at all: a private temp file in the destination folder, then a rename.

The temp file is created exclusively (`mkstemp`: O_CREAT|O_EXCL, mode 0600, a random name), so nothing
planted in a shared folder can redirect the write, and a symlink at the final name is refused rather
than followed or replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import UnsafeDestination


def temp_name_prefix(path: Path) -> str:
    """The prefix of every temp file for `path`: `.NAME.tmp-PID-` (the pid lets `rm` tell leftovers from live writes)."""
    return f".{path.name}.tmp-{os.getpid()}-"


def refuse_link(path: Path) -> None:
    """Raise UnsafeDestination if `path` exists as a symlink or anything but a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise UnsafeDestination(f"{path}: is {kind}; refusing to write through it")


@contextlib.contextmanager
def writing(path: Path | str, *, durable: bool = True, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Open a private temp file beside `path`; on a clean exit fsync it (if `durable`) and rename it onto `path`."""
    import tempfile  # here, not at start-up: it costs every command a few ms of imports

    path = Path(path)
    refuse_link(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_name_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode & ~_umask())
        refuse_link(path)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(path: Path | str, data: bytes, *, durable: bool = True) -> Path:
    """Write `data` to `path` atomically."""
    with writing(path, durable=durable) as f:
        f.write(data)
    return Path(path)


def write_text(path: Path | str, text: str, *, durable: bool = True) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_json(path: Path | str, obj: object, *, indent: int | None = 1, sort_keys: bool = False,
               durable: bool = True) -> Path:
    """Write `obj` as JSON to `path` so that a reader sees the old file or the new one, never a torn one."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n", durable=durable)


def _umask() -> int:
    # os.umask can only be read by setting it; done once, at first use.
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None
