"""One file of a pull: the copy on disk kept if it checks out, else fetched from each source in turn until one
gives the release's bytes; judged by the trust policy (`trust.judge_file`), then renamed into place.

A failed source falls over to the next, continuing the same `.part`. What vouched for the index is
remembered: the data file's CRC32Cs are only as good as the index they came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import hashes, offline, store, trust
from .crc_repair import bad_tensors, fetch_repairing, read_entries
from .errors import CheckpointError, DiskFull, DownloadError, TransferError, WrongFile
from .integrity import FileCheck, read_record
from .manifest import FileRecord
from .progress import ProgressEvent, emit
from .pull_plan import INDEX_SUFFIX, PullJob, check_announced, index_record, short
from .ranges import RangeRecord, record_path
from .registry import sha256_file
from .remote import redact
from .trust import Check, Claim, Observed

TOTAL_TASK = "total"  # the progress task every file's bytes also count toward


@dataclass
class FileResult:
    name: str
    size: int
    sha256: str | None
    check: Check  # what vouches for the bytes (trust.Check)
    against: str  # the hash or index they matched, in words
    source: str | None  # where they came from, secrets removed; None: already here
    fetched: int = 0

    @property
    def verified(self) -> bool:
        return self.check.verified

    def to_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "check": self.check.value,
                "verified": self.verified, "against": self.against, "source": self.source, "fetched": self.fetched}


class FileFetcher:
    """Brings the files of one pull into place, one at a time (the index first), and remembers what vouched
    for the index now on disk and which sources gave bytes."""

    def __init__(self, job: PullJob):
        self.job = job
        self.index_check: Check | None = None  # what vouched for the index now on disk, and where it came from
        self.index_source: str | None = None
        self.used: list[str] = []

    def fetch(self, f: FileRecord) -> FileResult:
        job, origin = self.job, self.job.sources.origin
        final = store.inside(job.dest, f.name)
        is_index = f.name.endswith(INDEX_SUFFIX)
        record = read_record(job.dest)
        recorded = record.files.get(f.name) if record is not None else None
        # An index of unknown provenance cannot vouch for the data file: fetch it again (it is small).
        unknown_index = is_index and origin is not None and (recorded is None or job.refetch_index)
        if not job.force and final.is_file() and not unknown_index:
            try:
                return self._check(f, final, None, 0, reuse=True, recorded=recorded)
            except (WrongFile, CheckpointError) as e:
                if job.foreign and not recorded:
                    raise DownloadError(f"{final}: already exists and is not {job.m.name}'s {f.name} ({e}); "
                                        "not replacing it (move it away and pull again)") from None
                job.warn(f"{final.name}: the copy on disk does not verify ({e}); fetching it again")
        skipped = job.sources.skipped
        if not job.sources.specs:
            offline.refuse(f"{job.m.name}: {f.name} ({'size unknown' if f.size is None else f'{f.size:,} bytes'}) "
                           f"from {skipped[0] if skipped else 'a source'}")
        failures = []
        for spec in job.sources.for_file(f):
            try:
                result = self._from_source(f, spec)
            except DiskFull:
                raise
            except (TransferError, DownloadError, WrongFile, CheckpointError) as e:
                failures.append(f"{redact(spec)}: {short(e, redact(spec))}")
                continue
            if is_index and origin is not None and spec != origin:
                job.warn(f"{f.name}: OpenAI's origin could not be reached ({failures[0] if failures else '?'}); "
                         f"the data file's CRC32C check rests on the index from {redact(spec)}")
            return result
        offline_note = f"; offline, so not tried: {', '.join(skipped)}" if skipped else ""
        raise DownloadError(f"{job.m.name}: {f.name}: no source could provide it ({'; '.join(failures)}"
                            f"{offline_note}); bytes already downloaded are kept for the next pull")

    def _from_source(self, f: FileRecord, spec: str, retried: bool = False) -> FileResult:
        job = self.job
        remote, st = job.sources.find(spec, f)
        size = st.size
        refusal, warning = trust.announced_size(Claim.of(f), remote.url, size)
        if refusal is not None:
            raise WrongFile(refusal)
        if warning is not None:
            job.warn(warning)
        part = job.part(f)
        if size != f.size:
            check_announced(job, f, remote.url, size)
        emit(job.progress, ProgressEvent.begin(f.name, size, RangeRecord(part, size).done_bytes, TOTAL_TASK))
        fetched, seen = fetch_repairing(job, f, remote, st.etag, part, size, spec)
        emit(job.progress, ProgressEvent.end(f.name))
        try:
            result = self._check(f, part, spec, fetched, seen=seen, crc_checked=True)
        except WrongFile:
            record_path(part).unlink(missing_ok=True)  # the record first: it must never outlive its part
            part.unlink(missing_ok=True)  # complete, and not the release's bytes: nothing to keep
            if ".data-" in f.name or retried:
                raise
            # A small file has no CRCs to locate a corrupted byte: fetch it once more, whole.
            return self._from_source(f, spec, retried=True)
        record_path(part).unlink(missing_ok=True)  # before the rename: a kill between leaves a part, never a record alone
        os.replace(part, store.inside(job.dest, f.name))
        hashes.remember(job.dest / f.name, result.sha256)  # mirror and convert need not hash it again
        if redact(spec) not in self.used:
            self.used.append(redact(spec))
        return result

    def _check(self, f: FileRecord, path: Path, spec: str | None, fetched: int, reuse: bool = False,
               seen: str | None = None, recorded: FileCheck | None = None, crc_checked: bool = False) -> FileResult:
        """Size, sha256 and (data file) CRC32C of a complete file, judged against the manifest; says what vouched.
        `crc_checked`: the caller has just checked every tensor's CRC32C (a second pass would read it all again)."""
        job, origin = self.job, self.job.sources.origin
        claim, size = Claim.of(f), path.stat().st_size
        source = redact(spec) if spec is not None else None
        refused = trust.size_refusal(claim, size, reuse) is not None  # then neither CRC32C nor sha256 is read
        crc = None
        if not refused and ".data-" in f.name and read_entries(job) is not None:
            crc = crc_checked or not bad_tensors(job, f, path, size)
        sha = None if refused or crc is False else seen or sha256_file(path)
        from_origin = f.name.endswith(INDEX_SUFFIX) and origin is not None and (
            spec == origin or (spec is None and recorded is not None and recorded.check.verified))
        index = index_record(job.m)
        verdict = trust.judge_file(claim, Observed(
            size, sha, crc, index_verified=self.index_check is not None and self.index_check.verified,
            index=index.name if index else "?", index_source=self.index_source,
            origin=redact(origin) if from_origin else None, recorded_sha256=recorded.sha256 if recorded else None,
            reused=reuse, accept_different_shared=job.accept_different_shared))
        if verdict.warning is not None:
            job.warn(verdict.warning)
        if verdict.refusal is not None or verdict.check is None:
            raise WrongFile(verdict.refusal)
        if f.name.endswith(INDEX_SUFFIX):
            self.index_check, self.index_source = verdict.check, source
        return FileResult(f.name, size, sha, verdict.check, verdict.against, source, fetched)
