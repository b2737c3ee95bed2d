"""Files derived from a vocabulary (tokenizer.json, the facts a config needs), kept under the sha256 of the
vocabulary's files in `<home>/.cache/vocab/`, so an identical vocabulary is parsed and serialized once.

Every cached file is checked against the sha256 recorded when it was written; one that differs, or any
failure to read or write the cache, means building it again: the cache can only save time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from . import atomic, store

CACHE = Path(".cache") / "vocab"
INDEX = "index.json"  # file name -> sha256 of its text


def key(paths: list[Path], salt: str) -> str:
    """The cache key of a vocabulary: its files' bytes and what builds from them (`salt`: name and version)."""
    h = hashlib.sha256(salt.encode())
    for p in paths:
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def folder(k: str) -> Path:
    return store.home() / CACHE / k


def cached(k: str, name: str) -> str | None:
    """The cached text, or None: not cached, unreadable, or not what was written."""
    try:
        want = json.loads((folder(k) / INDEX).read_text()).get(name)
        text = (folder(k) / name).read_text(encoding="utf-8")
    except (OSError, ValueError, AttributeError):
        return None
    return text if want == _sha(text) else None


def save(k: str, name: str, text: str) -> None:
    """Keep `text` (atomically); a cache that cannot be written is skipped."""
    d = folder(k)
    try:
        d.mkdir(parents=True, exist_ok=True)
        _write(d / name, text)
        try:
            index = json.loads((d / INDEX).read_text())
        except (OSError, ValueError):
            index = {}
        _write(d / INDEX, json.dumps({**(index if isinstance(index, dict) else {}), name: _sha(text)}))
    except (OSError, atomic.UnsafeDestination):
        pass


def cached_text(k: str, name: str, build: Callable[[], str]) -> str:
    """The cached text of `name`, built (and kept) on a miss."""
    found = cached(k, name)
    if found is None:
        found = build()
        save(k, name, found)
    return found


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write(path: Path, text: str) -> None:
    atomic.write_text(path, text, durable=False)  # a cache: after a power cut it is rebuilt, never read torn
