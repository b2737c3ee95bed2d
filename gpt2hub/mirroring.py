"""Mirror a pulled release and its conversions to S3 (`s3://bucket/prefix`) or a Hub repo (`hf://org/repo`).

S3 layout, OpenAI's own plus what `gpt2hub pull --source s3://bucket/prefix` reads back:

    <prefix>/<folder>/<file>                    the original files (folder = manifest.folders[0])
    <prefix>/<folder>/<format>/<path>           each converted format, as `gpt2hub convert` wrote it
    <prefix>/<folder>/gpt2hub-manifest.json     the release manifest, uploaded last

Every object carries its whole file's sha256 in user metadata (`x-amz-meta-sha256`) and is sent with
`ChecksumAlgorithm=SHA256`, so the store checks every part (composite checksum; SeaweedFS and S3
refuse a full-object SHA-256 on multipart). An object with the same size and metadata sha256 is
skipped, so a second run sends nothing. A multipart upload interrupted on this machine resumes from
the parts the store already holds (if the file is unchanged); any other unfinished upload of the same
key is aborted before the file is sent again.

Hub layout: the safetensors folder (and pytorch/GGUF files, as asked) at the repo root, the original
TF files under `original/`, and a generated README.md model card, all in one commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import atomic, converters, hashes, offline, registry, store
from .errors import Gpt2hubError, MirrorError
from .integrity import atomic_write_json
from .progress import ProgressEvent, Reporter, TerminalProgress, bytes_counter, emit
from .registry import MIRROR_MANIFEST, ReleaseManifest

SHA256_METADATA = "sha256"  # sent as x-amz-meta-sha256
MiB = 1 << 20
# ~370 parts for the 6.2 GB 1558M data file (S3: 5 MiB..5 GiB a part, 10,000 parts); on loopback SeaweedFS
# 8-16 MiB parts went as fast as 64 MiB ones (benchmarks/mirror.py), at an eighth of the memory in flight.
PART_SIZE = 16 * MiB
MAX_PARTS = 10_000
CONCURRENCY = 8  # parts in flight, each streamed from the file
UPLOADS_RECORD = ".mirror-uploads.json"  # in <home>/<name>/: multipart uploads begun here, for resuming
DEFAULT_FORMATS = {"s3": None, "hf": tuple(f.name for f in converters.formats() if f.hub_default)}  # None: all present
# Where each format's files go in a Hub repo: a prefix, or "" for the repo root.
HUB_PREFIX = {**{f.name: f.hub_prefix for f in converters.formats()}, "original": "original/"}
HUB_CARD = "README.md"
HASH_TASK = "sha256"
# Under the home: {absolute path: [size, mtime_ns, ctime_ns, source, sha256, how, when]} of converted files that passed
# the exact weight proof against the original `source` (its files' sha256 as pull recorded them); trusted while
# size, mtime and ctime are unchanged (as gpt2hub.hashes trusts its memo) and the original is the same.
PROOFS = Path(".cache") / "proven.json"


@dataclass
class MirrorFile:
    """One file of a mirror: where it comes from, where it goes, and what happened to it."""

    dest: str  # S3 key or path in the Hub repo (relative to its format's folder until placed)
    size: int
    sha256: str
    format: str
    source: Path | None = None  # a local file, or None for generated content in `data`
    expected: str | None = field(default=None, repr=False)  # the sha256 the local file must have
    data: bytes | None = field(default=None, repr=False)
    action: str = "send"  # plan: send | skip; after the run: sent | skipped (S3) or committed (Hub)
    resumed_bytes: int = 0  # S3: bytes an interrupted earlier run had already sent
    check: str = ""  # how the local file was checked before upload, in words
    checked_at: str = ""  # when (UTC)

    def to_dict(self) -> dict:
        return {"dest": self.dest, "size": self.size, "sha256": self.sha256, "format": self.format,
                "source": str(self.source) if self.source else None, "action": self.action,
                "resumed_bytes": self.resumed_bytes, "check": self.check, "checked_at": self.checked_at}


@dataclass
class MirrorReport:
    """What a mirror run sent, skipped or (with dry_run) would send."""

    release: str
    destination: str
    formats: list[str]
    dry_run: bool
    files: list[MirrorFile]
    bytes_sent: int | None = 0  # None for the Hub, where huggingface_hub decides what to transfer
    seconds: float = 0.0
    aborted_uploads: list[str] = field(default_factory=list)
    commit: str | None = None
    manifest: ReleaseManifest | None = field(default=None, repr=False)

    @property
    def bytes_to_send(self) -> int:
        return sum(f.size for f in self.files if f.action in ("send", "sent", "committed"))

    def to_dict(self) -> dict:
        return {"release": self.release, "destination": self.destination, "formats": self.formats,
                "dry_run": self.dry_run, "bytes_sent": self.bytes_sent, "bytes_to_send": self.bytes_to_send,
                "seconds": round(self.seconds, 3), "aborted_uploads": self.aborted_uploads,
                "commit": self.commit, "files": [f.to_dict() for f in self.files]}


@dataclass(frozen=True)
class Destination:
    scheme: str  # "s3" or "hf"
    bucket_or_repo: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket_or_repo}" + (f"/{self.prefix}" if self.prefix else "")


def parse_destination(dest: str) -> Destination:
    """`s3://bucket[/prefix]` or `hf://org/repo`; anything else is a MirrorError."""
    scheme, sep, rest = dest.partition("://")
    rest = rest.strip("/")
    if sep and scheme == "s3" and rest:
        from . import s3
        from .errors import S3AddressError

        try:
            where = s3.parse(dest)
        except S3AddressError as e:
            raise MirrorError(str(e)) from None
        return Destination("s3", where.bucket, where.prefix)
    if sep and scheme == "hf" and rest.count("/") == 1 and all(rest.split("/")):
        return Destination("hf", rest)
    raise MirrorError(f"{dest}: not a mirror destination; use s3://bucket/prefix or hf://org/repo")


def mirror(
    name: str,
    dest: str,
    *,
    formats: list[str] | tuple[str, ...] | None = None,
    endpoint_url: str | None = None,
    dry_run: bool = False,
    private: bool = False,
    revision: str | None = None,
    manifest: Path | str | None = None,
    progress: Reporter | None = None,
    part_size: int | None = None,
) -> MirrorReport:
    """Upload a pulled release (and its conversions) to `dest` (see gpt2hub.mirror)."""
    offline.refuse(f"mirror to {dest}")
    part_size = part_size or PART_SIZE
    m = registry.resolve(name, manifest)
    where = parse_destination(dest)
    if where.scheme == "s3" and (private or revision):
        raise MirrorError(f"{where}: --private and --revision apply to hf:// destinations only")
    fmts = _formats(m, where, formats)
    files = _local_files(m, where, fmts)  # cheap checks first; hashing waits until the destination answered
    report = MirrorReport(m.name, str(where), fmts, dry_run, files, manifest=m)
    started = time.monotonic()
    if where.scheme == "s3":
        _mirror_s3(report, where, endpoint_url, dry_run, progress, part_size)
    else:
        _mirror_hub(report, m, where, endpoint_url, dry_run, private, revision, progress)
    report.seconds = time.monotonic() - started
    return report


# --- what to send --------------------------------------------------------------------------------

def _formats(m: ReleaseManifest, where: Destination, asked: list[str] | tuple[str, ...] | None) -> list[str]:
    if asked is None:
        default = DEFAULT_FORMATS[where.scheme]
        asked = default if default is not None else ["original", *store.converted_formats(m.name)]
    unknown = [f for f in asked if f not in store.FORMATS]
    if unknown or not asked:
        raise MirrorError(f"unknown format {', '.join(unknown) or '(none)'}; formats: {', '.join(store.FORMATS)}")
    return [f for f in store.FORMATS if f in asked]


def _local_files(m: ReleaseManifest, where: Destination, fmts: list[str]) -> list[MirrorFile]:
    """The files to mirror, hashed, with their destination names; errors for what is not there."""
    files: list[MirrorFile] = []
    for fmt in fmts:
        if fmt == "original":
            files.extend(_original_files(m))
        else:
            files.extend(_converted_files(m, fmt))
    if where.scheme == "s3":
        folder = "/".join(p for p in (where.prefix, m.folders[0]) if p)
        for f in files:
            f.dest = f"{folder}/{f.dest}" if f.format == "original" else f"{folder}/{f.format}/{f.dest}"
        files.append(_generated(f"{folder}/{MIRROR_MANIFEST}", _manifest_bytes(m), "manifest"))
        return files
    by_dest: dict[str, MirrorFile] = {}
    for f in files:
        f.dest = HUB_PREFIX[f.format] + f.dest
        by_dest.setdefault(f.dest, f)  # pytorch's config.json etc. repeat safetensors' ones: keep the first
    if "original" in fmts:
        path = HUB_PREFIX["original"] + MIRROR_MANIFEST
        by_dest[path] = _generated(path, _manifest_bytes(m), "manifest")
    return list(by_dest.values())


def _original_files(m: ReleaseManifest) -> list[MirrorFile]:
    state = store.original_state(m.name)
    if state != "verified":
        raise MirrorError(f"{m.name} is not pulled ({state} at {store.release_dir(m.name)}); run `gpt2hub pull {m.name}` first")
    folder = store.release_dir(m.name)
    record = store.read_verified(m.name)
    seen = record.files if record is not None else {}
    out = []
    for rec in m.files:
        try:
            path = store.inside(folder, rec.name)
        except store.Gpt2hubError as e:
            raise MirrorError(str(e)) from None
        try:
            size = path.stat().st_size
        except OSError:
            raise MirrorError(f"{path}: missing; run `gpt2hub pull {m.name}` again") from None
        if rec.status == "published" and rec.size is not None and size != rec.size:
            raise MirrorError(f"{path}: {size:,} bytes, the manifest says {rec.size:,}; run `gpt2hub pull {m.name} --force`")
        # A published hash binds; otherwise the one pull saw (it may differ from an *expected* hash).
        want = rec.sha256 if rec.status == "published" else getattr(seen.get(rec.name), "sha256", None) or rec.sha256
        info = seen.get(rec.name)
        out.append(MirrorFile(rec.name, size, "", "original", source=path, expected=want,
                              check=info.check.label if info is not None else "not in pull's record: not verified",
                              checked_at=record.verified_at if info is not None else ""))
    return out


def _converted_files(m: ReleaseManifest, fmt: str) -> list[MirrorFile]:
    if fmt not in store.converted_formats(m.name):
        raise MirrorError(f"{m.name} has no {fmt} conversion at {store.release_dir(m.name, fmt)}; "
                          f"run `gpt2hub convert {m.name} --to {fmt}` first")
    root = store.release_dir(m.name, fmt)
    # Nothing a link leads outside the folder to: a converted format uploads only its own files.
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.resolve().is_relative_to(root.resolve())
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return [MirrorFile(p.relative_to(root).as_posix(), p.stat().st_size, "", fmt, source=p) for p in paths]


def _hash_files(report: MirrorReport, progress: Reporter | None) -> None:
    """sha256 of every local file (its metadata and skip key); an original must still match what pull verified,
    and every converted file must pass the exact weight proof (or have passed it, unchanged since)."""
    files, release = report.files, report.release
    converted = [f for f in files if f.source is not None and f.format in converters.names()]
    # The proof reads the original checkpoint: it must still be what pull verified, mirrored or not.
    sources = _original_files(report.manifest) if converted and not any(f.format == "original" for f in files) else []
    record = store.read_verified(release)
    source = json.dumps({n: i.sha256 for n, i in sorted(record.files.items())} if record is not None else None)
    proofs = _Proofs(store.home() / PROOFS, source)
    stamps = {}
    for f in converted:
        stamps[f.source] = _stamp(f.source)
        entry = proofs.get(f.source, stamps[f.source])
        if entry is not None:  # proven before and unchanged since: neither proven nor hashed again
            f.sha256, f.check, f.checked_at = entry
    local = [f for f in [*files, *sources] if f.source is not None and not f.sha256]
    for f in local:
        f.sha256 = hashes.known(f.source) or ""  # hashed before and unchanged since: not hashed again
    emit(progress, ProgressEvent.begin(HASH_TASK, sum(f.size for f in local if not f.sha256)))
    hashed = bytes_counter(progress, HASH_TASK)
    try:
        for f in local:
            if not f.sha256:
                f.sha256 = hashes.sha256(f.source, hashed)
            if f.expected is not None and f.sha256 != f.expected:
                raise MirrorError(f"{f.source}: sha256 {f.sha256} differs from the verified {f.expected}; "
                                  f"run `gpt2hub pull {release} --force`")
    finally:
        emit(progress, ProgressEvent.end(HASH_TASK))
    unproven = [f for f in converted if not f.check]
    if unproven:
        _prove(report.manifest, converted)
        for f in unproven:
            if _stamp(f.source) != stamps[f.source]:
                raise MirrorError(f"{f.source}: changed while it was being checked; not uploaded")
            proofs.put(f.source, stamps[f.source], f.sha256, f.check, f.checked_at)
        proofs.save()


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _outputs(m: ReleaseManifest, files: list[MirrorFile]) -> dict[Path, tuple[str, list[MirrorFile]]]:
    """Each converted output (a folder or a file) -> its format and the files of it to upload; a file that is
    part of no output convert wrote is refused."""
    found: dict[Path, tuple[str, list[MirrorFile]]] = {}
    for fmt in dict.fromkeys(f.format for f in files):
        form = converters.get(fmt)
        for out in form.outputs_in(store.release_dir(m.name, fmt)):
            if form.is_output(out):
                found[out] = (fmt, [])
    for f in files:
        out = next((o for o in found if f.source == o or o in f.source.parents), None)
        if out is None:
            raise MirrorError(f"{f.source}: not an output of `gpt2hub convert`, so nothing can check it; "
                              "not uploaded (remove it, or convert again)")
        found[out][1].append(f)
    return found


def _prove(m: ReleaseManifest, files: list[MirrorFile]) -> None:
    """Check every converted output that holds an unchecked file, all in one pass over the source (each source
    tensor read once): its tensors by verify's exact weight proof, its other files byte for byte as convert
    writes them. The first failure is a one-line MirrorError naming the file and what differs."""
    from .layout import HParams
    from .tfcheckpoint import Checkpoint
    from .verification.consumers import one_line
    from .verification.outputs import read_back
    from .verification.weights import prove

    original = store.release_dir(m.name)
    outputs = {o: v for o, v in _outputs(m, files).items() if any(not f.check for f in v[1])}
    try:
        hp = HParams.from_file(original / "hparams.json")
        read = []
        for out, (fmt, _) in outputs.items():
            try:
                read.append(read_back(fmt, out, hp, original))
            except Exception as e:  # a damaged output: the reader's own error, in one line
                raise MirrorError(f"{out}: not uploaded: it cannot be read back for the exact weight proof "
                                  f"({one_line(e)})") from None
        ckpt = Checkpoint(original)
        try:
            proofs = prove(ckpt, [(o.stored.tensors, o.stored.expected) for o in read])
        finally:
            ckpt.close()
    except Gpt2hubError as e:
        raise MirrorError(str(e)) from None
    except ImportError as e:  # f16/bf16 are checked with torch's rounding, block types with gguf-py's quantizer
        raise MirrorError(f"the exact weight proof of a conversion needs {e.name or 'a missing package'}: "
                          "pip install 'gpt2hub[torch]'") from None
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for o, proof in zip(read, proofs):
        if not proof.passed:
            detail = proof.detail()  # begins with the failing tensor's name, where one tensor failed
            where = next((s.path for name, s in o.stored.tensors.items() if re.match(re.escape(name) + r"[:\[ ]", detail)),
                         o.path)
            raise MirrorError(f"{where}: not uploaded: the exact weight proof failed: {detail}")
        if o.problems:
            raise MirrorError(f"{o.path}: not uploaded: its metadata differs from the release: {o.problems[0]}")
        fmt, members = outputs[o.path]
        tensor_files = {s.path.resolve() for s in o.stored.tensors.values()}
        side = _side_files(m, fmt, o.dtype, hp, original)
        for f in members:
            name = f.source.relative_to(o.path).as_posix() if f.source != o.path else f.source.name
            if f.source.resolve() in tensor_files:
                f.check = f"exact weight proof against the original checkpoint: {proof.detail()}"
            elif name in side:
                if f.source.read_bytes() != side[name]:
                    raise MirrorError(f"{f.source}: not uploaded: differs from the {name} convert writes for this release")
                f.check = "identical to the file convert writes for this release"
            elif name in converters.get(fmt).proof_reads:
                f.check = f"read and checked by the exact weight proof of {o.path.name}"
            else:
                raise MirrorError(f"{f.source}: not uploaded: not a file `gpt2hub convert` writes, so nothing "
                                  "checked it (remove it, or convert again)")
            f.checked_at = when


def _side_files(m: ReleaseManifest, fmt: str, dtype: str, hp, original: Path) -> dict[str, bytes]:
    """The files convert writes beside an output's weights (config, tokenizer), made again from the release."""
    write = converters.get(fmt).side_files
    if write is None:
        return {}
    from .version import __version__

    source = converters.Source(ckpt=None, hparams=hp, vocab=converters.Vocab.from_folder(original), release=m.name,
                               version=__version__)
    with tempfile.TemporaryDirectory(prefix="gpt2hub-mirror-") as tmp:
        write(source, Path(tmp), dtype)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


class _Proofs:
    """Converted files that passed the proof, by path, trusted while size, mtime and ctime are unchanged."""

    MAX_BYTES = 16 << 20  # ~300 bytes an entry: far more files than a store holds; a bigger file is not ours

    def __init__(self, path: Path, source: str):
        self.path, self.source = path, source
        try:
            data = json.loads(path.read_text()) if path.stat().st_size <= self.MAX_BYTES else {}
        except (OSError, ValueError, RecursionError):
            data = {}
        self.entries: dict = data if isinstance(data, dict) else {}

    def get(self, path: Path, stamp: list[int]) -> tuple[str, str, str] | None:
        """(sha256, how, when) if `path` was proven with this stamp."""
        e = self.entries.get(str(path.absolute()))
        if isinstance(e, list) and len(e) == 7 and e[:4] == [*stamp, self.source] \
                and all(isinstance(x, str) and x for x in e[4:]):
            return e[4], e[5], e[6]
        return None

    def put(self, path: Path, stamp: list[int], sha256: str, how: str, when: str) -> None:
        self.entries[str(path.absolute())] = [*stamp, self.source, sha256, how, when]

    def save(self) -> None:
        """Written for the next run; one that cannot be written costs a proof next time, nothing else."""
        try:
            self.entries = {p: e for p, e in self.entries.items() if os.path.exists(p)}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(self.path, self.entries, indent=None, sort_keys=True, durable=False)
        except (OSError, Gpt2hubError):
            pass


def _manifest_bytes(m: ReleaseManifest) -> bytes:
    return (json.dumps(m.to_dict(), indent=1) + "\n").encode()


def _generated(dest: str, data: bytes, fmt: str) -> MirrorFile:
    return MirrorFile(dest, len(data), hashlib.sha256(data).hexdigest(), fmt, data=data)


# --- S3 ------------------------------------------------------------------------------------------

def _s3_endpoint(endpoint_url: str | None) -> str | None:
    from . import s3

    return s3.endpoint(endpoint_url)


def _s3_client(endpoint_url: str | None):
    """A client of boto3's default session, addressed as `pull --source s3://…` addresses it (gpt2hub.s3)."""
    import boto3

    from . import s3

    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
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


def _mirror_s3(report: MirrorReport, where: Destination, endpoint_url: str | None, dry_run: bool,
               progress: Reporter | None, part_size: int) -> None:
    if not 5 * MiB <= part_size <= 5 * 1024 * MiB:
        raise MirrorError(f"part size {part_size:,} is outside S3's 5 MiB..5 GiB")
    client = _s3_client(endpoint_url)
    bucket = where.bucket_or_repo
    endpoint = _s3_endpoint(endpoint_url) or "aws"
    record = _UploadRecord(store.home() / report.release / UPLOADS_RECORD)
    with _s3_errors(where, endpoint_url):
        client.head_bucket(Bucket=bucket)
        _hash_files(report, progress)
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
                    upload = _Multipart(client, bucket, f, part_size, record, f"{endpoint} {bucket} {f.dest}", sent)
                    report.aborted_uploads += upload.run(pending.get(f.dest, []))
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


class _UploadRecord:
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
        atomic_write_json(self.path, self.entries, sort_keys=True)

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
    across runs (research/transfer.md §3.1): an upload this machine began for the same bytes (same
    sha256, size and part size, per the local record) is resumed from the parts the store lists.
    """

    def __init__(self, client, bucket: str, f: MirrorFile, part_size: int, record: _UploadRecord, ident: str, sent):
        self.client, self.bucket, self.f = client, bucket, f
        self.record, self.ident, self.sent = record, ident, sent
        part_size = max(part_size, -(-f.size // MAX_PARTS // MiB) * MiB)  # grow the parts past 10,000 of them
        self.part_size = part_size
        self.sizes = [min(part_size, f.size - start) for start in range(0, f.size, part_size)]
        self.want = {"sha256": f.sha256, "size": f.size, "part_size": part_size}

    def run(self, pending: list[str]) -> list[str]:
        """Upload (or finish) the file; returns the keys of stale uploads aborted on the way."""
        aborted: list[str] = []
        entry = self.record.get(self.ident)
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
        self.record.put(self.ident, {**self.want, "upload_id": upload_id})
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

        pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="gpt2hub-mirror")
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
        self.record.drop(self.ident)
        return []


class _StartOver(Exception):
    pass


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
            for upload in page.get("Uploads", []):
                if upload["Key"] in keys:
                    found.setdefault(upload["Key"], []).append(upload["UploadId"])
    return found


# --- Hugging Face Hub ----------------------------------------------------------------------------

@contextmanager
def _hub_errors(where: Destination, endpoint: str) -> Iterator[None]:
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:  # huggingface_hub 2.x sends through httpx2, 1.x through httpx
        from httpx2 import TransportError
    except ImportError:
        from httpx import TransportError

    try:
        yield
    except RepositoryNotFoundError:
        raise MirrorError(f"{where}: no such repo, or the token may not write to it") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise MirrorError(f"{where}: the Hub at {endpoint} rejected the token (401); check HF_TOKEN or `hf auth login`") from None
        if status == 403:
            raise MirrorError(f"{where}: access denied (403); the token needs write access to this repo") from None
        raise MirrorError(f"{where}: the Hub answered {status}: {str(e).splitlines()[0]}") from None
    except TransportError as e:
        raise MirrorError(f"{where}: cannot connect to the Hub at {endpoint} ({type(e).__name__})") from None
    except RuntimeError as e:  # huggingface_hub wraps a failed LFS upload: report its cause too
        cause = e.__cause__
        detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0]})" if cause and str(cause) else ""
        raise MirrorError(f"{where}: {str(e).splitlines()[0]}{detail}") from None
    except ValueError as e:  # the Hub's README metadata validation, among others
        raise MirrorError(f"{where}: {str(e).splitlines()[0]}") from None


def _mirror_hub(report: MirrorReport, m: ReleaseManifest, where: Destination, endpoint_url: str | None,
                dry_run: bool, private: bool, revision: str | None, progress: Reporter | None) -> None:
    from . import modelcard

    token = None
    if not dry_run:
        from huggingface_hub import get_token

        token = get_token()
        if not token:
            raise MirrorError(f"{where}: no Hugging Face token; set HF_TOKEN or run `hf auth login`")
    _hash_files(report, progress)
    originals = {f.dest.removeprefix(HUB_PREFIX["original"]): f.sha256 for f in report.files if f.format == "original"}
    if not originals:  # the card names the release's hashes even when the original files stay home
        originals = {r.name: r.sha256 for r in m.files if r.sha256}
    record = store.read_verified(m.name)
    card = modelcard.render(m, report.formats, originals, {f.dest: f.size for f in report.files},
                            checks={f.dest: (f.check, f.checked_at) for f in report.files if f.check},
                            pulled=record.files if record is not None else {})
    report.files.append(_generated(HUB_CARD, card.encode(), "card"))
    if dry_run:
        return
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    endpoint = endpoint_url or os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = where.bucket_or_repo
    ops = [CommitOperationAdd(path_in_repo=f.dest, path_or_fileobj=str(f.source) if f.source else f.data)
           for f in report.files]
    # huggingface_hub draws its own bars: only where the terminal reporter draws ours.
    quiet = not (isinstance(progress, TerminalProgress) and progress.bars) and not are_progress_bars_disabled()
    if quiet:  # turned off here, so turned back on after; the caller's own choice is left as it was
        disable_progress_bars()
    try:
        with _hub_errors(where, api.endpoint):
            api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
            info = api.create_commit(
                repo_id, ops, repo_type="model", revision=revision,
                commit_message=f"GPT-2 {m.name} ({', '.join(report.formats)}), mirrored with gpt2hub",
                commit_description=f"Release {m.name}; original sha256: "
                                   + ", ".join(f"{k}={v}" for k, v in sorted(originals.items())),
            )
    finally:
        if quiet:
            enable_progress_bars()
    report.commit = info.oid
    report.bytes_sent = None
    for f in report.files:
        f.action = "committed"
