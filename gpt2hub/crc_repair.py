"""A data file checked tensor by tensor against its index's CRC32Cs, and the tensors that fail fetched again.

The CRC32Cs are computed while the file downloads (`TensorCrcs`), so a good file is never read back; the
bytes of a tensor that fails are struck from the part's range record and fetched again, from the same
source, up to CRC_REPAIR_ROUNDS times. The index must tile the data file exactly and agree with the manifest.
"""

from __future__ import annotations

from pathlib import Path

from . import store
from .download import fetch
from .errors import ChecksumError, WrongFile
from .manifest import FileRecord
from .progress import bytes_counter
from .pull_plan import PullJob, index_record
from .ranges import RangeRecord
from .remote import Remote
from .sstable import crc32c, unmask_crc
from .tfcheckpoint import range_crc32c, read_index

CRC_REPAIR_ROUNDS = 3


def fetch_repairing(job: PullJob, f: FileRecord, remote: Remote, etag: str | None, part: Path, size: int,
                    spec: str) -> tuple[int, str | None]:
    """Make `part` hold the file from `remote`; a data file's failing tensors are fetched again.
    Returns the bytes fetched and the file's sha256 (None: not seen whole while it downloaded)."""
    fetched, seen = 0, None
    entries = read_entries(job) if ".data-" in f.name else None
    for attempt in range(CRC_REPAIR_ROUNDS + 1):
        crcs = TensorCrcs.of(entries)
        stats = fetch(remote, part, size, connections=job.connections, etag=etag, retry=job.retry,
                      span=job.span, progress=bytes_counter(job.progress, f.name), observe=crcs)
        fetched += stats.fetched
        seen = stats.sha256
        for note in stats.notes:
            job.warn(note)
        bad = bad_tensors(job, f, part, size, crcs.values if crcs is not None and seen else None)
        if not bad:
            break
        if attempt == CRC_REPAIR_ROUNDS:
            raise ChecksumError(f"{f.name}: {len(bad)} tensors ({', '.join(n for n, _, _ in bad[:3])}) still fail "
                                f"their CRC32C after {CRC_REPAIR_ROUNDS} refetches from {spec}; "
                                "the good bytes are kept")
        record = RangeRecord(part, size)
        for _, a, b in bad:
            record.remove(a, b)
        job.warn(f"{f.name}: {len(bad)} tensor(s) from {spec} failed their CRC32C "
                 f"({', '.join(n for n, _, _ in bad[:3])}); fetching those bytes again")
    return fetched, seen


def read_entries(job: PullJob) -> dict | None:
    """The tensors of the index on disk, by name (None: the release has no index, or it is not here yet)."""
    f = index_record(job.m)
    index = store.inside(job.dest, f.name) if f is not None else None
    return read_index(index)[1] if index is not None and index.is_file() else None


def bad_tensors(job: PullJob, f: FileRecord, data: Path, size: int,
                seen: dict[str, int] | None = None) -> list[tuple[str, int, int]]:
    """Tensors of the data file whose bytes fail the index's CRC32C: (name, start, end). `seen`: every
    tensor's CRC32C, computed while the file downloaded; else the file is read again."""
    if ".data-" not in f.name:
        return []
    entries = read_entries(job)
    if entries is None:
        return []
    check_layout(job, entries, size, f.name)
    # Chunked reads, not a map: mapped pages count in the resident set (6 GB at 1558M).
    return [(e.name, e.offset, e.offset + e.size) for e in entries.values()
            if (seen.get(e.name, 0) if seen is not None else range_crc32c(data, e.offset, e.size, e.name))
            != unmask_crc(e.crc32c)]


def check_layout(job: PullJob, entries: dict, size: int, data_name: str) -> None:
    """The index must describe exactly this data file, and the manifest's tensors where it lists them."""
    spans = sorted((e.offset, e.offset + e.size) for e in entries.values() if not e.sliced)
    if not spans or spans[-1][1] != size or any(a < b0 for (_, b0), (a, _) in zip(spans, spans[1:])):
        raise WrongFile(f"{data_name}: the index's tensors do not tile its {size:,} bytes")
    for t in job.m.tensors:
        e = entries.get(t["name"])
        if e is None or e.offset != t["offset"] or e.size != t["size"] or list(e.shape) != list(t["shape"]):
            raise WrongFile(f"model.ckpt.index: tensor {t['name']} differs from the manifest")


class TensorCrcs:
    """Every tensor's CRC32C, from the blocks of the data file the download hands over in file order."""

    def __init__(self, entries: dict):
        self.spans = sorted((e.offset, e.offset + e.size, e.name) for e in entries.values())
        self.values: dict[str, int] = {}
        self._next = 0  # the first span not yet complete

    @classmethod
    def of(cls, entries: dict | None) -> "TensorCrcs | None":
        """None where the index gives no tensors or they overlap (the layout check then refuses the file)."""
        if not entries or any(e.sliced for e in entries.values()):
            return None
        crcs = cls(entries)
        if any(b0 > a for (_, b0, _), (a, _, _) in zip(crcs.spans, crcs.spans[1:])):
            return None
        return crcs

    def __call__(self, offset: int, block: memoryview) -> None:
        end = offset + len(block)
        while self._next < len(self.spans):
            a, b, name = self.spans[self._next]
            if a >= end:
                return
            lo, hi = max(a, offset), min(b, end)
            if lo < hi:
                self.values[name] = crc32c(block[lo - offset:hi - offset], self.values.get(name, 0))
            if b > end:
                return
            self._next += 1
