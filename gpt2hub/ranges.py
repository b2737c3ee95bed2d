"""Which bytes of a `<name>.part` file are done, and which ranges to ask for next.

Resume state is `<name>.part.ranges.json`: the file's size, the part's identity and the byte spans
already on disk; `plan_ranges` cuts what is missing into requests, in file order.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from .atomic import write_json

RECORD_SUFFIX = ".ranges.json"
MIN_RANGE = 2 << 20  # the last ranges: the connections end together, and this much per connection is left to hash
MAX_RANGE = 64 << 20
# A range is the bytes not yet handed out / (GUIDED x connections) (guided self-scheduling): long requests
# first, short ones at the end, so a slow connection leaves only a short tail.
GUIDED = 2


def plan_ranges(gaps: list[tuple[int, int]], connections: int, span: int | None = None) -> list[tuple[int, int]]:
    """The gaps cut into ranges, in file order: `span` bytes each, or shrinking from MAX_RANGE to MIN_RANGE."""
    left = sum(b - a for a, b in gaps)
    connections = max(1, connections)
    floor = min(MIN_RANGE, max(1 << 20, -(-left // connections)))  # a small file still spreads over the connections
    out = []
    for a, b in gaps:
        while a < b:
            step = span or max(floor, min(MAX_RANGE, left // (GUIDED * connections)))
            end = min(b, a + step)
            out.append((a, end))
            left -= end - a
            a = end
    return out


def merge(spans: list[list[int]]) -> list[list[int]]:
    """Spans sorted, with those that touch or overlap joined."""
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        elif a < b:
            out.append([a, b])
    return out


MAX_RECORD_BYTES = 1 << 20


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino]


class RangeRecord:
    """The spans of a `.part` file known to hold the right bytes, saved atomically after each change.

    The record names its part by device and inode: it counts only while that very file is there at full
    size, so a part deleted or replaced behind gpt2hub's back (or a record outliving its part) resumes nothing.
    """

    def __init__(self, part: Path, size: int):
        self.part, self.path, self.size = part, record_path(part), size
        self.done: list[list[int]] = []
        self.identity: list[int] | None = None
        self._lock = threading.Lock()
        try:
            if self.path.stat().st_size > MAX_RECORD_BYTES:
                raise ValueError("oversized")
            data = json.loads(self.path.read_text())
            st = os.stat(part)
            if data.get("size") == size and st.st_size == size and data.get("part") == _identity(st):
                self.identity = _identity(st)
                self.done = merge([[int(a), int(b)] for a, b in data["done"] if 0 <= a < b <= size])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            pass

    def bind(self, fd: int) -> None:
        """Name the open part file this record describes (a fresh part starts with nothing done)."""
        identity = _identity(os.fstat(fd))
        if identity != self.identity:
            with self._lock:
                self.identity, self.done = identity, []

    @property
    def done_bytes(self) -> int:
        return sum(b - a for a, b in self.done)

    def missing(self) -> list[tuple[int, int]]:
        gaps, pos = [], 0
        for a, b in self.done:
            if a > pos:
                gaps.append((pos, a))
            pos = b
        if pos < self.size:
            gaps.append((pos, self.size))
        return gaps

    @property
    def prefix(self) -> int:
        """How many bytes from the start are done."""
        return self.done[0][1] if self.done and self.done[0][0] == 0 else 0

    def add(self, start: int, end: int) -> None:
        with self._lock:
            self.done = merge(self.done + [[start, end]])
            self._save()

    def remove(self, start: int, end: int) -> None:
        with self._lock:
            keep = []
            for a, b in self.done:
                keep += [[a, min(b, start)], [max(a, end), b]]
            self.done = merge([s for s in keep if s[0] < s[1]])
            self._save()

    def _save(self) -> None:
        # No fsync: the record names only bytes already flushed, so a power cut that loses its latest version
        # (or empties it) costs a refetch of those bytes, never a wrong byte; the fsync cost a disk flush per save.
        write_json(self.path, {"size": self.size, "part": self.identity, "done": self.done}, indent=None,
                   durable=False)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


def record_path(part: Path) -> Path:
    """The range record of a part file."""
    return part.with_name(part.name + RECORD_SUFFIX)
