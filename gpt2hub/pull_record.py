"""A pull's record (`integrity.Record`): read to skip a release already verified, upgraded once OpenAI's
origin answers for an index pulled without it, and written when a pull ends."""

from __future__ import annotations

from . import store
from .errors import TransferError
from .integrity import FileCheck, Record, read_record, write_record
from .pull_file import FileResult
from .pull_plan import PullJob, file_size, index_record
from .registry import sha256_file
from .remote import redact
from .tfcheckpoint import MAX_INDEX_BYTES
from .trust import Check, Claim, size_refusal


def already_verified(job: PullJob) -> list[FileResult] | None:
    """The files as the record has them, when every one asked for is there unchanged (`job.verify`: re-hashed);
    None: pull them."""
    record = read_record(job.dest)
    if record is None or not {f.name for f in job.files} <= set(record.files):
        return None
    out = []
    for f in job.files:
        info, claim = record.files[f.name], Claim.of(f)
        if file_size(job.dest / f.name) != info.size or size_refusal(claim, info.size) is not None:
            return None
        if job.verify:
            seen = sha256_file(store.inside(job.dest, f.name))
            want = f.sha256 if claim.binding else info.sha256
            if seen != want:
                job.warn(f"{f.name}: sha256 {seen[:12]}… differs from {want[:12] if want else '?'}…; fetching it again")
                return None
        out.append(FileResult(f.name, info.size, info.sha256, info.check, info.against, None))
    return _vouched_by_origin(job, out)


def _vouched_by_origin(job: PullJob, files: list[FileResult]) -> list[FileResult] | None:
    """Files pulled while the origin was out of reach, re-vouched for now that it answers.

    The origin's index is fetched (a few KB); if it is the index on disk, the data file's CRC32Cs were
    OpenAI's all along and the record says so; if it differs, the release is pulled again. Where the
    origin still cannot be reached the files stay as they were recorded.
    """
    index, origin = index_record(job.m), job.sources.origin
    if origin is None or index is None or all(f.check.verified for f in files if f.name == index.name):
        return files
    try:
        remote = job.sources.source(origin).remote(job.m.folders[0], index.name)
        size = job.sources.stat(remote).size
        if size > MAX_INDEX_BYTES or index.size is not None and size != index.size:
            raise TransferError(f"{remote.url}: {size:,} bytes, the manifest says "
                                f"{'nothing' if index.size is None else f'{index.size:,}'}", retryable=False)
        origin_bytes = b"".join(remote.read(0, size, whole=True))
    except TransferError:
        return files
    if origin_bytes != store.inside(job.dest, index.name).read_bytes():
        job.warn(f"{index.name}: OpenAI's index differs from the one this release was pulled with; pulling again")
        job.refetch_index = True
        return None
    against = f"fetched from OpenAI ({redact(origin)})"
    upgraded = []
    for f in files:
        if f.name == index.name or f.check == Check.MIRROR_CRC32C:
            how = against if f.name == index.name else f"every tensor's CRC32C in the index from OpenAI ({index.name})"
            f = FileResult(f.name, f.size, f.sha256, Check.ORIGIN_CRC32C, how, f.source)
        upgraded.append(f)
    earlier = read_record(job.dest)
    _write_record(job, {**(earlier.files if earlier is not None else {}), **_checks(upgraded)})
    return upgraded


def record_pull(job: PullJob, results: list[FileResult]) -> None:
    """Record what vouched for each file just pulled; a pull of some files (--only) keeps what an earlier pull
    verified of the others, while it is unchanged."""
    files = _checks(results)
    earlier = read_record(job.dest)
    for f in job.m.files:
        info = earlier.files.get(f.name) if earlier is not None else None
        if f.name not in files and info is not None and file_size(job.dest / f.name) == info.size:
            files[f.name] = info
    _write_record(job, files)


def _checks(results: list[FileResult]) -> dict[str, FileCheck]:
    return {r.name: FileCheck(r.size, r.sha256, r.check, r.against, r.source) for r in results}


def _write_record(job: PullJob, files: dict[str, FileCheck]) -> None:
    m = job.m
    write_record(job.dest, Record(m.name, files, str(m.path) if m.path else None,
                                  partial=set(files) != {f.name for f in m.files}))
