"""sha256 of local files, remembered (in `<home>/.cache/`) with the size, mtime and ctime each had when hashed, and
trusted while all three are unchanged (as `aws s3 sync` trusts size and mtime; ctime also catches a write
whose mtime was set back, since no user call can set it). A memo is a cache: any doubt means hashing again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from . import atomic, store

MEMO = Path(".cache") / "sha256.json"  # under the home: {absolute path: [size, mtime_ns, ctime_ns, sha256]}
CHUNK = 16 << 20


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _memo() -> dict:
    try:
        memo = json.loads((store.home() / MEMO).read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def known(path: Path) -> str | None:
    """The sha256 remembered for `path`, if the file has not changed since; else None."""
    try:
        st = path.stat()
    except OSError:
        return None
    entry = _memo().get(str(path.absolute()))
    if isinstance(entry, list) and len(entry) == 4 and entry[:3] == _stamp(st) and isinstance(entry[3], str):
        return entry[3]
    return None


def remember(path: Path, sha256: str, before: os.stat_result | None = None) -> None:
    """Note `path`'s sha256 (hashed while it had the stat `before`, if given: a file changed meanwhile is not noted)."""
    try:
        st = path.stat()
        if before is not None and _stamp(before) != _stamp(st):
            return
        memo, where = _memo(), store.home() / MEMO
        memo = {p: e for p, e in memo.items() if os.path.exists(p)}  # forget files that are gone
        memo[str(path.absolute())] = [*_stamp(st), sha256]
        where.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(where, memo, indent=None, sort_keys=True, durable=False)
    except (OSError, atomic.UnsafeDestination):
        pass  # a memo that cannot be written costs a hash next time, nothing else


def sha256(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """The file's sha256: remembered if unchanged, else hashed (and remembered)."""
    found = known(path)
    if found is not None:
        return found
    before = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            if progress:
                progress(len(block))
    digest = h.hexdigest()
    remember(path, digest, before)
    return digest
