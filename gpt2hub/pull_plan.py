"""What a pull will do before a byte moves: its sources in order, the files already here, the free space,
the most bytes each file may hold, and `pull --dry-run`'s report of it all.

`PullJob` is one pull's release, folder, files and switches; `SourceOrder` the sources it asks, in order,
each opened once. For a release OpenAI published whose data file has no binding sha256, OpenAI's origin
is asked for the index first, whatever source the data comes from.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import offline, registry, settings, store
from .errors import MAX_JSON_BYTES, DiskFull, DownloadError, TransferError, WrongFile
from .integrity import read_record
from .manifest import FileRecord, ReleaseManifest
from .printing import size_text
from .progress import ProgressEvent, Reporter, emit
from .ranges import RangeRecord
from .remote import ReleaseSource, Remote, RemoteStat
from .retry import RetryPolicy
from .sources import default_sources, open_source, origin_url
from .tfcheckpoint import MAX_INDEX_BYTES
from .trust import Claim

INDEX_SUFFIX = ".index"
FREE_SPACE_MARGIN = 64 << 20
# A file the manifest gives no size for is refused when a source announces more than it can hold (`size_cap`).
# A MetaGraphDef grows ~38 KB a layer (471,155 B at 12, 926,519 B at 24): the index's 64 MiB is past 1,024 layers.
MAX_META_BYTES = MAX_INDEX_BYTES


class SourceOrder:
    """The sources a pull asks, in order (those offline mode skips set apart), the origin whose index vouches
    for the data file where no sha256 can, and each source opened once."""

    def __init__(self, m: ReleaseManifest, specs: list[str], shipped: bool, endpoint_url: str | None,
                 connections: int, retry: RetryPolicy):
        self.folders = m.folders
        self.offline = offline.enabled()
        self.skipped = [s for s in specs if self.offline and offline.is_remote(s)]
        self.specs = [s for s in specs if s not in self.skipped]
        data, index = m.data_file, index_record(m)
        self.origin = origin_url() if shipped and not self.offline and data is not None \
            and index is not None and not (Claim.of(data).binding or Claim.of(index).binding) else None
        self.endpoint_url, self.connections, self.retry = endpoint_url, connections, retry
        self._opened: dict[str, ReleaseSource] = {}

    def for_file(self, f: FileRecord) -> list[str]:
        """The sources to try for `f`, in order: for the index, the origin first."""
        if f.name.endswith(INDEX_SUFFIX) and self.origin is not None:
            return [self.origin, *(s for s in self.specs if s.rstrip("/") != self.origin.rstrip("/"))]
        return self.specs

    def source(self, spec: str) -> ReleaseSource:
        if spec not in self._opened:
            try:
                self._opened[spec] = open_source(spec, self.endpoint_url, self.connections, self.retry.speed_time)
            except ValueError as e:
                raise TransferError(str(e), retryable=False) from None
        return self._opened[spec]

    def stat(self, remote: Remote) -> RemoteStat:
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

    def find(self, spec: str, f: FileRecord) -> tuple[Remote, RemoteStat]:
        """(remote, stat) of the file at one source, under the first of the release's folder names that has it."""
        source = self.source(spec)
        missing = None
        for folder in self.folders:
            remote = source.remote(folder, f.name)
            try:
                return remote, self.stat(remote)
            except TransferError as e:
                if not e.missing:
                    raise
                missing = e
        raise missing  # type: ignore[misc]


class PullJob:
    """One pull: the release, the folder it goes to, the files asked for, the switches, the sources; and the
    warnings said so far."""

    def __init__(self, m: ReleaseManifest, dest: Path, sources, endpoint_url: str | None, connections: int,
                 verify: bool, force: bool, progress: Reporter | None, retry: RetryPolicy, span: int | None,
                 files: list[FileRecord] | None = None, foreign: bool = False, public_mirrors: bool = True):
        self.m, self.dest = m, dest
        self.files = list(m.files) if files is None else files
        self.foreign = foreign  # a folder of the user's: a file there that does not verify is theirs, not ours to replace
        shipped = registry.is_shipped(m)
        specs = default_sources(tuple(sources), m.sources, openai=shipped, public_mirrors=public_mirrors)
        # A word it does not know fails here, before a byte.
        self.accept_different_shared = settings.flag(settings.ACCEPT_DIFFERENT_SHARED)
        self.sources = SourceOrder(m, specs, shipped, endpoint_url, connections, retry)
        self.refetch_index = False  # the index on disk is not the origin's
        self.connections, self.verify, self.force, self.progress = connections, verify, force, progress
        self.retry, self.span = retry, span
        self.warnings: list[str] = []
        self.t0 = time.monotonic()

    def warn(self, line: str) -> None:
        self.warnings.append(line)
        emit(self.progress, ProgressEvent.message(f"gpt2hub: warning: {line}"))

    def part(self, f: FileRecord) -> Path:
        return store.inside(self.dest, f.name + store.PARTIAL_SUFFIX)


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


def dry_run(job: PullJob) -> PullPlan:
    """What the pull would fetch and from where, asking sources only for sizes; touches no file."""
    earlier = read_record(job.dest) if not job.force else None
    record = earlier.files if earlier is not None else {}
    out, unavailable = [], []
    for f in job.files:
        final, info = job.dest / f.name, record.get(f.name)
        if info is not None and file_size(final) == info.size and not job.verify:
            out.append(PlannedFile(f.name, f.size, "verified" if info.verified else "pulled", info.size, 0, None))
            continue
        if not job.force and final.is_file():
            out.append(PlannedFile(f.name, f.size, "present", file_size(final) or 0, 0, None))
            continue
        done = RangeRecord(job.part(f), f.size).done_bytes if f.size is not None else 0
        size, source, why = f.size, None, []
        for spec in job.sources.specs:
            try:
                _, st = job.sources.find(spec, f)
            except (TransferError, DownloadError) as e:
                why.append(f"{spec}: {short(e, spec)}")
                continue
            if size is None and st.size > size_cap(job.m, f)[0]:
                cap, what = size_cap(job.m, f)
                why.append(f"{spec}: announces {st.size:,} bytes; {f.name} can hold at most {cap:,} ({what})")
                continue
            source, size = spec, size if size is not None else st.size
            break
        if source is None and (why or not job.sources.offline):  # offline, no folder source: the CLI says so once
            unavailable.append(f"{f.name} ({'; '.join(why) or 'no source'})")
        out.append(PlannedFile(f.name, size, "partial" if done else "missing", done,
                               None if size is None else size - done, source))
    return PullPlan(job.m.name, job.dest, out, job.sources.offline, unavailable)


def check_free_space(job: PullJob) -> int:
    """Fail unless the bytes still to come fit on the disk; return how many are already here."""
    need = here = 0
    for f in job.files:
        if f.size is None:
            continue
        if not job.force and file_size(job.dest / f.name) == f.size:
            here += f.size
            continue
        done = RangeRecord(job.part(f), f.size).done_bytes
        need, here = need + f.size - done, here + done
    free = shutil.disk_usage(job.dest).free
    if need + FREE_SPACE_MARGIN > free:
        raise DiskFull(no_room(job.dest, job.m.name, need, free))
    return here


def check_announced(job: PullJob, f: FileRecord, url: str, size: int) -> None:
    """A size the manifest did not vouch for, refused before a byte is fetched: more than the file can hold
    (`size_cap`), or more than the disk has free."""
    cap, why = size_cap(job.m, f)
    if size > cap:
        raise WrongFile(f"{url} announces {size:,} bytes for {f.name}; it can hold at most {cap:,} ({why})")
    need, free = size - RangeRecord(job.part(f), size).done_bytes, shutil.disk_usage(job.dest).free
    if need + FREE_SPACE_MARGIN > free:
        raise DiskFull(no_room(job.dest, f"{f.name} ({url} announces {size:,} bytes)", need, free))


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


def index_record(m: ReleaseManifest) -> FileRecord | None:
    """The manifest's checkpoint index, if it lists one."""
    return next((f for f in m.files if f.name.endswith(INDEX_SUFFIX)), None)


def file_size(path: Path) -> int | None:
    """Bytes in the file at `path`, or None where there is none to read."""
    try:
        return path.stat().st_size
    except OSError:
        return None


def no_room(dest: Path, what: str, need: int, free: int) -> str:
    """The one line a pull refused for want of space says: the folder, what it needs and what is free."""
    return (f"{dest}: not enough free space for {what}: needs {size_text(need + FREE_SPACE_MARGIN)} "
            f"({size_text(need)} to download + {size_text(FREE_SPACE_MARGIN)} to spare), {size_text(free)} free")


def short(e: Exception, spec: str) -> str:
    """A failure's message without the source it names at the front."""
    text = str(e)
    return text.removeprefix(spec).lstrip("/").strip() or type(e).__name__
