"""Pull a release into `<home>/<name>/original/` (or a folder of the user's): every file fetched, verified,
then renamed into place, under a lock; the record of what vouched for each file written at the end.

The jobs live apart: the plan (`pull_plan`: sources in order, dry run, free space, size caps), one file
(`pull_file`: fetch from each source in turn, judged by `trust.judge_file`), the data file's tensor CRC32Cs
and their repair (`crc_repair`), the record (`pull_record`), byte ranges (`download`, `ranges`).
Integrity: a size or sha256 the manifest gives as published, shared (124M's identical file), measured or a
mirror's must match, or the file is refused; an *expected* one that differs is a warning. "Verified" means
one of published sha256, 124M's identical published file, the user's measured one, or CRC32C from a
verified index. (Named `pulling`, not `pull`, so importing it cannot shadow the function `gpt2hub.pull`.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import offline, registry, settings, store
from .errors import DownloadError, ManifestError, TransferError, UnknownRelease
from .manifest import MAX_MANIFEST_BYTES, FileRecord, ReleaseManifest, check_name
from .progress import ProgressEvent, Reporter, emit
from .pull_file import TOTAL_TASK, FileFetcher, FileResult
from .pull_plan import INDEX_SUFFIX, PullJob, PullPlan, check_free_space, dry_run as plan
from .pull_record import already_verified, record_pull
from .remote import redact
from .retry import RetryPolicy
from .sources import open_source, user_sources

TO_LOCK_NAME = ".gpt2hub-pull.lock"  # in a `pull --to DIR` folder, beside the files and the verified record
# `--only` groups: what a tokenizer needs, and everything else (the model).
TOKENIZER_FILES = ("encoder.json", "vocab.bpe")
ONLY_GROUPS = ("tokenizer", "model")


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


def pull(name: str, *, manifest: Path | str | None = None, sources: list[str] | tuple[str, ...] = (),
         endpoint_url: str | None = None, connections: int = settings.CONNECTIONS, verify: bool = False,
         force: bool = False, progress: Reporter | None = None, retry: RetryPolicy = RetryPolicy(),
         span: int | None = None,
         only: list[str] | tuple[str, ...] = (), to: Path | str | None = None,
         dry_run: bool = False, public_mirrors: bool = True) -> PullResult | PullPlan:
    """Fetch and verify every file of a release (or the `only` ones: "tokenizer", "model", file names) into
    the store, or into the folder `to`; a verified release is a quick no-op. `dry_run`: a PullPlan, no file
    touched (see gpt2hub.pull). Only a release OpenAI published (a shipped manifest) is ever asked of OpenAI
    and, unless `public_mirrors` is False or $GPT2HUB_NO_PUBLIC_MIRRORS is set, of the public copies."""
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
    job = PullJob(m, dest, sources, endpoint_url, connections, verify, force, progress, retry, span, files,
                  foreign=to is not None, public_mirrors=public_mirrors)
    if dry_run:
        return plan(job)
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest}: exists and is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    return run_locked(job, dest.parent / settings.PULL_LOCK if to is None else dest / TO_LOCK_NAME)


def run_locked(job: PullJob, lock_path: Path) -> PullResult:
    """Run a pull job while holding the lock at `lock_path` (waiting for another pull that holds it)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        emit(job.progress, ProgressEvent.message(f"gpt2hub: another pull of {job.m.name} is running; waiting for it"))
        lock.acquire()
    try:
        return _run(job)
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
    mirror's (`HashStatus.MIRROR`), never as published. It is saved to <home>/manifests/ so that convert, verify
    and list know the release afterwards.
    """
    try:
        check_name(name, "release name")
    except ManifestError:
        return registry.resolve(name)  # raises the usual error listing the known names
    for spec in user_sources(sources):
        if offline.enabled() and offline.is_remote(spec):
            continue
        where = f"{redact(spec).rstrip('/')}/{name}/{registry.MIRROR_MANIFEST}"
        try:
            remote = open_source(spec, endpoint_url, 1).remote(name, registry.MIRROR_MANIFEST)
            size = remote.stat().size
            if size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"{where}: {size:,} bytes, larger than a manifest may be "
                                    f"({MAX_MANIFEST_BYTES:,})")
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


def _run(job: PullJob) -> PullResult:
    """Every file into place, the index first (it vouches for the data file, tensor by tensor); then the record."""
    if not job.force:
        done = already_verified(job)
        if done is not None:
            return PullResult(job.m.name, job.dest, done, time.monotonic() - job.t0, 0, [], already=True)
    here = check_free_space(job)
    m = job.m
    emit(job.progress, ProgressEvent.begin(TOTAL_TASK, m.download_size if m.download_size_known else None, here))
    fetcher, results = FileFetcher(job), []
    try:
        for f in sorted(job.files, key=lambda f: (not f.name.endswith(INDEX_SUFFIX), ".data-" in f.name, f.name)):
            results.append(fetcher.fetch(f))
    finally:
        emit(job.progress, ProgressEvent.end(TOTAL_TASK))
    record_pull(job, results)
    return PullResult(m.name, job.dest, results, time.monotonic() - job.t0, sum(r.fetched for r in results),
                      fetcher.used, warnings=job.warnings)
