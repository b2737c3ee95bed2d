"""Doing two things at once while converting: hashlib, copy_file_range, file I/O and numpy's casts release the
GIL, so threads overlap them."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

T, R = TypeVar("T"), TypeVar("R")


def pipelined(fn: Callable[[T], R], items: Iterable[T], workers: int = 0) -> Iterator[R]:
    """fn over items on a thread pool, results in order, at most `workers` + 1 items in flight."""
    workers = workers or min(4, os.cpu_count() or 1)
    if workers == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class BackgroundSha256:
    """sha256 of each of some files, computed on a thread while the converter writes; stops on close()."""

    def __init__(self, paths: list[Path], block_bytes: int):
        self._stop = threading.Event()
        self._block = block_bytes
        self._pool = ThreadPoolExecutor(1)
        self._future = self._pool.submit(lambda: [self._hash(p) for p in paths])

    def _hash(self, path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while (block := f.read(self._block)) and not self._stop.is_set():
                h.update(block)
        return h.hexdigest()

    def result(self) -> list[str]:
        return self._future.result()

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)
