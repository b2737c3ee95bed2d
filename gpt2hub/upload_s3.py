"""Mirror uploads to S3: each planned file as one checked PUT or a resumable multipart upload.

Every object carries its whole file's sha256 in user metadata (`x-amz-meta-sha256`) and is sent with
`ChecksumAlgorithm=SHA256`, so the store checks every part (composite checksum; SeaweedFS and S3
refuse a full-object SHA-256 on multipart). An object with the same size and metadata sha256 is
skipped, so a second run sends nothing. A multipart upload interrupted on this machine resumes from
the parts the store already holds (if the file is unchanged); any other unfinished upload of the same
key is aborted before the file is sent again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from . import atomic, s3, settings, store
from .errors import MirrorError
from .mirror_plan import Destination, MirrorFile, MirrorReport
from .mirror_proof import check_files
from .progress import ProgressEvent, Reporter, bytes_counter, emit

SHA256_METADATA = "sha256"  # sent as x-amz-meta-sha256
MiB = 1 << 20
# ~370 parts for the 6.2 GB 1558M data file (S3: 5 MiB..5 GiB a part, 10,000 parts); on loopback SeaweedFS
# 8-16 MiB parts went as fast as 64 MiB ones (benchmarks/mirror.py), at an eighth of the memory in flight.
PART_SIZE = 16 * MiB
MAX_PARTS = 10_000
UPLOADS_RECORD = ".mirror-uploads.json"  # in <home>/<name>/: multipart uploads begun here, for resuming


def upload(report: MirrorReport, where: Destination, endpoint_url: str | None, dry_run: bool,
           progress: Reporter | None, part_size: int) -> None:
    """Check the bucket, prove the files, then send what the bucket does not already hold (manifest last)."""
    if not 5 * MiB <= part_size <= 5 * 1024 * MiB:
        raise MirrorError(f"part size {part_size:,} is outside S3's 5 MiB..5 GiB")
    client = _s3_client(endpoint_url)
    bucket = where.bucket_or_repo
    endpoint = s3.endpoint(endpoint_url) or "aws"
    resumable = _ResumableUploads(store.home() / report.release / UPLOADS_RECORD)
    with _s3_errors(where, endpoint_url):
        client.head_bucket(Bucket=bucket)
        check_files(report, progress)
        for f in report.files:
            f.action = "skip" if _same_object(client, bucket, f) else "send"
        if dry_run:
            return
        to_send = [f for f in report.files if f.action == "send"]
        # The manifest goes last, so a reader never finds it beside files that are not there yet.
        to_send.sort(key=lambda f: f.format == "manifest")
        pending = _pending_uploads(client, bucket, {f.dest for f in to_send})
        task = f"mirror {report.release}"
        emit(progress, ProgressEvent.begin(task, sum(f.size for f in to_send)))
        advance = bytes_counter(progress, task)
        try:
            lock = threading.Lock()

            def sent(n: int, resumed: bool = False) -> None:
                with lock:
                    if not resumed:
                        report.bytes_sent += n
                    advance(n)

            for f in to_send:
                if f.source is not None and f.size > part_size:
                    multipart = _Multipart(client, bucket, f, part_size, resumable, endpoint, sent)
                    report.aborted_uploads += multipart.run(pending.get(f.dest, []))
                else:
                    for upload_id in pending.get(f.dest, []):
                        client.abort_multipart_upload(Bucket=bucket, Key=f.dest, UploadId=upload_id)
                        report.aborted_uploads.append(f.dest)
                    _put(client, bucket, f)
                    sent(f.size)
                if not _same_object(client, bucket, f):
                    raise MirrorError(f"s3://{bucket}/{f.dest}: after upload the store reports another size or sha256")
                f.action = "sent"
        finally:
            emit(progress, ProgressEvent.end(task))
        for f in report.files:
            if f.action == "skip":
                f.action = "skipped"


def _s3_client(endpoint_url: str | None):
    """A client addressed as `pull --source s3://…` addresses it (gpt2hub.s3), of boto3's default session where
    the caller set one up (else of a new session: boto3's own default is left as it was)."""
    import boto3

    return s3.client(endpoint_url, session=boto3.DEFAULT_SESSION, connect_timeout=10, read_timeout=120,
                     retries={"max_attempts": 3, "mode": "standard"})


@contextmanager
def _s3_errors(where: Destination, endpoint_url: str | None) -> Iterator[None]:
    """Turn botocore's exceptions into one line; credentials never appear in them."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError, EndpointConnectionError,
                                     NoCredentialsError, PartialCredentialsError)

    endpoint = endpoint_url or "the default S3 endpoint"
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise MirrorError(f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                          "AWS_PROFILE, or ~/.aws/credentials)") from None
    except (EndpointConnectionError, BotoConnectionError) as e:
        raise MirrorError(f"{where}: cannot connect to {endpoint} ({type(e).__name__}: connection refused or "
                          "unreachable; check --endpoint-url)") from None
    except ClientError as e:
        raise MirrorError(_client_error_line(where, e.response.get("Error", {}), e.operation_name)) from None
    except S3UploadFailedError as e:
        cause = e.__context__
        if isinstance(cause, ClientError):
            raise MirrorError(_client_error_line(where, cause.response.get("Error", {}), cause.operation_name)) from None
        raise MirrorError(f"{where}: upload failed ({str(e).splitlines()[0]})") from None


def _client_error_line(where: Destination, error: dict, operation: str) -> str:
    code, message = str(error.get("Code", "")), error.get("Message", "")
    if code in ("NoSuchBucket", "404") and operation in ("HeadBucket", "PutObject", "CreateMultipartUpload",
                                                          "ListMultipartUploads", "HeadObject"):
        return f"s3://{where.bucket_or_repo}: no such bucket"
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
        return f"{where}: access denied by the store ({code}); check the credentials and the bucket policy"
    return f"{where}: {operation} failed: {code} {message}".rstrip()


def _object_args(f: MirrorFile) -> dict:
    return {"Metadata": {SHA256_METADATA: f.sha256},
            "ContentType": "application/json" if f.dest.endswith(".json") else "application/octet-stream"}


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _put(client, bucket: str, f: MirrorFile) -> None:
    """One PUT; botocore sends the body's SHA-256 (x-amz-checksum-sha256) and the store checks it."""
    if f.source is None:
        client.put_object(Bucket=bucket, Key=f.dest, Body=f.data, ChecksumAlgorithm="SHA256", **_object_args(f))
        return
    with open(f.source, "rb") as body:
        client.put_object(Bucket=bucket, Key=f.dest, Body=body, ChecksumAlgorithm="SHA256", **_object_args(f))


class _ResumableUploads:
    """Multipart uploads this machine began and has not completed, so a later run can resume them.

    Two mirrors of one release at once may overwrite each other's entries; the loser's upload is then
    aborted and sent again on its next run rather than resumed (never completed wrongly).
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            self.entries: dict[str, dict] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.path, self.entries, sort_keys=True)

    def get(self, ident: str) -> dict | None:
        return self.entries.get(ident)

    def put(self, ident: str, entry: dict) -> None:
        self.entries[ident] = entry
        self._save()

    def drop(self, ident: str) -> None:
        if self.entries.pop(ident, None) is not None:
            self._save()


class _Multipart:
    """One file as a multipart upload: parts in parallel, each with its SHA-256 checked by the store.

    Driven through the low-level API rather than s3transfer, which aborts on failure and cannot resume
    across runs: an upload this machine began for the same bytes (same sha256, size and part size, per
    the local record) is resumed from the parts the store lists.
    """

    def __init__(self, client, bucket: str, f: MirrorFile, part_size: int, resumable: _ResumableUploads,
                 endpoint: str, sent: Callable[..., None]):
        self.client, self.bucket, self.f = client, bucket, f
        self.resumable, self.ident, self.sent = resumable, f"{endpoint} {bucket} {f.dest}", sent
        part_size = max(part_size, -(-f.size // MAX_PARTS // MiB) * MiB)  # grow the parts past 10,000 of them
        self.part_size = part_size
        self.sizes = [min(part_size, f.size - start) for start in range(0, f.size, part_size)]
        self.want = {"sha256": f.sha256, "size": f.size, "part_size": part_size}

    def run(self, pending: list[str]) -> list[str]:
        """Upload (or finish) the file; returns the keys of stale uploads aborted on the way."""
        aborted: list[str] = []
        entry = self.resumable.get(self.ident)
        upload_id = entry["upload_id"] if entry and entry.get("upload_id") in pending \
            and {k: entry.get(k) for k in self.want} == self.want else None
        for other in pending:
            if other != upload_id:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.f.dest, UploadId=other)
                aborted.append(self.f.dest)
        if upload_id is not None:
            try:
                return aborted + self._finish(upload_id, self._listed_parts(upload_id))
            except _StartOver:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.f.dest, UploadId=upload_id)
                aborted.append(self.f.dest)
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.f.dest, ChecksumAlgorithm="SHA256",
                                                        **_object_args(self.f))["UploadId"]
        self.resumable.put(self.ident, {**self.want, "upload_id": upload_id})
        return aborted + self._finish(upload_id, {})

    def _listed_parts(self, upload_id: str) -> dict[int, str]:
        """Part number -> ETag of the parts the store holds at their expected size."""
        done = {}
        pages = self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=self.f.dest, UploadId=upload_id)
        for page in pages:
            for p in page.get("Parts", []):
                n = p["PartNumber"]
                if 1 <= n <= len(self.sizes) and p["Size"] == self.sizes[n - 1]:
                    done[n] = p["ETag"]
        return done

    def _part(self, upload_id: str, n: int, done: dict[int, str]) -> dict:
        start, size = (n - 1) * self.part_size, self.sizes[n - 1]
        etag = done.get(n)
        if etag is not None:
            with open(self.f.source, "rb") as fh:
                fh.seek(start)
                data = fh.read(size)
            # A plain-MD5 ETag (no SSE-KMS) must match the local bytes too; else the part is sent again.
            if not re.fullmatch(r'"?[0-9a-f]{32}"?', etag) or etag.strip('"') == hashlib.md5(data).hexdigest():
                self.sent(size, resumed=True)
                self.f.resumed_bytes += size
                return {"PartNumber": n, "ETag": etag, "ChecksumSHA256": _b64_sha256(data)}
        from s3transfer.utils import ReadFileChunk

        # Streamed from the file (a seekable window botocore can rewind for retries), not held in memory;
        # botocore computes the part's SHA-256, sends it, and the store refuses the part if it differs.
        with ReadFileChunk.from_filename(str(self.f.source), start, size, enable_callbacks=False) as body:
            reply = self.client.upload_part(Bucket=self.bucket, Key=self.f.dest, UploadId=upload_id, PartNumber=n,
                                            Body=body, ChecksumAlgorithm="SHA256")
        self.sent(size)
        checksum = reply.get("ChecksumSHA256")
        if checksum is None:  # a store that checks but does not echo part checksums
            with open(self.f.source, "rb") as fh:
                fh.seek(start)
                checksum = _b64_sha256(fh.read(size))
        return {"PartNumber": n, "ETag": reply["ETag"], "ChecksumSHA256": checksum}

    def _finish(self, upload_id: str, done: dict[int, str]) -> list[str]:
        from botocore.exceptions import ClientError

        # Parts in flight, each streamed from the file.
        pool = ThreadPoolExecutor(settings.CONNECTIONS, thread_name_prefix="gpt2hub-mirror")
        try:
            parts = list(pool.map(lambda n: self._part(upload_id, n, done), range(1, len(self.sizes) + 1)))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.f.dest, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except ClientError:
            if done:  # the resumed upload did not take its old parts (another tool's upload?): start over
                self.f.resumed_bytes = 0
                raise _StartOver() from None
            raise
        self.resumable.drop(self.ident)
        return []


class _StartOver(Exception):
    """A resumed upload the store would not complete: abort it and send the file afresh (never escapes)."""


def _same_object(client, bucket: str, f: MirrorFile) -> bool:
    """True when the object exists with this size and this sha256 in its metadata."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=f.dest)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return head.get("ContentLength") == f.size and head.get("Metadata", {}).get(SHA256_METADATA) == f.sha256


def _pending_uploads(client, bucket: str, keys: set[str]) -> dict[str, list[str]]:
    """Unfinished multipart uploads of `keys` (left by an interrupted run): key -> upload ids."""
    found: dict[str, list[str]] = {}
    for prefix in sorted({k.rsplit("/", 1)[0] + "/" if "/" in k else "" for k in keys}):
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            for unfinished in page.get("Uploads", []):
                if unfinished["Key"] in keys:
                    found.setdefault(unfinished["Key"], []).append(unfinished["UploadId"])
    return found
