"""Pull a release into `<home>/<name>/original/`: every file fetched, verified, then renamed into place.

Sources are tried in order for each file (a failed one falls over to the next, continuing the same
`.part`), and each source under each of the release's folder names (124M, then 117M). Integrity:
a size or sha256 the manifest gives as published, shared (124M's identical file), measured or a
mirror's must match, or the file is refused; an *expected* one that differs is a warning. The data
file is checked tensor by tensor against the index's CRC32Cs, which also locates corrupted bytes so
only those are fetched again. For a release OpenAI published whose data file has no published
sha256, the index comes from OpenAI's origin first, whatever source the data comes from. What each
file was checked against is recorded (`integrity.Record`) and reported; "verified" means one of
published sha256, 124M's identical published file, or CRC32C from a verified index.
(Named `pulling`, not `pull`, so importing it cannot shadow the function `gpt2hub.pull`.)
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import hashes, offline, registry, settings, store
from .progress import ProgressEvent, Reporter, bytes_counter, emit
from .download import DiskFull, RangeRecord, RetryPolicy, fetch, record_path
from .errors import MAX_JSON_BYTES, CheckpointError, ChecksumError, DownloadError, ManifestError, UnknownRelease
from .integrity import Check, FileCheck, Record, read_record, write_record
from .registry import FileRecord, ReleaseManifest, sha256_file
from .sources import (Source, TransferError, default_sources, open_source, origin_url, redact, user_sources)
from .tfcheckpoint import MAX_INDEX_BYTES, crc32c, range_crc32c, read_index, unmask_crc

LOCK_NAME = ".pull.lock"  # in <home>/<name>/, beside the format folders
TO_LOCK_NAME = ".gpt2hub-pull.lock"  # in a `pull --to DIR` folder, beside the files and the verified record
# `--only` groups: what a tokenizer needs, and everything else (the model).
TOKENIZER_FILES = ("encoder.json", "vocab.bpe")
ONLY_GROUPS = ("tokenizer", "model")
INDEX_SUFFIX = ".index"
CRC_REPAIR_ROUNDS = 3
FREE_SPACE_MARGIN = 64 << 20
# A file the manifest gives no size for is refused when a source announces more than it can hold (`size_cap`).
# A MetaGraphDef grows ~38 KB a layer (471,155 B at 12, 926,519 B at 24): the index's 64 MiB is past 1,024 layers.
MAX_META_BYTES = MAX_INDEX_BYTES
TOTAL_TASK = "total"  # the progress task every file's bytes also count toward


# The manifest statuses whose sha256 binds, and what a match is called.
SHA256_CHECKS = {"published": Check.PUBLISHED_SHA256, "measured": Check.MEASURED_SHA256,
                 "shared": Check.SHARED_SHA256, "mirror": Check.MIRROR_SHA256}


@dataclass
class FileResult:
    name: str
    size: int
    sha256: str | None
    check: Check  # what vouches for the bytes (integrity.Check)
    against: str  # the hash or index they matched, in words
    source: str | None  # where they came from, secrets removed; None: already here
    fetched: int = 0

    @property
    def verified(self) -> bool:
        return self.check.verified

    def to_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "check": self.check.value,
                "verified": self.verified, "against": self.against, "source": self.source, "fetched": self.fetched}


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
                "verified": all(f.verified for f in self.files),
                "files": [f.to_dict() for f in self.files], "warnings": self.warnings}


@dataclass
class PlannedFile:
    name: str
    size: int | None
    state: str  # "verified" (recorded by a pull), "present" (to be checked), "partial" (resumes) or "missing"
    here: int  # bytes already on disk
    fetch: int | None  # bytes still to download (None: size unknown until asked)
    source: str | None  # the first source that has it (None: nothing to fetch, or none answered / offline)


@dataclass
class PullPlan:
    """What `pull --dry-run` found: what would be fetched, from where, and what is already here."""

    name: str
    path: Path
    files: list[PlannedFile]
    offline: bool
    unavailable: list[str] = field(default_factory=list)  # files no source could provide, with why

    @property
    def fetch(self) -> int:
        return sum(f.fetch or 0 for f in self.files)

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "dry_run": True, "offline": self.offline,
                "bytes": self.fetch, "files": [asdict(f) for f in self.files], "unavailable": self.unavailable}


class _Bad(Exception):
    """The bytes a source gave are not the release's file: try the next source."""


def pull(name: str, *, manifest: Path | str | None = None, sources: list[str] | tuple[str, ...] = (),
         endpoint_url: str | None = None, connections: int = 8, verify: bool = False, force: bool = False,
         progress: Reporter | None = None, retry: RetryPolicy = RetryPolicy(), span: int | None = None,
         only: list[str] | tuple[str, ...] = (), to: Path | str | None = None,
         dry_run: bool = False, public_mirrors: bool = True) -> PullResult | PullPlan:
    """Fetch and verify every file of a release (or the `only` ones: "tokenizer", "model", file names) into
    the store, or into the folder `to`; a verified release is a quick no-op. `dry_run`: a PullPlan, no file
    touched (see gpt2hub.pull). Only a release OpenAI published (a shipped manifest) is ever asked of OpenAI
    and, unless `public_mirrors` is False or $GPT2HUB_NO_PUBLIC_MIRRORS is set, of the public copies."""
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
        if manifest is not None:
            raise
        m = _manifest_from_sources(name, sources, endpoint_url, save=not dry_run)
    files = select(m, only)
    dest = store.release_dir(m.name) if to is None else Path(to).expanduser().absolute()
    job = _Pull(m, dest, sources, endpoint_url, connections, verify, force, progress, retry, span, files,
                foreign=to is not None, public_mirrors=public_mirrors)
    if dry_run:
        return job.plan()
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest}: exists and is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(dest.parent / LOCK_NAME if to is None else dest / TO_LOCK_NAME))
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        emit(progress, ProgressEvent.message(f"gpt2hub: another pull of {m.name} is running; waiting for it"))
        lock.acquire()
    try:
        return job.run()
    finally:
        lock.release()


def select(m: ReleaseManifest, only: list[str] | tuple[str, ...] = ()) -> list[FileRecord]:
    """The release's files that `--only` names: "tokenizer", "model" (everything else) or file names; all by default."""
    if not only:
        return list(m.files)
    names = {f.name for f in m.files}
    wanted: set[str] = set()
    for item in only:
        if item == "tokenizer":
            wanted |= names & set(TOKENIZER_FILES)
        elif item == "model":
            wanted |= names - set(TOKENIZER_FILES)
        elif item in names:
            wanted.add(item)
        else:
            raise DownloadError(f"--only {item}: not a file of {m.name}; choose {', '.join(ONLY_GROUPS)} "
                                f"or files: {', '.join(sorted(names))}")
    return [f for f in m.files if f.name in wanted]


def _manifest_from_sources(name: str, sources, endpoint_url: str | None, save: bool = True) -> ReleaseManifest:
    """A release unknown here, taken from the manifest a gpt2hub mirror publishes beside its files.

    Only the user's own sources are asked. The manifest is the mirror's word only: it may name a release
    that is new here and nothing else, it brings no sources, and its sizes and hashes are recorded as the
    mirror's ("mirror"), never as published. It is saved to <home>/manifests/ so that convert, verify
    and list know the release afterwards.
    """
    try:
        registry.check_name(name, "release name")
    except ManifestError:
        return registry.resolve(name)  # raises the usual error listing the known names
    for spec in user_sources(sources):
        if offline.enabled() and offline.is_remote(spec):
            continue
        where = f"{redact(spec).rstrip('/')}/{name}/{registry.MIRROR_MANIFEST}"
        try:
            remote = open_source(spec, endpoint_url, 1).remote(name, registry.MIRROR_MANIFEST)
            size = remote.stat().size
            if size > registry.MAX_MANIFEST_BYTES:
                raise ManifestError(f"{where}: {size:,} bytes, larger than a manifest may be "
                                    f"({registry.MAX_MANIFEST_BYTES:,})")
            data = b"".join(remote.read(0, size, whole=True))
        except (TransferError, ValueError, OSError):
            continue
        found = ReleaseManifest.from_bytes(data, where).from_mirror()
        if name.lower() not in (n.lower() for n in found.names):
            raise UnknownRelease(f"{where} describes {found.name!r}, not {name!r}")
        clash = registry.clashes(found)
        if clash:
            raise ManifestError(f"{where}: refused: {', '.join(clash)} already names a release here; "
                                "a mirror's manifest may only describe a new release")
        return ReleaseManifest.from_file(registry.save_user_manifest(found)) if save else found
    if offline.enabled() and any(offline.is_remote(s) for s in user_sources(sources)):
        offline.refuse(f"{name}: not a known release; asking its sources for a manifest")
    return registry.resolve(name)  # raises the usual error listing the known names


class _Pull:
    def __init__(self, m: ReleaseManifest, dest: Path, sources, endpoint_url, connections, verify, force, progress,
                 retry, span, files: list[FileRecord] | None = None, foreign: bool = False, public_mirrors=True):
        self.m, self.dest = m, dest
        self.files = list(m.files) if files is None else files
        self.foreign = foreign  # a folder of the user's: a file there that does not verify is theirs, not ours to replace
        shipped = registry.is_shipped(m)
        self.specs = default_sources(tuple(sources), m.sources, openai=shipped, public_mirrors=public_mirrors)
        self.accept_different_shared = _accept_different_shared()  # a word it does not know fails here, before a byte
        self.offline = offline.enabled()
        self.skipped = [s for s in self.specs if self.offline and offline.is_remote(s)]
        self.specs = [s for s in self.specs if s not in self.skipped]
        # The origin vouches for the data file through its index wherever no sha256 can.
        data, index = m.data_file, self._index_record()
        self.origin = origin_url() if shipped and not self.offline and data is not None and index is not None \
            and not (_binding_sha(data) or _binding_sha(index)) else None
        self.index_check: Check | None = None  # what vouched for the index now on disk, and where it came from
        self.refetch_index = False  # the index on disk is not the origin's
        self._index_source: str | None = None
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

    def _index_record(self) -> FileRecord | None:
        return next((f for f in self.m.files if f.name.endswith(INDEX_SUFFIX)), None)

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
            for f in sorted(self.files, key=lambda f: (not f.name.endswith(INDEX_SUFFIX), ".data-" in f.name, f.name)):
                results.append(self._file(f))
        finally:
            emit(self.progress, ProgressEvent.end(TOTAL_TASK))
        files = {r.name: FileCheck(r.size, r.sha256, r.check, r.against, r.source) for r in results}
        # A pull of some files (--only) keeps what an earlier pull verified of the others, while it is unchanged.
        earlier = read_record(self.dest)
        for f in self.m.files:
            info = earlier.files.get(f.name) if earlier is not None else None
            if f.name not in files and info is not None and _size(self.dest / f.name) == info.size:
                files[f.name] = info
        write_record(self.dest, Record(self.m.name, files, str(self.m.path) if self.m.path else None,
                                       partial=set(files) != {f.name for f in self.m.files}))
        return PullResult(self.m.name, self.dest, results, time.monotonic() - self.t0,
                          sum(r.fetched for r in results), self.used, warnings=self.warnings)

    # --- a release already here --------------------------------------------------------------

    def _already_verified(self) -> list[FileResult] | None:
        record = read_record(self.dest)
        if record is None or not {f.name for f in self.files} <= set(record.files):
            return None
        out = []
        for f in self.files:
            info = record.files[f.name]
            if _size(self.dest / f.name) != info.size:
                return None
            if f.size is not None and f.status != "expected" and info.size != f.size:
                return None
            if self.verify:
                seen = sha256_file(store.inside(self.dest, f.name))
                want = f.sha256 if _binding_sha(f) else info.sha256
                if seen != want:
                    self.warn(f"{f.name}: sha256 {seen[:12]}… differs from {want[:12] if want else '?'}…; fetching it again")
                    return None
            out.append(FileResult(f.name, info.size, info.sha256, info.check, info.against, None))
        return self._vouched_by_origin(out)

    def _vouched_by_origin(self, files: list[FileResult]) -> list[FileResult] | None:
        """Files pulled while the origin was out of reach, re-vouched for now that it answers.

        The origin's index is fetched (a few KB); if it is the index on disk, the data file's CRC32Cs were
        OpenAI's all along and the record says so; if it differs, the release is pulled again. Where the
        origin still cannot be reached the files stay as they were recorded.
        """
        index = self._index_record()
        if self.origin is None or index is None or all(f.check.verified for f in files if f.name == index.name):
            return files
        try:
            remote = self._source(self.origin).remote(self.m.folders[0], index.name)
            size = self._stat(remote).size
            if size > MAX_INDEX_BYTES or index.size is not None and size != index.size:
                raise TransferError(f"{remote.url}: {size:,} bytes, the manifest says "
                                    f"{'nothing' if index.size is None else f'{index.size:,}'}", retryable=False)
            origin_bytes = b"".join(remote.read(0, size, whole=True))
        except TransferError:
            return files
        if origin_bytes != store.inside(self.dest, index.name).read_bytes():
            self.warn(f"{index.name}: OpenAI's index differs from the one this release was pulled with; pulling again")
            self.refetch_index = True
            return None
        against = f"fetched from OpenAI ({redact(self.origin)})"
        upgraded = []
        for f in files:
            if f.name == index.name or f.check == Check.MIRROR_CRC32C:
                how = against if f.name == index.name else f"every tensor's CRC32C in the index from OpenAI ({index.name})"
                f = FileResult(f.name, f.size, f.sha256, Check.ORIGIN_CRC32C, how, f.source)
            upgraded.append(f)
        earlier = read_record(self.dest)
        merged = {**(earlier.files if earlier is not None else {}),
                  **{r.name: FileCheck(r.size, r.sha256, r.check, r.against, r.source) for r in upgraded}}
        write_record(self.dest, Record(self.m.name, merged, str(self.m.path) if self.m.path else None,
                                       partial=set(merged) != {f.name for f in self.m.files}))
        return upgraded

    def plan(self) -> PullPlan:
        """What run() would fetch and from where, asking sources only for sizes; touches no file."""
        earlier = read_record(self.dest) if not self.force else None
        record = earlier.files if earlier is not None else {}
        out, unavailable = [], []
        for f in self.files:
            final, info = self.dest / f.name, record.get(f.name)
            if info is not None and _size(final) == info.size and not self.verify:
                out.append(PlannedFile(f.name, f.size, "verified" if info.verified else "pulled", info.size, 0, None))
                continue
            if not self.force and final.is_file():
                out.append(PlannedFile(f.name, f.size, "present", _size(final) or 0, 0, None))
                continue
            done = RangeRecord(self._part(f), f.size).done_bytes if f.size is not None else 0
            size, source, why = f.size, None, []
            for spec in self.specs:
                try:
                    _, st = self._find(spec, f)
                except (TransferError, DownloadError) as e:
                    why.append(f"{spec}: {_short(e, spec)}")
                    continue
                source, size = spec, size if size is not None else st.size
                break
            if source is None and (why or not self.offline):  # offline with no folder source: the CLI says so once
                unavailable.append(f"{f.name} ({'; '.join(why) or 'no source'})")
            out.append(PlannedFile(f.name, size, "partial" if done else "missing", done,
                                   None if size is None else size - done, source))
        return PullPlan(self.m.name, self.dest, out, self.offline, unavailable)

    def _find(self, spec: str, f: FileRecord):
        """(remote, stat) of the file at one source, under the first of the release's folder names that has it."""
        source = self._source(spec)
        missing = None
        for folder in self.m.folders:
            remote = source.remote(folder, f.name)
            try:
                return remote, self._stat(remote)
            except TransferError as e:
                if not e.missing:
                    raise
                missing = e
        raise missing  # type: ignore[misc]

    def _check_free_space(self) -> int:
        """Fail unless the bytes still to come fit on the disk; return how many are already here."""
        need = here = 0
        for f in self.files:
            if f.size is None:
                continue
            if not self.force and _size(self.dest / f.name) == f.size:
                here += f.size
                continue
            done = RangeRecord(self._part(f), f.size).done_bytes
            need, here = need + f.size - done, here + done
        free = shutil.disk_usage(self.dest).free
        if need + FREE_SPACE_MARGIN > free:
            raise DownloadError(f"{self.dest}: not enough free space for {self.m.name}: "
                                f"{_gb(need)} to download, {_gb(free)} free")
        return here

    def _part(self, f: FileRecord) -> Path:
        return store.inside(self.dest, f.name + store.PARTIAL_SUFFIX)

    # --- one file ------------------------------------------------------------------------------

    def _file(self, f: FileRecord) -> FileResult:
        final = store.inside(self.dest, f.name)
        is_index = f.name.endswith(INDEX_SUFFIX)
        record = read_record(self.dest)
        recorded = record.files.get(f.name) if record is not None else None
        # An index of unknown provenance cannot vouch for the data file: fetch it again (it is small).
        unknown_index = is_index and self.origin is not None and (recorded is None or self.refetch_index)
        if not self.force and final.is_file() and not unknown_index:
            try:
                return self._check(f, final, None, 0, reuse=True, recorded=recorded)
            except (_Bad, CheckpointError) as e:
                if self.foreign and not recorded:
                    raise DownloadError(f"{final}: already exists and is not {self.m.name}'s {f.name} ({e}); "
                                        "not replacing it (move it away and pull again)") from None
                self.warn(f"{final.name}: the copy on disk does not verify ({e}); fetching it again")
        if not self.specs:
            offline.refuse(f"{self.m.name}: {f.name} ({'size unknown' if f.size is None else f'{f.size:,} bytes'}) "
                           f"from {self.skipped[0] if self.skipped else 'a source'}")
        specs = self.specs
        if is_index and self.origin is not None:
            specs = [self.origin, *(s for s in specs if s.rstrip("/") != self.origin.rstrip("/"))]
        failures = []
        for spec in specs:
            try:
                result = self._from_source(f, spec)
            except DiskFull:
                raise
            except (TransferError, DownloadError, _Bad, CheckpointError) as e:
                failures.append(f"{redact(spec)}: {_short(e, redact(spec))}")
                continue
            if is_index and self.origin is not None and spec != self.origin:
                self.warn(f"{f.name}: OpenAI's origin could not be reached ({failures[0] if failures else '?'}); "
                          f"the data file's CRC32C check rests on the index from {redact(spec)}")
            return result
        skipped = f"; offline, so not tried: {', '.join(self.skipped)}" if self.skipped else ""
        raise DownloadError(f"{self.m.name}: {f.name}: no source could provide it ({'; '.join(failures)}{skipped}); "
                            "bytes already downloaded are kept for the next pull")

    def _source(self, spec: str) -> Source:
        if spec not in self._sources:
            try:
                self._sources[spec] = open_source(spec, self.endpoint_url, self.connections, self.retry.speed_time)
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
        remote, st = self._find(spec, f)
        size = st.size
        if f.size is not None and size != f.size:
            if f.status != "expected":
                raise _Bad(f"{remote.url} is {size:,} bytes; the manifest says {f.size:,} ({f.status})")
            self.warn(f"{f.name}: {remote.url} is {size:,} bytes, not the expected {f.size:,}; "
                      "integrity rests on the checks below")
        part = self._part(f)
        if size != f.size:
            self._check_announced(f, remote.url, size, part)
        fetched = 0
        emit(self.progress, ProgressEvent.begin(f.name, size, RangeRecord(part, size).done_bytes, TOTAL_TASK))
        seen = None
        entries = self._index() if ".data-" in f.name else None
        for attempt in range(CRC_REPAIR_ROUNDS + 1):
            crcs = _TensorCrcs.of(entries)
            stats = fetch(remote, part, size, connections=self.connections, etag=st.etag, retry=self.retry,
                          span=self.span, progress=bytes_counter(self.progress, f.name), observe=crcs)
            fetched += stats.fetched
            seen = stats.sha256
            for note in stats.notes:
                self.warn(note)
            bad = self._bad_tensors(f, part, size, crcs.values if crcs is not None and seen else None)
            if not bad:
                break
            if attempt == CRC_REPAIR_ROUNDS:
                raise ChecksumError(f"{f.name}: {len(bad)} tensors ({', '.join(n for n, _, _ in bad[:3])}) still fail "
                                    f"their CRC32C after {CRC_REPAIR_ROUNDS} refetches from {spec}; "
                                    "the good bytes are kept")
            record = RangeRecord(part, size)
            for _, a, b in bad:
                record.remove(a, b)
            self.warn(f"{f.name}: {len(bad)} tensor(s) from {spec} failed their CRC32C "
                      f"({', '.join(n for n, _, _ in bad[:3])}); fetching those bytes again")
        emit(self.progress, ProgressEvent.end(f.name))
        try:
            result = self._check(f, part, spec, fetched, seen=seen, crc_checked=True)
        except _Bad:
            record_path(part).unlink(missing_ok=True)  # the record first: it must never outlive its part
            part.unlink(missing_ok=True)  # complete, and not the release's bytes: nothing to keep
            if ".data-" in f.name or retried:
                raise
            # A small file has no CRCs to locate a corrupted byte: fetch it once more, whole.
            return self._from_source(f, spec, retried=True)
        record_path(part).unlink(missing_ok=True)  # before the rename: a kill between leaves a part, never a record alone
        os.replace(part, store.inside(self.dest, f.name))
        hashes.remember(self.dest / f.name, result.sha256)  # mirror and convert need not hash it again
        if redact(spec) not in self.used:
            self.used.append(redact(spec))
        return result

    def _check_announced(self, f: FileRecord, url: str, size: int, part: Path) -> None:
        """A size the manifest did not vouch for, refused before a byte is fetched: more than the file can hold
        (`size_cap`), or more than the disk has free."""
        cap, why = size_cap(self.m, f)
        if size > cap:
            raise _Bad(f"{url} announces {size:,} bytes for {f.name}; it can hold at most {cap:,} ({why})")
        need, free = size - RangeRecord(part, size).done_bytes, shutil.disk_usage(self.dest).free
        if need + FREE_SPACE_MARGIN > free:
            raise DiskFull(f"{self.dest}: not enough free space for {f.name}: {url} announces {size:,} bytes, "
                           f"{_gb(need)} to download, {_gb(free)} free")

    def _index(self):
        f = self._index_record()
        index = store.inside(self.dest, f.name) if f is not None else None
        return read_index(index)[1] if index is not None and index.is_file() else None

    def _bad_tensors(self, f: FileRecord, data: Path, size: int,
                     seen: dict[str, int] | None = None) -> list[tuple[str, int, int]]:
        """Tensors of the data file whose bytes fail the index's CRC32C: (name, start, end). `seen`: every
        tensor's CRC32C, computed while the file downloaded; else the file is read again."""
        if ".data-" not in f.name:
            return []
        entries = self._index()
        if entries is None:
            return []
        self._check_layout(entries, size, f.name)
        # Chunked reads, not a map: mapped pages count in the resident set (6 GB at 1558M).
        return [(e.name, e.offset, e.offset + e.size) for e in entries.values()
                if (seen.get(e.name, 0) if seen is not None else range_crc32c(data, e.offset, e.size, e.name))
                != unmask_crc(e.crc32c)]

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
               seen: str | None = None, recorded: FileCheck | None = None, crc_checked: bool = False) -> FileResult:
        """Size, sha256 and (data file) CRC32C of a complete file, against the manifest; says what vouched.
        `crc_checked`: the caller has just checked every tensor's CRC32C (a second pass would read it all again)."""
        size = path.stat().st_size
        source = redact(spec) if spec is not None else None
        if f.size is not None and size != f.size and (f.status != "expected" or reuse):
            raise _Bad(f"{size:,} bytes, the manifest says {f.size:,}")
        crc: Check | None = None
        if ".data-" in f.name and self._index() is not None:
            if not crc_checked and self._bad_tensors(f, path, size):
                raise _Bad(f"{f.name}: tensors fail their CRC32C")
            crc = Check.ORIGIN_CRC32C if self.index_check is not None and self.index_check.verified else Check.MIRROR_CRC32C
        seen = seen or sha256_file(path)
        if f.sha256 is not None and seen == f.sha256 and f.status in SHA256_CHECKS:
            kind = SHA256_CHECKS[f.status]
            return self._result(f, size, seen, kind, f"{_WHOSE[f.status]} sha256 {f.sha256[:16]}…", source, fetched)
        if f.sha256 is not None and seen != f.sha256 and f.status != "expected":
            if f.status == "shared" and self.accept_different_shared:
                self.warn(f"{f.name}: sha256 {seen[:16]}… is not {registry.SHARED_FROM}'s published "
                          f"{f.sha256[:16]}…; accepted, unverified (${registry.ACCEPT_DIFFERENT_SHARED_ENV})")
            else:
                hint = (f"; if you know this copy is right, set {registry.ACCEPT_DIFFERENT_SHARED_ENV}=1"
                        if f.status == "shared" else "")
                article = "" if f.status == "shared" else "the "
                raise _Bad(f"sha256 {seen[:16]}… is not {article}{_WHOSE[f.status]} {f.sha256[:16]}…{hint}")
        if recorded is not None and recorded.sha256 and seen != recorded.sha256:
            raise _Bad(f"sha256 {seen[:16]}… is not the {recorded.sha256[:16]}… recorded when it was pulled")
        if f.sha256 is not None and f.status == "expected" and seen != f.sha256:
            self.warn(f"{f.name}: sha256 {seen[:16]}… differs from the expected {f.sha256[:16]}…"
                      + ("; every tensor matches its index CRC32C" if crc else ""))
        if f.name.endswith(INDEX_SUFFIX) and self.origin is not None:
            from_origin = spec == self.origin or (spec is None and recorded is not None and recorded.check.verified)
            if from_origin:
                return self._result(f, size, seen, Check.ORIGIN_CRC32C, f"fetched from OpenAI ({redact(self.origin)})",
                                    source, fetched)
        if crc is not None:
            index = self._index_record()
            whose = "a verified index" if crc.verified else f"the index from {self._index_source or 'a mirror'}"
            return self._result(f, size, seen, crc, f"every tensor's CRC32C in {whose} ({index.name if index else '?'})",
                                source, fetched)
        if f.sha256 is not None and f.status == "mirror":
            return self._result(f, size, seen, Check.SIZE, "size only (the mirror's sha256 did not match)", source, fetched)
        return self._result(f, size, seen, Check.SIZE,
                            f"size {f.size:,} ({f.status})" if f.size is not None else "nothing: no size or hash known",
                            source, fetched)

    def _result(self, f: FileRecord, size: int, sha: str, check: Check, against: str, source: str | None,
                fetched: int) -> FileResult:
        if f.name.endswith(INDEX_SUFFIX):
            self.index_check, self._index_source = check, source
        return FileResult(f.name, size, sha, check, against, source, fetched)


class _TensorCrcs:
    """Every tensor's CRC32C, from the blocks of the data file the download hands over in file order."""

    def __init__(self, entries: dict):
        self.spans = sorted((e.offset, e.offset + e.size, e.name) for e in entries.values())
        self.values: dict[str, int] = {}
        self._next = 0  # the first span not yet complete

    @classmethod
    def of(cls, entries: dict | None) -> "_TensorCrcs | None":
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


_WHOSE = {"published": "published", "measured": "manifest's measured", "shared": f"{registry.SHARED_FROM}'s published",
          "mirror": "mirror's", "expected": "expected"}


def size_cap(m: ReleaseManifest, f: FileRecord) -> tuple[int, str]:
    """The most bytes `f` can hold, and why: a data file 4 (float32) per parameter of the manifest's hparams;
    an index or meta graph, the checkpoint index reader's limit; any other file, the JSON reader's."""
    if ".data-" in f.name:
        return 4 * m.hparams.parameters, f"4 bytes x {m.hparams.parameters:,} parameters"
    if f.name.endswith(INDEX_SUFFIX):
        return MAX_INDEX_BYTES, "the limit on a checkpoint index"
    if f.name.endswith(".meta"):
        return MAX_META_BYTES, "the limit on a meta graph"
    return MAX_JSON_BYTES, "the limit on a release's small files"


def _binding_sha(f: FileRecord) -> bool:
    """True where the manifest gives a sha256 that vouches for the file (not a mirror's or an expected one)."""
    return f.sha256 is not None and f.status in ("published", "measured", "shared")


def _accept_different_shared() -> bool:
    return settings.flag(settings.ACCEPT_DIFFERENT_SHARED)


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
