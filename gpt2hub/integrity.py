"""What pull verified, per file and against what: the typed record `<release>/original/.gpt2hub-verified.json`.

Every reader and writer of that record goes through here, and every JSON file gpt2hub writes goes
through `gpt2hub.atomic` (here `atomic_write_json`), so no reader ever sees half a file.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_json

RECORD_NAME = ".gpt2hub-verified.json"  # in <home>/<name>/original/, written once every file checked out
MAX_RECORD_BYTES = 4 << 20
MEASURED_LABEL = "checked: the sha256 you measured yourself (manifest create)"  # never "published": not OpenAI's


atomic_write_json = write_json  # the name download and mirroring import


class Check(str, enum.Enum):
    """What a file's bytes were checked against, strongest first; the first four count as verified."""

    PUBLISHED_SHA256 = "published-sha256"  # the sha256 OpenAI published, from a shipped manifest
    MEASURED_SHA256 = "measured-sha256"  # the sha256 the user measured from their own files (`manifest create`)
    SHARED_SHA256 = "shared-sha256"  # the sha256 of the identical file OpenAI published for 124M
    ORIGIN_CRC32C = "origin-crc32c"  # every tensor's CRC32C, from an index fetched from OpenAI's origin (or one
    # whose own sha256 was verified); for the index itself: fetched from the origin
    MIRROR_CRC32C = "mirror-crc32c"  # CRC32C from an index that came from a mirror only
    MIRROR_SHA256 = "mirror-sha256"  # the sha256 a mirror's own manifest gives
    SIZE = "size"  # the byte count only

    @property
    def verified(self) -> bool:
        return self in (Check.PUBLISHED_SHA256, Check.MEASURED_SHA256, Check.SHARED_SHA256, Check.ORIGIN_CRC32C)

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def users_own(self) -> bool:
        """True for the sha256 the user measured from their own files: never to be called published."""
        return self is Check.MEASURED_SHA256


_LABELS = {
    Check.PUBLISHED_SHA256: "verified: published sha256",
    Check.MEASURED_SHA256: MEASURED_LABEL,
    Check.SHARED_SHA256: "verified: sha256 of 124M's identical published file",
    Check.ORIGIN_CRC32C: ("verified: CRC32C from an index fetched from OpenAI (or matching a published sha256, "
                          "or the one you measured yourself)"),
    Check.MIRROR_CRC32C: "not verified: CRC32C from a mirror's index only",
    Check.MIRROR_SHA256: "not verified: the mirror's own sha256 only",
    Check.SIZE: "not verified: size only",
}


@dataclass(frozen=True)
class FileCheck:
    """One file as pull left it: its size and sha256, what vouched for them, and where they came from."""

    size: int
    sha256: str | None
    check: Check
    against: str = ""  # the hash or index the bytes matched, in words
    source: str | None = None  # where the bytes came from (secrets removed); None: already on disk

    @property
    def verified(self) -> bool:
        return self.check.verified

    def to_dict(self) -> dict:
        return {"size": self.size, "sha256": self.sha256, "check": self.check.value, "verified": self.verified,
                "against": self.against, "source": self.source}


@dataclass(frozen=True)
class Record:
    """Pull's record of one release folder."""

    name: str
    files: dict[str, FileCheck]
    manifest: str | None = None
    verified_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    partial: bool = False  # some of the release's files only (`pull --only`)

    @property
    def verified(self) -> bool:
        """True when every file was checked against something OpenAI published (or the user's own measured sha256)."""
        return bool(self.files) and all(f.verified for f in self.files.values())

    def to_dict(self) -> dict:
        return {"name": self.name, "manifest": self.manifest, "verified_at": self.verified_at, "partial": self.partial,
                "verified": self.verified, "files": {n: f.to_dict() for n, f in sorted(self.files.items())}}


def read_record(folder: Path | str) -> Record | None:
    """The record in a release folder, or None where there is none or it is not one (a damaged record counts for nothing)."""
    path = Path(folder) / RECORD_NAME
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {}
        for name, info in data["files"].items():
            size, sha = info["size"], info.get("sha256")
            if not isinstance(name, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
                return None
            files[name] = FileCheck(size, sha if isinstance(sha, str) else None, Check(info.get("check") or _legacy(info)),
                                    str(info.get("against") or ""), info.get("source") if isinstance(info.get("source"), str) else None)
        return Record(str(data.get("name") or Path(folder).parent.name), files,
                      data.get("manifest") if isinstance(data.get("manifest"), str) else None,
                      str(data.get("verified_at") or ""), data.get("partial") is True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def _legacy(info: dict) -> str:
    """The check kind of a record written before kinds existed (sha256_status / verified_by)."""
    if info.get("verified_by") == "sha256" and info.get("sha256_status") in ("published", "measured"):
        return (Check.PUBLISHED_SHA256 if info["sha256_status"] == "published" else Check.MEASURED_SHA256).value
    return Check.MIRROR_CRC32C.value if info.get("verified_by") == "crc32c" else Check.SIZE.value


def write_record(folder: Path | str, record: Record) -> Path:
    return atomic_write_json(Path(folder) / RECORD_NAME, record.to_dict(), sort_keys=True)
