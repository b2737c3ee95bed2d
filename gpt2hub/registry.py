"""The release registry: manifests shipped in the wheel, plus the user's own."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

from .errors import ManifestError, UnknownRelease
from .layout import HParams, infer_hparams, is_model_tensor
from . import store

OPENAI_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
# How much a size or hash can be trusted: printed by a public source, derived but not yet
# confirmed by anyone, or measured by `gpt2hub manifest create` from the user's own files.
STATUSES = ("published", "expected", "measured")
MANIFESTS_ENV = "GPT2HUB_MANIFESTS"
MIRROR_MANIFEST = "gpt2hub-manifest.json"  # published by `gpt2hub mirror` beside a release's files
SCHEMA_SUFFIX = ".schema.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
        return d

    @classmethod
    def from_dict(cls, data: object, source: str) -> "ReleaseManifest":
        """Parse and check a manifest; every defect is one line naming the file and the field."""
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: a manifest is a JSON object")

        def need(key: str, kind: type | tuple[type, ...]):
            if key not in data:
                raise ManifestError(f"{source}: missing {key!r}")
            value = data[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ManifestError(f"{source}: {key!r} has the wrong type ({type(value).__name__})")
            return value

        name = need("name", str)
        if not name or "/" in name or name.startswith("."):
            raise ManifestError(f"{source}: 'name' must be a plain folder name, got {name!r}")
        try:
            hparams = HParams.from_dict(need("hparams", dict), f"{source}: hparams")
        except Exception as e:
            raise ManifestError(str(e)) from None
        files = []
        for i, f in enumerate(need("files", list)):
            where = f"{source}: files[{i}]"
            if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                raise ManifestError(f"{where}: needs a 'name'")
            size, sha = f.get("size"), f.get("sha256")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
                raise ManifestError(f"{where} ({f['name']}): 'size' must be a byte count or null")
            if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
                raise ManifestError(f"{where} ({f['name']}): 'sha256' must be 64 lowercase hex digits or null")
            status = f.get("status", "expected")
            if status not in STATUSES:
                raise ManifestError(f"{where} ({f['name']}): 'status' must be one of {', '.join(STATUSES)}")
            files.append(FileRecord(f["name"], size, sha, status, f.get("note", "")))
        tensors = need("tensors", list)
        for i, t in enumerate(tensors):
            if not isinstance(t, dict) or not {"name", "shape", "dtype", "offset", "size"} <= t.keys():
                raise ManifestError(f"{source}: tensors[{i}] needs name, shape, dtype, offset and size")
        aliases = need("aliases", list) if "aliases" in data else []
        folders = need("folders", list) if "folders" in data else [name]
        sources = need("sources", list) if "sources" in data else []
        for key, values in (("aliases", aliases), ("folders", folders), ("sources", sources)):
            if not all(isinstance(v, str) and v for v in values):
                raise ManifestError(f"{source}: {key!r} must be a list of non-empty strings")
        parameters = need("parameters", int) if "parameters" in data else hparams.parameters
        return cls(
            name=name,
            aliases=tuple(aliases),
            released=data.get("released"),
            parameters=parameters,
            hparams=hparams,
            folders=tuple(folders),
            files=tuple(files),
            tensors=tuple(tensors),
            description=data.get("description", ""),
            sources=tuple(sources),
        )

    @classmethod
    def from_file(cls, path: Path | str) -> "ReleaseManifest":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ManifestError(f"{path}: no such manifest file") from None
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path}: not a readable JSON manifest ({e})") from None
        m = cls.from_dict(data, str(path))
        return ReleaseManifest(**{**m.__dict__, "path": path})


def _builtin_manifests() -> list[ReleaseManifest]:
    folder = resources.files("gpt2hub.manifests")
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json") and not entry.name.endswith(SCHEMA_SUFFIX):
            m = ReleaseManifest.from_dict(json.loads(entry.read_text()), f"gpt2hub/manifests/{entry.name}")
            out.append(ReleaseManifest(**{**m.__dict__, "path": Path(str(entry))}))
    return out


def user_manifest_dirs() -> list[Path]:
    """Folders searched for user manifests: $GPT2HUB_MANIFESTS (path list), then <home>/manifests."""
    dirs = [Path(p) for p in os.environ.get(MANIFESTS_ENV, "").split(os.pathsep) if p]
    return dirs + [store.home() / "manifests"]


def _user_manifests() -> list[ReleaseManifest]:
    out = []
    for d in user_manifest_dirs():
        if d.is_dir():
            out.extend(ReleaseManifest.from_file(p) for p in sorted(d.glob("*.json")) if not p.name.endswith(SCHEMA_SUFFIX))
    return out


def releases() -> list[ReleaseManifest]:
    """Every known release; a user manifest replaces a shipped one of the same name."""
    by_name: dict[str, ReleaseManifest] = {}
    for m in _builtin_manifests() + _user_manifests():
        by_name[m.name] = m
    return sorted(by_name.values(), key=lambda m: (m.parameters, m.name))


def resolve(name: str | None = None, manifest: Path | str | None = None) -> ReleaseManifest:
    """The release a name or alias (case-insensitive) refers to, or the one in `manifest`."""
    if manifest is not None:
        m = ReleaseManifest.from_file(manifest)
        if name is not None and name.lower() not in (n.lower() for n in m.names):
            raise UnknownRelease(f"{manifest} describes {m.name!r}, not {name!r}")
        return m
    if name is None:
        raise UnknownRelease("no release named; known: " + known_names())
    known = releases()
    for m in known:
        if name.lower() in (n.lower() for n in m.names):
            return m
    raise UnknownRelease(f"unknown release {name!r}; known: {known_names(known)}")


def known_names(known: Iterable[ReleaseManifest] | None = None) -> str:
    known = releases() if known is None else known
    return "; ".join(f"{m.name} ({', '.join(m.aliases)})" if m.aliases else m.name for m in known)


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def create_manifest(folder: Path | str, name: str, *, aliases: Iterable[str] = (), n_head: int | None = None) -> ReleaseManifest:
    """Describe a local checkpoint folder: file sizes and sha256, hparams, and the index's tensor layout."""
    from .tfcheckpoint import Checkpoint

    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder")
    ckpt = Checkpoint(folder)
    hparams_path = folder / "hparams.json"
    shapes = ckpt.shapes()
    hparams = HParams.from_file(hparams_path) if hparams_path.is_file() else infer_hparams(shapes, n_head)
    files = [
        FileRecord(p.name, p.stat().st_size, sha256_file(p), "measured")
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith((".part", ".tmp"))
    ]
    tensors = tuple(
        {"name": e.name, "shape": list(e.shape), "dtype": e.dtype_name, "offset": e.offset, "size": e.size}
        for e in ckpt.entries.values()
    )
    data = {
        "name": name,
        "aliases": list(aliases),
        "released": None,
        "description": f"Local checkpoint created from {folder.name}",
        "hparams": hparams.to_dict(),
        "folders": [name],
        "files": [f.to_dict() for f in files],
        "tensors": list(tensors),
    }
    data["parameters"] = sum(_numel(t["shape"]) for t in tensors if is_model_tensor(t["name"]))
    return ReleaseManifest.from_dict(data, str(folder))


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_manifest(m: ReleaseManifest, path: Path | str) -> Path:
    """Write a manifest as JSON, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(m.to_dict(), indent=1) + "\n")
    os.replace(tmp, path)
    return path


def save_user_manifest(m: ReleaseManifest, path: Path | str | None = None) -> Path:
    """Write `m` where every command finds it (<home>/manifests/NAME.json) or to `path`; never over another release's."""
    path = Path(path) if path is not None else store.home() / "manifests" / f"{m.name}.json"
    if path.exists() and ReleaseManifest.from_file(path).name != m.name:
        raise ManifestError(f"{path}: exists and describes another release; choose another file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest(m, path)

