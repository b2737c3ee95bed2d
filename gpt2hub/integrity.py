"""What pull verified, per file and against what: the typed record `<release>/original/.gpt2hub-verified.json`.

Every reader and writer of that record goes through here; it is written through `gpt2hub.atomic`, so no
reader ever sees half of it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_json
from .trust import Check, HashStatus

RECORD_NAME = ".gpt2hub-verified.json"  # in <home>/<name>/original/, written once every file checked out
MAX_RECORD_BYTES = 4 << 20


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
    if info.get("verified_by") == "sha256" and info.get("sha256_status") in (HashStatus.PUBLISHED, HashStatus.MEASURED):
        return HashStatus(info["sha256_status"]).check.value
    return Check.MIRROR_CRC32C.value if info.get("verified_by") == "crc32c" else Check.SIZE.value


def write_record(folder: Path | str, record: Record) -> Path:
    return write_json(Path(folder) / RECORD_NAME, record.to_dict(), sort_keys=True)
