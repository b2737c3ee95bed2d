"""Fetch one file into `<name>.part` over parallel byte ranges, resumably.

Resume state is the part's range record (`ranges.RangeRecord`): the byte spans already on disk.
A span is recorded only after its bytes are written and flushed (fdatasync), so an interruption
of any kind (Ctrl-C, kill -9, a reboot) never costs a finished span; only the spans in flight are
fetched again. The file's sha256 is computed meanwhile, over the written prefix (flushed or not):
ranges are handed out in file order and shrink toward the end, so the connections work side by
side and little is left to hash, or to flush, when the last byte arrives. Verification and the
rename to the final name belong to the caller.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import settings
from .errors import DiskFull, DownloadError, RangeIgnored, TooSlow, TransferError
from .ranges import MAX_RANGE, RECORD_SUFFIX, RangeRecord, merge, plan_ranges
from .remote import CHUNK, Remote
from .retry import RetryPolicy, SpeedCheck

HASH_BLOCK = 8 << 20
FLUSH_BYTES, FLUSH_EVERY = 8 << 20, 0.05  # the committer flushes this much new data, looking this often (s)
STEAL_MIN = 1 << 20  # an idle connection takes half of a running range that has twice this left...
STEAL_AFTER = 0.5  # ...and this many seconds to go at its pace (a new request costs a round trip or two)


@dataclass
class FetchStats:
    fetched: int = 0  # bytes received this time
    ranges: int = 0
    single_stream: bool = False
    notes: list[str] = field(default_factory=list)
    sha256: str | None = None  # of the whole file, when it completed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, n: int) -> None:
        with self._lock:
            self.fetched += n


class _Abort(Exception):
    """Another worker failed or the user interrupted: stop quietly."""


def fetch(remote: Remote, part: Path, size: int, *, connections: int = settings.CONNECTIONS,
          etag: str | None = None, retry: RetryPolicy = RetryPolicy(), span: int | None = None,
          progress: Callable[[int], None] | None = None,
          observe: Callable[[int, memoryview], None] | None = None) -> FetchStats:
    """Make `part` hold all `size` bytes of `remote`, fetching only what its range record lacks.

    `observe(offset, block)` sees every byte of the file once, in order, as the sha256 does (the block is
    only valid during the call); only when `stats.sha256` is set did it see them all."""
    record = RangeRecord(part, size)
    if not record.done:
        record.delete()  # the record goes before the part: a record never outlives the file it describes
        part.unlink(missing_ok=True)  # bytes without a record are of unknown provenance
    stats = FetchStats()
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    record.bind(fd)
    written = _Written(record)
    hasher = _PrefixHasher(fd, written, observe)
    try:
        if os.fstat(fd).st_size != size:
            try:
                os.ftruncate(fd, size)  # sparse; free space was checked by the caller
            except OSError as e:
                raise DownloadError(f"{part.name}: cannot make room for {size:,} bytes ({e.strerror})") from None
        hasher.start()
        work = plan_ranges(record.missing(), connections, span)
        try:
            if work:
                _parallel(remote, fd, work, record, written, connections, etag, retry, progress, stats)
        except RangeIgnored:
            stats.single_stream = True
            stats.notes.append(f"{remote.url}: server ignores Range; fetched as one stream")
            _single_stream(remote, fd, record, written, retry, progress, stats)
        if record.missing():  # never wait for a hasher whose prefix cannot complete
            raise DownloadError(f"{part.name}: {size - record.done_bytes:,} bytes still missing after the transfer")
        stats.sha256 = hasher.result()
        return stats
    finally:
        hasher.stop()
        os.close(fd)


class _Written:
    """The spans of the part file that hold their final bytes: the record's, and every block written since,
    flushed or not. Bytes are never written twice in one fetch, so what the hasher read stays true."""

    def __init__(self, record: RangeRecord):
        self.size = record.size
        self.spans = [list(s) for s in record.done]
        self.total = 0  # bytes added
        self.changed = threading.Condition()

    @property
    def prefix(self) -> int:
        return self.spans[0][1] if self.spans and self.spans[0][0] == 0 else 0

    def add(self, start: int, end: int) -> None:
        with self.changed:
            before = self.prefix
            self.spans = merge(self.spans + [[start, end]])
            self.total += end - start
            if self.prefix > before:
                self.changed.notify_all()


def _pread_into(fd: int, buf: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buf], offset)
    block = os.pread(fd, len(buf), offset)  # macOS before 11
    buf[:len(block)] = block
    return len(block)


class _PrefixHasher(threading.Thread):
    """sha256 of the file's written prefix, read back (from the page cache) while later ranges still arrive."""

    def __init__(self, fd: int, written: _Written, observe: Callable[[int, memoryview], None] | None = None):
        super().__init__(daemon=True)
        self.fd, self.written, self.observe = fd, written, observe
        self.sha = hashlib.sha256()
        self.pos = 0
        self._halt = False

    def run(self) -> None:
        try:
            self._hash()
        except Exception:  # noqa: BLE001 - the caller hashes the finished file instead (result() is None)
            self._halt = True

    def _hash(self) -> None:
        size = self.written.size
        view = memoryview(bytearray(HASH_BLOCK))  # one buffer, reused: a fresh 8 MiB each read costs page faults
        while self.pos < size:
            with self.written.changed:
                while not self._halt and self.written.prefix <= self.pos:
                    self.written.changed.wait(0.5)
                if self._halt:
                    return
                end = self.written.prefix
            while self.pos < end and not self._halt:
                n = _pread_into(self.fd, view[:min(len(view), end - self.pos)], self.pos)
                if not n:
                    return
                self.sha.update(view[:n])
                if self.observe is not None:
                    self.observe(self.pos, view[:n])
                self.pos += n

    def result(self) -> str | None:
        self.join()
        return self.sha.hexdigest() if self.pos == self.written.size else None

    def stop(self) -> None:
        with self.written.changed:
            self._halt = True
            self.written.changed.notify_all()
        if self.is_alive():
            self.join()


def _write_block(fd: int, block: bytes, offset: int, part_name: str) -> None:
    try:
        view = memoryview(block)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"{part_name}: disk full; the bytes downloaded so far are kept, "
                           "free some space and pull again to resume") from None
        raise DownloadError(f"{part_name}: cannot write ({e.strerror})") from None


class _Committer(threading.Thread):
    """Flushes written spans to disk and then records them, off the workers' path (a sync takes a while).

    Between finished spans it also flushes whatever FLUSH_BYTES or more were written since its last sync,
    so the disk writes while bytes arrive and the last sync, which the pull waits for, has little left.
    If it fails (EIO on the sync, no space for the record) it keeps the error and sets `stop`: the pull ends
    with that error instead of waiting for spans that will never be recorded.
    """

    def __init__(self, fd: int, record: RangeRecord, written: _Written, stop: threading.Event):
        super().__init__(daemon=True)
        self.fd, self.record, self.written, self.stop = fd, record, written, stop
        self.spans: queue.SimpleQueue = queue.SimpleQueue()
        self.error: DownloadError | None = None

    def __call__(self, start: int, end: int) -> None:
        self.spans.put((start, end))

    def run(self) -> None:
        synced = 0  # self.written.total when the last sync began
        while True:
            try:
                batch = [self.spans.get(timeout=FLUSH_EVERY)]
            except queue.Empty:
                batch = []
            while not self.spans.empty():
                batch.append(self.spans.get())
            spans = [s for s in batch if s is not None]
            if self.error is None and (spans or self.written.total - synced >= FLUSH_BYTES):
                try:
                    synced = self.written.total
                    os.fdatasync(self.fd)
                    for a, b in spans:
                        self.record.add(a, b)
                except Exception as e:  # noqa: BLE001 - any failure here must end the pull, not hang it
                    why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
                    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)  # no other source helps
                    self.error = (DiskFull if full else DownloadError)(
                        f"{self.record.part}: cannot record finished bytes ({why}); the spans recorded so far are kept")
                    self.stop.set()
            if None in batch:
                return

    def finish(self) -> None:
        self.spans.put(None)
        self.join()


class _Slot:
    """A range being fetched; `end` may shrink while it runs, when an idle connection takes its far half."""

    __slots__ = ("start", "pos", "end", "t0")

    def __init__(self, start: int, end: int):
        self.start = self.pos = start
        self.end = end
        self.t0 = time.monotonic()

    def seconds_left(self, now: float) -> float:
        done = self.pos - self.start
        return math.inf if done <= 0 else (self.end - self.pos) * (now - self.t0) / done


def _fetch_range(remote: Remote, fd: int, slot: _Slot, lock: threading.Lock, commit: Callable[[int, int], None],
                 written: _Written, etag: str | None, retry: RetryPolicy, progress, stats: FetchStats,
                 stop: threading.Event, part_name: str) -> None:
    """One range, retried with backoff; progress within it is recorded before each retry."""
    failures = 0
    while slot.pos < slot.end:
        if stop.is_set():
            raise _Abort
        began = slot.pos
        speed = SpeedCheck(remote.url, retry)
        stream = remote.read(slot.pos, slot.end, etag=etag)
        try:
            for block in stream:
                if stop.is_set():
                    raise _Abort
                speed.add(len(block))
                with lock:
                    room = slot.end - slot.pos
                if len(block) > room:
                    block = block[:room]  # the rest of the reply now belongs to another connection
                _write_block(fd, block, slot.pos, part_name)
                written.add(slot.pos, slot.pos + len(block))
                with lock:
                    slot.pos += len(block)
                stats.count(len(block))
                if progress:
                    progress(len(block))
                if slot.pos >= slot.end:
                    break
        except RangeIgnored:
            raise
        except TransferError as e:
            if slot.pos > began:
                if not isinstance(e, TooSlow):
                    failures = 0  # bytes arrived at a useful rate: the source works, keep going
                commit(began, slot.pos)
            if not e.retryable:
                raise
            failures += 1
            if failures >= retry.attempts:
                raise TransferError(f"{e} ({failures} tries)", retryable=False) from None
            if stop.wait(retry.delay(failures, e.retry_after)):
                raise _Abort from None
        finally:
            stream.close()  # a reply cut short closes its connection
    commit(slot.start, slot.end)
    stats.ranges += 1


def _steal(active: list[_Slot], lock: threading.Lock) -> _Slot | None:
    """The far half of the range that will take longest, as aria2c splits a busy segment.

    Only where it is worth a new request: the range has 2 x STEAL_MIN left and, at its own pace,
    STEAL_AFTER seconds or more to go.
    """
    now = time.monotonic()
    with lock:
        victim = max((s for s in active if s.end - s.pos >= 2 * STEAL_MIN), key=lambda s: s.seconds_left(now),
                     default=None)
        if victim is None or victim.seconds_left(now) < STEAL_AFTER:
            return None
        # A block already being written never reaches past pos + CHUNK: split beyond it.
        mid = max(victim.pos + CHUNK, victim.pos + (victim.end - victim.pos) // 2)
        slot = _Slot(mid, victim.end)
        victim.end = mid
        active.append(slot)
        return slot


def _parallel(remote, fd, work, record, written, connections, etag, retry, progress, stats) -> None:
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for item in work:
        todo.put(item)
    stop = threading.Event()
    errors: list[BaseException] = []
    part_name = str(record.path.with_name(record.path.name.removesuffix(RECORD_SUFFIX)))  # errors name the full path
    lock = threading.Lock()
    active: list[_Slot] = []

    def worker() -> None:
        while not stop.is_set():
            try:
                a, b = todo.get_nowait()
                slot = _Slot(a, b)
                with lock:
                    active.append(slot)
            except queue.Empty:
                slot = _steal(active, lock)  # the tail: help the slowest range instead of idling
                if slot is None:
                    return
            try:
                _fetch_range(remote, fd, slot, lock, committer, written, etag, retry, progress, stats, stop, part_name)
            except _Abort:
                return
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                errors.append(e)
                stop.set()
                return
            finally:
                with lock:
                    active.remove(slot)

    # Daemon threads: a Ctrl-C in the main thread must not wait for a slow read to time out.
    committer = _Committer(fd, record, written, stop)
    committer.start()
    total = sum(b - a for a, b in work)
    threads = [threading.Thread(target=worker, daemon=True)
               for _ in range(min(connections, max(len(work), total // STEAL_MIN)))]
    _run_all(threads, stop, committer)
    if committer.error is not None:
        raise committer.error
    if errors:
        raise _one_line(next((e for e in errors if isinstance(e, RangeIgnored)), errors[0]), part_name)


def _run_all(threads: list[threading.Thread], stop: threading.Event, committer: _Committer) -> None:
    """Start the workers and wait for them; an interruption stops them all. The committer always finishes."""
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except BaseException:
        stop.set()
        raise
    finally:
        committer.finish()  # what was written is recorded, whatever happened


def _one_line(e: BaseException, part_name: str) -> BaseException:
    """A worker's failure as the pull reports it: transfer and gpt2hub errors as they are, anything else one line."""
    if isinstance(e, (TransferError, DownloadError)):
        return e
    why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
    return DownloadError(f"{part_name}: a download worker failed ({why})")


def _single_stream(remote, fd, record: RangeRecord, written: _Written, retry: RetryPolicy, progress,
                   stats: FetchStats) -> None:
    """The whole file in one unranged request, for servers that ignore Range; retried from the start, and
    the bytes a failed try already wrote are skipped, not written again (the hasher may have read them)."""
    failures = 0
    part_name = str(record.path.with_name(record.path.name.removesuffix(RECORD_SUFFIX)))  # errors name the full path
    have = 0  # bytes from the start already written by an earlier try
    while True:
        pos, mark = 0, 0
        speed = SpeedCheck(remote.url, retry)
        try:
            for block in remote.read(0, record.size, whole=True):
                speed.add(len(block))
                stats.count(len(block))
                skip = min(len(block), max(0, have - pos))
                if skip < len(block):
                    _write_block(fd, block[skip:], pos + skip, part_name)
                    written.add(pos + skip, pos + len(block))
                    if progress:
                        progress(len(block) - skip)
                pos += len(block)
                have = max(have, pos)
                if pos - mark >= MAX_RANGE:
                    os.fdatasync(fd)
                    record.add(mark, pos)
                    mark = pos
            os.fdatasync(fd)
            record.add(mark, pos)
            return
        except TransferError as e:
            failures += 1
            if not e.retryable or failures >= retry.attempts:
                raise
            time.sleep(retry.delay(failures, e.retry_after))
