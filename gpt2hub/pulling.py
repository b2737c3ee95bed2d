"""Pull a release into `<home>/<name>/original/`: every file fetched, verified, then renamed into place.

Sources are tried in order for each file (a failed one falls over to the next, continuing the same
`.part`), and each source under each of the release's folder names (124M, then 117M). Integrity:
a size or sha256 the manifest calls *published* must match, or the file is refused; an *expected*
one that differs is a warning. The data file is checked tensor by tensor against the index's
CRC32Cs, which also locates corrupted bytes so only those are fetched again; its sha256 is
recorded, labelled `published` when it matched a published one and `seen` otherwise.
(Named `pulling`, not `pull`, so importing it cannot shadow the function `gpt2hub.pull`.)
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import registry, store
from .progress import ProgressEvent, Reporter, bytes_counter, emit
from .download import DiskFull, RangeRecord, RetryPolicy, fetch, record_path
from .errors import CheckpointError, ChecksumError, DownloadError, UnknownRelease
from .registry import FileRecord, ReleaseManifest, sha256_file
from .sources import Source, TransferError, default_sources, open_source, user_sources
from .tfcheckpoint import crc32c, read_index, unmask_crc

LOCK_NAME = ".pull.lock"  # in <home>/<name>/, beside the format folders
INDEX_SUFFIX = ".index"
CRC_REPAIR_ROUNDS = 3
FREE_SPACE_MARGIN = 64 << 20
TOTAL_TASK = "total"  # the progress task every file's bytes also count toward


@dataclass
class FileResult:
    name: str
    size: int
    sha256: str
    sha256_status: str  # "published", "expected" (matched that figure) or "seen" (nothing to compare with)
    verified_by: str  # what vouches for the bytes: "sha256", "crc32c" (every tensor) or "size"
    source: str | None  # None: already here
    fetched: int = 0


@dataclass
class PullResult:
    name: str
    path: Path
    files: list[FileResult]
    seconds: float
    fetched: int
    sources: list[str]
    already: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "already_verified": self.already,
                "seconds": round(self.seconds, 3), "bytes": self.fetched, "sources": self.sources,
                "files": [asdict(f) for f in self.files], "warnings": self.warnings}


class _Bad(Exception):
    """The bytes a source gave are not the release's file: try the next source."""


def pull(name: str, *, manifest: Path | str | None = None, sources: list[str] | tuple[str, ...] = (),
         endpoint_url: str | None = None, connections: int = 8, verify: bool = False, force: bool = False,
         progress: Reporter | None = None, retry: RetryPolicy = RetryPolicy(), span: int | None = None) -> PullResult:
    """Fetch and verify every file of a release; a verified release is a quick no-op (see gpt2hub.pull)."""
    from filelock import FileLock, Timeout

    if connections < 1:
        raise DownloadError(f"--connections must be at least 1, not {connections}")
    for spec in user_sources(sources):
        try:
            open_source(spec, endpoint_url, connections)
        except ValueError as e:  # a typo in a source is the user's to fix, not a reason to try others
            raise DownloadError(str(e)) from None
    try:
        m = registry.resolve(name, manifest)
    except UnknownRelease:
        m = _manifest_from_sources(name, sources, endpoint_url)
    dest = store.release_dir(m.name)
    dest.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(dest.parent / LOCK_NAME))
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        emit(progress, ProgressEvent.message(f"gpt2hub: another pull of {m.name} is running; waiting for it"))
        lock.acquire()
    try:
        return _Pull(m, dest, sources, endpoint_url, connections, verify, force, progress, retry, span).run()
    finally:
        lock.release()


def _manifest_from_sources(name: str, sources, endpoint_url: str | None) -> ReleaseManifest:
    """A release unknown here, taken from the manifest a gpt2hub mirror publishes beside its files.

    Only the user's own sources are asked, and the manifest is saved to <home>/manifests/ so that
    convert, verify and list know the release afterwards.
    """
    for spec in user_sources(sources):
        where = f"{spec.rstrip('/')}/{name}/{registry.MIRROR_MANIFEST}"
        try:
            remote = open_source(spec, endpoint_url, 1).remote(name, registry.MIRROR_MANIFEST)
            size = remote.stat().size
            data = b"".join(remote.read(0, size, whole=True))
            found = ReleaseManifest.from_dict(json.loads(data), where)
        except (TransferError, ValueError, OSError):
            continue
        if name.lower() not in (n.lower() for n in found.names):
            raise UnknownRelease(f"{where} describes {found.name!r}, not {name!r}")
        return ReleaseManifest.from_file(registry.save_user_manifest(found))
    return registry.resolve(name)  # raises the usual error listing the known names


class _Pull:
    def __init__(self, m: ReleaseManifest, dest: Path, sources, endpoint_url, connections, verify, force, progress,
                 retry, span):
        self.m, self.dest = m, dest
        self.specs = default_sources(tuple(sources), m.sources)
        self.endpoint_url, self.connections = endpoint_url, connections
        self.verify, self.force, self.progress = verify, force, progress
        self.retry, self.span = retry, span
        self._sources: dict[str, Source] = {}
        self.warnings: list[str] = []
        self.used: list[str] = []
        self.t0 = time.monotonic()

    def warn(self, line: str) -> None:
        self.warnings.append(line)
        emit(self.progress, ProgressEvent.message(f"gpt2hub: warning: {line}"))

    def run(self) -> PullResult:
        if not self.force:
            done = self._already_verified()
            if done is not None:
                return PullResult(self.m.name, self.dest, done, time.monotonic() - self.t0, 0, [], already=True)
        here = self._check_free_space()
        emit(self.progress, ProgressEvent.begin(TOTAL_TASK, self.m.download_size if self.m.download_size_known else None, here))
        results = []
        try:
            # The index first: it vouches for the data file, tensor by tensor.
            for f in sorted(self.m.files, key=lambda f: (not f.name.endswith(INDEX_SUFFIX), ".data-" in f.name, f.name)):
                results.append(self._file(f))
        finally:
            emit(self.progress, ProgressEvent.end(TOTAL_TASK))
        store.write_verified(self.m.name, {
            "name": self.m.name,
            "manifest": str(self.m.path) if self.m.path else None,
            "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {r.name: {"size": r.size, "sha256": r.sha256, "sha256_status": r.sha256_status,
                               "verified_by": r.verified_by, "source": r.source} for r in results},
        })
        return PullResult(self.m.name, self.dest, results, time.monotonic() - self.t0,
                          sum(r.fetched for r in results), self.used, warnings=self.warnings)

    # --- a release already here --------------------------------------------------------------

    def _already_verified(self) -> list[FileResult] | None:
        if store.original_state(self.m.name) != "verified":
            return None
        record = store.read_verified(self.m.name) or {}
        files = record.get("files", {})
        if set(files) != {f.name for f in self.m.files}:
            return None
        out = []
        for f in self.m.files:
            info = files[f.name]
            if f.size is not None and f.status != "expected" and info["size"] != f.size:
                return None
            if self.verify:
                seen = sha256_file(self.dest / f.name)
                want = f.sha256 if f.sha256 and f.status != "expected" else info.get("sha256")
                if seen != want:
                    self.warn(f"{f.name}: sha256 {seen[:12]}… differs from {want[:12] if want else '?'}…; fetching it again")
                    return None
            out.append(FileResult(f.name, info["size"], info.get("sha256"), info.get("sha256_status", "seen"),
                                  info.get("verified_by", "size"), None))
        return out

    def _check_free_space(self) -> int:
        """Fail unless the bytes still to come fit on the disk; return how many are already here."""
        need = here = 0
        for f in self.m.files:
            if f.size is None:
                continue
            if not self.force and _size(self.dest / f.name) == f.size:
                here += f.size
                continue
            done = RangeRecord(record_path(self._part(f)), f.size).done_bytes
            need, here = need + f.size - done, here + done
        free = shutil.disk_usage(self.dest).free
        if need + FREE_SPACE_MARGIN > free:
            raise DownloadError(f"{self.dest}: not enough free space for {self.m.name}: "
                                f"{_gb(need)} to download, {_gb(free)} free")
        return here

    def _part(self, f: FileRecord) -> Path:
        return self.dest / (f.name + store.PARTIAL_SUFFIX)

    # --- one file ------------------------------------------------------------------------------

    def _file(self, f: FileRecord) -> FileResult:
        final = self.dest / f.name
        if not self.force and final.is_file():
            recorded = ((store.read_verified(self.m.name) or {}).get("files") or {}).get(f.name) or {}
            try:
                return self._check(f, final, None, 0, reuse=True, recorded=recorded.get("sha256"))
            except (_Bad, CheckpointError) as e:
                self.warn(f"{final.name}: the copy on disk does not verify ({e}); fetching it again")
        failures = []
        for spec in self.specs:
            try:
                return self._from_source(f, spec)
            except DiskFull:
                raise
            except (TransferError, DownloadError, _Bad, CheckpointError) as e:
                failures.append(f"{spec}: {_short(e, spec)}")
        raise DownloadError(f"{self.m.name}: {f.name}: no source could provide it ({'; '.join(failures)}); "
                            "bytes already downloaded are kept for the next pull")

    def _source(self, spec: str) -> Source:
        if spec not in self._sources:
            try:
                self._sources[spec] = open_source(spec, self.endpoint_url, self.connections)
            except ValueError as e:
                raise TransferError(str(e), retryable=False) from None
        return self._sources[spec]

    def _stat(self, remote):
        failures = 0
        while True:
            try:
                return remote.stat()
            except TransferError as e:
                failures += 1
                # A source that cannot even be reached gets two tries: the next one may be up.
                if not e.retryable or failures >= min(2, self.retry.attempts):
                    raise
                time.sleep(self.retry.delay(failures, e.retry_after))

    def _from_source(self, f: FileRecord, spec: str, retried: bool = False) -> FileResult:
        source = self._source(spec)
        missing = None
        for folder in self.m.folders:
            remote = source.remote(folder, f.name)
            try:
                st = self._stat(remote)
                break
            except TransferError as e:
                if not e.missing:
                    raise
                missing = e
        else:
            raise missing  # type: ignore[misc]
        size = st.size
        if f.size is not None and size != f.size:
            if f.status != "expected":
                raise _Bad(f"{remote.url} is {size:,} bytes; the manifest says {f.size:,} ({f.status})")
            self.warn(f"{f.name}: {remote.url} is {size:,} bytes, not the expected {f.size:,}; "
                      "integrity rests on the checks below")
        part = self._part(f)
        fetched = 0
        emit(self.progress, ProgressEvent.begin(f.name, size, RangeRecord(record_path(part), size).done_bytes, TOTAL_TASK))
        seen = None
        for attempt in range(CRC_REPAIR_ROUNDS + 1):
            stats = fetch(remote, part, size, connections=self.connections, etag=st.etag, retry=self.retry,
                          span=self.span, progress=bytes_counter(self.progress, f.name))
            fetched += stats.fetched
            seen = stats.sha256
            for note in stats.notes:
                self.warn(note)
            bad = self._bad_tensors(f, part, size)
            if not bad:
                break
            if attempt == CRC_REPAIR_ROUNDS:
                raise ChecksumError(f"{f.name}: {len(bad)} tensors ({', '.join(n for n, _, _ in bad[:3])}) still fail "
                                    f"their CRC32C after {CRC_REPAIR_ROUNDS} refetches from {spec}; "
                                    "the good bytes are kept")
            record = RangeRecord(record_path(part), size)
            for _, a, b in bad:
                record.remove(a, b)
            self.warn(f"{f.name}: {len(bad)} tensor(s) from {spec} failed their CRC32C "
                      f"({', '.join(n for n, _, _ in bad[:3])}); fetching those bytes again")
        emit(self.progress, ProgressEvent.end(f.name))
        try:
            result = self._check(f, part, spec, fetched, seen=seen)
        except _Bad:
            part.unlink(missing_ok=True)  # complete, and not the release's bytes: nothing to keep
            record_path(part).unlink(missing_ok=True)
            if ".data-" in f.name or retried:
                raise
            # A small file has no CRCs to locate a corrupted byte: fetch it once more, whole.
            return self._from_source(f, spec, retried=True)
        os.replace(part, self.dest / f.name)
        record_path(part).unlink(missing_ok=True)
        if spec not in self.used:
            self.used.append(spec)
        return result

    def _index(self):
        index = self.dest / next((f.name for f in self.m.files if f.name.endswith(INDEX_SUFFIX)), "-")
        return read_index(index)[1] if index.is_file() else None

    def _bad_tensors(self, f: FileRecord, data: Path, size: int) -> list[tuple[str, int, int]]:
        """Tensors of the data file whose bytes fail the index's CRC32C: (name, start, end)."""
        if ".data-" not in f.name:
            return []
        entries = self._index()
        if entries is None:
            return []
        self._check_layout(entries, size, f.name)
        bad = []
        with open(data, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                for e in entries.values():
                    if crc32c(view[e.offset:e.offset + e.size]) != unmask_crc(e.crc32c):
                        bad.append((e.name, e.offset, e.offset + e.size))
            finally:
                view.release()
        return bad

    def _check_layout(self, entries: dict, size: int, data_name: str) -> None:
        """The index must describe exactly this data file, and the manifest's tensors where it lists them."""
        spans = sorted((e.offset, e.offset + e.size) for e in entries.values() if not e.sliced)
        if not spans or spans[-1][1] != size or any(a < b0 for (_, b0), (a, _) in zip(spans, spans[1:])):
            raise _Bad(f"{data_name}: the index's tensors do not tile its {size:,} bytes")
        for t in self.m.tensors:
            e = entries.get(t["name"])
            if e is None or e.offset != t["offset"] or e.size != t["size"] or list(e.shape) != list(t["shape"]):
                raise _Bad(f"model.ckpt.index: tensor {t['name']} differs from the manifest")

    def _check(self, f: FileRecord, path: Path, spec: str | None, fetched: int, reuse: bool = False,
               seen: str | None = None, recorded: str | None = None) -> FileResult:
        """Size, sha256 and (data file) CRC32C of a complete file, against the manifest."""
        size = path.stat().st_size
        if f.size is not None and size != f.size and (f.status != "expected" or reuse):
            raise _Bad(f"{size:,} bytes, the manifest says {f.size:,}")
        crc_checked = False
        if ".data-" in f.name and self._index() is not None:
            if self._bad_tensors(f, path, size):
                raise _Bad(f"{f.name}: tensors fail their CRC32C")
            crc_checked = True
        seen = seen or sha256_file(path)
        if f.sha256 is not None and seen == f.sha256:
            return FileResult(f.name, size, seen, f.status, "sha256", spec, fetched)
        if f.sha256 is not None and f.status != "expected":
            raise _Bad(f"sha256 {seen[:16]}… is not the {f.status} {f.sha256[:16]}…")
        if recorded is not None and seen != recorded:
            raise _Bad(f"sha256 {seen[:16]}… is not the {recorded[:16]}… recorded when it was pulled")
        if f.sha256 is not None:
            self.warn(f"{f.name}: sha256 {seen[:16]}… differs from the expected {f.sha256[:16]}…"
                      + ("; every tensor matches its index CRC32C" if crc_checked else ""))
        return FileResult(f.name, size, seen, "seen", "crc32c" if crc_checked else "size", spec, fetched)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _short(e: Exception, spec: str) -> str:
    text = str(e)
    return text.removeprefix(spec).lstrip("/").strip() or type(e).__name__
