"""A release manifest as data: its files, tensors and hparams, and the checks every manifest passes on load.

Every name is a plain file name (`check_name`) and every count and size is bounded (MAX_*), so a manifest
from a mirror or a stranger can only describe a release, never steer gpt2hub's file system or memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import settings, tfcheckpoint
from .errors import ManifestError, parse_json, read_capped
from .layout import HParams
from .trust import HashStatus

STATUSES = tuple(s.value for s in HashStatus)  # a file's `status`: see trust.HashStatus
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Bounds on what a manifest may describe (the largest real one, 1558M, has 7 files and 580 tensors).
MAX_MANIFEST_BYTES = 4 << 20
MAX_NAME_BYTES = 255
MAX_FILES, MAX_FOLDERS, MAX_ALIASES, MAX_SOURCES = 64, 8, 32, 16
MAX_TENSORS, MAX_TENSOR_NAME, MAX_RANK, MAX_DIM, MAX_BYTES = 1 << 16, 1024, 8, 1 << 40, 1 << 62
MAX_TEXT = 4096  # description, note
# Names gpt2hub gives its own files beside a release's: a manifest may not claim them.
RESERVED_SUFFIXES = (".part", ".ranges.json", ".tmp", ".lock")
RESERVED_NAMES = ("manifests", ".gpt2hub-verified.json", settings.PULL_LOCK)
DEFAULT_KIND = tfcheckpoint.KIND  # a manifest without `kind` describes OpenAI's layout
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # a source kind's name (gpt2hub.source_kinds), checked when opened


def check_name(value: object, where: str) -> str:
    """A release, alias, folder or file name from a manifest, refused unless it is one plain file name."""
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: a name must be a non-empty string, got {short_repr(value)}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ManifestError(f"{where}: name {value!r} is not valid UTF-8") from None
    why = ("longer than 255 bytes" if size > MAX_NAME_BYTES
           else "holds a path separator" if "/" in value or "\\" in value
           else "holds a NUL or control character" if any(ord(c) < 32 or ord(c) == 127 for c in value)
           else "holds '..'" if ".." in value
           else "starts with a dot" if value.startswith(".")
           else "is a name gpt2hub uses for its own files" if value.lower() in RESERVED_NAMES
           or value.lower().endswith(RESERVED_SUFFIXES) else None)
    if why:
        raise ManifestError(f"{where}: {value[:80]!r} {why}; must be a plain folder name")
    return value


def short_repr(value: object) -> str:
    """repr(value), cut to 60 characters for an error line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class FileRecord:
    """One file of a release and what is known of it."""

    name: str
    size: int | None
    sha256: str | None
    status: str
    note: str = ""

    def to_dict(self) -> dict:
        d = {"name": self.name, "size": self.size, "sha256": self.sha256, "status": self.status}
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class ReleaseManifest:
    """Everything gpt2hub knows about one release before it touches the network."""

    name: str
    aliases: tuple[str, ...]
    released: str | None
    parameters: int
    hparams: HParams
    folders: tuple[str, ...]
    files: tuple[FileRecord, ...]
    tensors: tuple[dict, ...]
    description: str = ""
    sources: tuple[str, ...] = ()
    kind: str = DEFAULT_KIND  # what the original files are: a source kind (`gpt2hub import` records it)
    path: Path | None = field(default=None, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def download_size(self) -> int:
        """Bytes of every file whose size is known (see `download_size_known`)."""
        return sum(f.size for f in self.files if f.size is not None)

    @property
    def download_size_known(self) -> bool:
        return all(f.size is not None for f in self.files)

    @property
    def data_file(self) -> FileRecord | None:
        return next((f for f in self.files if ".data-" in f.name), None)

    def file(self, name: str) -> FileRecord:
        for f in self.files:
            if f.name == name:
                return f
        raise ManifestError(f"{self.name}: no file named {name!r} in the manifest")

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "aliases": list(self.aliases),
            "released": self.released,
            "description": self.description,
            "parameters": self.parameters,
            "hparams": self.hparams.to_dict(),
            "folders": list(self.folders),
            "files": [f.to_dict() for f in self.files],
            "tensors": [dict(t) for t in self.tensors],
        }
        if self.sources:
            d["sources"] = list(self.sources)
        if self.kind != DEFAULT_KIND:
            d["kind"] = self.kind
        return d

    @classmethod
    def from_dict(cls, data: object, source: str) -> "ReleaseManifest":
        """Parse and check a manifest; every defect is one line naming the file and the field."""
        return cls(**_checked_fields(data, source))

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "ReleaseManifest":
        """A manifest from JSON text (at most MAX_MANIFEST_BYTES), or a one-line ManifestError."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{source}: larger than {MAX_MANIFEST_BYTES:,} bytes; not a manifest")
        try:
            parsed = parse_json(data, source, ManifestError)
        except ManifestError as e:
            raise ManifestError(str(e).replace(": not valid JSON", ": not a readable JSON manifest", 1)) from None
        return cls.from_dict(parsed, source)

    @classmethod
    def from_file(cls, path: Path | str) -> "ReleaseManifest":
        path = Path(path)
        try:
            data = read_capped(path, ManifestError, MAX_MANIFEST_BYTES)
        except ManifestError as e:
            if not path.exists():
                raise ManifestError(f"{path}: no such manifest file") from None
            raise ManifestError(str(e).replace("cannot read", "not a readable JSON manifest", 1)) from None
        m = cls.from_bytes(data, str(path))
        return ReleaseManifest(**{**m.__dict__, "path": path})

    def from_mirror(self) -> "ReleaseManifest":
        """This manifest as a mirror's claim: no sources, and every size and hash only the mirror's word."""
        files = tuple(FileRecord(f.name, f.size, f.sha256, HashStatus.MIRROR.value,
                                 "as the mirror's own manifest gives it")
                      for f in self.files)
        return ReleaseManifest(**{**self.__dict__, "files": files, "sources": ()})


def _check_tensor(t: object, where: str) -> None:
    if not isinstance(t, dict) or not {"name", "shape", "dtype", "offset", "size"} <= t.keys():
        raise ManifestError(f"{where} needs name, shape, dtype, offset and size")
    shape = t["shape"]
    if not isinstance(t["name"], str) or not 0 < len(t["name"]) <= MAX_TENSOR_NAME:
        raise ManifestError(f"{where}: 'name' must be a string of 1 to {MAX_TENSOR_NAME} characters")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_DIM for d in shape):
        raise ManifestError(f"{where} ({t['name']}): 'shape' must be a list of at most {MAX_RANK} dimensions")
    if not isinstance(t["dtype"], str) or len(t["dtype"]) > 32:
        raise ManifestError(f"{where} ({t['name']}): 'dtype' must be a short string")
    for key in ("offset", "size"):
        v = t[key]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < MAX_BYTES:
            raise ManifestError(f"{where} ({t['name']}): {key!r} must be a byte count")
    if "file" in t:
        check_name(t["file"], f"{where} ({t['name']}): 'file'")
    if not isinstance(t.get("transposed", False), bool):
        raise ManifestError(f"{where} ({t['name']}): 'transposed' must be true or false")


class _Fields:
    """One manifest's JSON object, read key by key; each defect is a ManifestError naming the file and the key."""

    def __init__(self, data: dict, source: str):
        self.data, self.source = data, source

    def need(self, key: str, kind: type | tuple[type, ...]):
        if key not in self.data:
            raise ManifestError(f"{self.source}: missing {key!r}")
        value = self.data[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ManifestError(f"{self.source}: {key!r} has the wrong type ({type(value).__name__})")
        return value

    def listed(self, key: str, default: list | None, most: int) -> list:
        values = self.need(key, list) if key in self.data or default is None else default
        if len(values) > most:
            raise ManifestError(f"{self.source}: {key!r} lists {len(values):,} entries; at most {most} are allowed")
        return values

    def text(self, value: object, key: str) -> str:
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise ManifestError(f"{self.source}: {key!r} must be a string of at most {MAX_TEXT} characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):  # printed by info: no terminal escapes
            raise ManifestError(f"{self.source}: {key!r} holds a control character")
        return value


def _checked_fields(data: object, source: str) -> dict:
    """ReleaseManifest's fields from a manifest's parsed JSON, every one checked (see ReleaseManifest.from_dict)."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: a manifest is a JSON object")
    get = _Fields(data, source)
    name = data.get("name")
    if "name" not in data:
        raise ManifestError(f"{source}: missing 'name'")
    check_name(name, f"{source}: 'name'")
    try:
        hparams = HParams.from_dict(get.need("hparams", dict), f"{source}: hparams")
    except Exception as e:
        raise ManifestError(str(e)) from None
    files = [_file_record(f, f"{source}: files[{i}]", get) for i, f in enumerate(get.listed("files", None, MAX_FILES))]
    if len({f.name for f in files}) != len(files):
        raise ManifestError(f"{source}: a file is listed twice")
    tensors = get.listed("tensors", None, MAX_TENSORS)
    for i, t in enumerate(tensors):
        _check_tensor(t, f"{source}: tensors[{i}]")
    aliases = get.listed("aliases", [], MAX_ALIASES)
    folders = get.listed("folders", [name], MAX_FOLDERS)
    sources = get.listed("sources", [], MAX_SOURCES)
    for key, values in (("aliases", aliases), ("folders", folders)):
        for i, v in enumerate(values):
            check_name(v, f"{source}: {key}[{i}]")
    if not all(isinstance(v, str) and v and len(v) <= MAX_TEXT for v in sources):
        raise ManifestError(f"{source}: 'sources' must be a list of non-empty strings")
    parameters = get.need("parameters", int) if "parameters" in data else hparams.parameters
    kind = data.get("kind", DEFAULT_KIND)
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise ManifestError(f"{source}: 'kind' must be a source kind's name, got {short_repr(kind)}")
    released = data.get("released")
    if released is not None and not (isinstance(released, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", released)):
        raise ManifestError(f"{source}: 'released' must be a YYYY-MM-DD date or null")
    return dict(name=name, aliases=tuple(aliases), released=released, parameters=parameters, hparams=hparams,
                folders=tuple(folders), files=tuple(files), tensors=tuple(tensors),
                description=get.text(data.get("description", ""), "description"), sources=tuple(sources), kind=kind)


def _file_record(f: object, where: str, get: _Fields) -> FileRecord:
    """One entry of a manifest's `files`, checked."""
    if not isinstance(f, dict) or "name" not in f:
        raise ManifestError(f"{where}: needs a 'name'")
    check_name(f["name"], f"{where}: 'name'")
    size, sha = f.get("size"), f.get("sha256")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < MAX_BYTES):
        raise ManifestError(f"{where} ({f['name']}): 'size' must be a byte count or null")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        raise ManifestError(f"{where} ({f['name']}): 'sha256' must be 64 lowercase hex digits or null")
    status = f.get("status", HashStatus.EXPECTED.value)
    if status not in STATUSES:
        raise ManifestError(f"{where} ({f['name']}): 'status' must be one of {', '.join(STATUSES)}")
    return FileRecord(f["name"], size, sha, status, get.text(f.get("note", ""), "note"))
