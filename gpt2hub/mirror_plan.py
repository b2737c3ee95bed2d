"""What a mirror sends and where: the destination, the formats, and each local file under its name there.

Only cheap checks happen here (the files are there, at the sizes pull saw); hashing and the proof of
conversions wait in gpt2hub.mirror_proof until the destination has answered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import converters, store
from .errors import Gpt2hubError, MirrorError
from .registry import MIRROR_MANIFEST, ReleaseManifest
from .trust import HashStatus

DEFAULT_FORMATS = {"s3": None, "hf": tuple(f.name for f in converters.formats() if f.hub_default)}  # None: all present
# Where each format's files go in a Hub repo: a prefix, or "" for the repo root.
HUB_PREFIX = {**{f.name: f.hub_prefix for f in converters.formats()}, "original": "original/"}


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
    """Where a mirror goes: an S3 bucket and key prefix, or a Hub repo."""

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


def select_formats(m: ReleaseManifest, where: Destination, asked: list[str] | tuple[str, ...] | None) -> list[str]:
    """The formats to send, in the store's order: those asked, else the destination's default."""
    if asked is None:
        default = DEFAULT_FORMATS[where.scheme]
        asked = default if default is not None else ["original", *store.converted_formats(m.name)]
    unknown = [f for f in asked if f not in store.FORMATS]
    if unknown or not asked:
        raise MirrorError(f"unknown format {', '.join(unknown) or '(none)'}; formats: {', '.join(store.FORMATS)}")
    return [f for f in store.FORMATS if f in asked]


def local_files(m: ReleaseManifest, where: Destination, fmts: list[str]) -> list[MirrorFile]:
    """The files to mirror, not yet hashed, with their destination names; errors for what is not there."""
    files: list[MirrorFile] = []
    for fmt in fmts:
        if fmt == "original":
            files.extend(original_files(m))
        else:
            files.extend(_converted_files(m, fmt))
    if where.scheme == "s3":
        folder = "/".join(p for p in (where.prefix, m.folders[0]) if p)
        for f in files:
            f.dest = f"{folder}/{f.dest}" if f.format == "original" else f"{folder}/{f.format}/{f.dest}"
        files.append(generated_file(f"{folder}/{MIRROR_MANIFEST}", _manifest_bytes(m), "manifest"))
        return files
    by_dest: dict[str, MirrorFile] = {}
    for f in files:
        f.dest = HUB_PREFIX[f.format] + f.dest
        by_dest.setdefault(f.dest, f)  # pytorch's config.json etc. repeat safetensors' ones: keep the first
    if "original" in fmts:
        path = HUB_PREFIX["original"] + MIRROR_MANIFEST
        by_dest[path] = generated_file(path, _manifest_bytes(m), "manifest")
    return list(by_dest.values())


def original_files(m: ReleaseManifest) -> list[MirrorFile]:
    """The pulled original files, each with the sha256 it must still have and how pull checked it."""
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
        except Gpt2hubError as e:
            raise MirrorError(str(e)) from None
        try:
            size = path.stat().st_size
        except OSError:
            raise MirrorError(f"{path}: missing; run `gpt2hub pull {m.name}` again") from None
        published = rec.status == HashStatus.PUBLISHED
        if published and rec.size is not None and size != rec.size:
            raise MirrorError(f"{path}: {size:,} bytes, the manifest says {rec.size:,}; run `gpt2hub pull {m.name} --force`")
        # A published hash binds; otherwise the one pull saw (it may differ from an *expected* hash).
        want = rec.sha256 if published else getattr(seen.get(rec.name), "sha256", None) or rec.sha256
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


def _manifest_bytes(m: ReleaseManifest) -> bytes:
    return (json.dumps(m.to_dict(), indent=1) + "\n").encode()


def generated_file(dest: str, data: bytes, fmt: str) -> MirrorFile:
    """A file made here (the manifest, the model card), sent from memory."""
    return MirrorFile(dest, len(data), hashlib.sha256(data).hexdigest(), fmt, data=data)
