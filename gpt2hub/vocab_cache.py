"""Files derived from a vocabulary (tokenizer.json, the facts a config needs), kept under the sha256 of the
vocabulary's files in `<home>/.cache/vocab/`, so an identical vocabulary is parsed and serialized once.

Every cached file is checked against the sha256 recorded when it was written; one that differs, or any
failure to read or write the cache, means building it again: the cache can only save time.

`kept_files` is the other use: a vocabulary read from somewhere other than two files of its own (an HF
tokenizer.json, tiktoken's shared cache) is written out as encoder.json + vocab.bpe under the sha256 of their
bytes, in `<home>/.cache/vocab/files/`, never beside the user's files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from . import atomic, store

CACHE = Path(".cache") / "vocab"
INDEX = "index.json"  # file name -> sha256 of its text
FILES = "files"  # kept_files' folder under CACHE


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


def kept_files(contents: dict[str, bytes]) -> dict[str, Path]:
    """Files named by `contents` ({file name: bytes}) kept together under the sha256 of them all, reused when
    already there with the same bytes; in a private temporary folder (removed at exit) where the home is not
    writable. Returns {file name: path}."""
    h = hashlib.sha256()
    for name, data in sorted(contents.items()):
        h.update(hashlib.sha256(name.encode()).digest() + hashlib.sha256(data).digest())
    try:
        return _keep(store.home() / CACHE / FILES / h.hexdigest(), contents)
    except (OSError, atomic.UnsafeDestination):
        import atexit  # here, not at start-up: rarely needed
        import shutil
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="gpt2hub-vocab-"))
        atexit.register(shutil.rmtree, scratch, True)
        return _keep(scratch, contents)


def _keep(d: Path, contents: dict[str, bytes]) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in contents.items():
        path = d / name
        atomic.refuse_link(path)
        if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
            atomic.write_bytes(path, data, durable=False)  # a cache: rewritten whenever it differs
        paths[name] = path
    return paths
