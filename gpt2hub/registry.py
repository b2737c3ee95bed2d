"""The release registry: manifests shipped in the wheel, plus the user's own."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import ManifestError, UnknownRelease, parse_json, read_capped
from .layout import HParams, infer_hparams, is_model_tensor
from . import settings, store
from .atomic import write_json

OPENAI_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
# How much a size or hash can be trusted: printed by a public source; the sha256 OpenAI published for
# the byte-identical file of 124M ("shared": encoder.json, vocab.bpe, checkpoint are one file in every
# size); derived but not yet confirmed by anyone; measured by `gpt2hub manifest create` from the user's
# own files; or claimed by a mirror's own manifest (never more than that, whatever it says).
STATUSES = ("published", "shared", "expected", "measured", "mirror")
SHARED_FROM = "124M"
ACCEPT_DIFFERENT_SHARED_ENV = settings.ACCEPT_DIFFERENT_SHARED  # on: accept a differing "shared" file, unverified
MANIFESTS_ENV = settings.MANIFESTS
MIRROR_MANIFEST = "gpt2hub-manifest.json"  # published by `gpt2hub mirror` beside a release's files
SCHEMA_SUFFIX = ".schema.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Bounds on what a manifest may describe (the largest real one, 1558M, has 7 files and 580 tensors).
MAX_MANIFEST_BYTES = 4 << 20
MAX_NAME_BYTES = 255
MAX_FILES, MAX_FOLDERS, MAX_ALIASES, MAX_SOURCES = 64, 8, 32, 16
MAX_TENSORS, MAX_TENSOR_NAME, MAX_RANK, MAX_DIM, MAX_BYTES = 1 << 16, 1024, 8, 1 << 40, 1 << 62
MAX_TEXT = 4096  # description, note
# Names gpt2hub gives its own files beside a release's: a manifest may not claim them.
RESERVED_SUFFIXES = (".part", ".ranges.json", ".tmp", ".lock")
RESERVED_NAMES = ("manifests", ".gpt2hub-verified.json", ".pull.lock")
_warned: set[str] = set()


def check_name(value: object, where: str) -> str:
    """A release, alias, folder or file name from a manifest, refused unless it is one plain file name."""
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: a name must be a non-empty string, got {_short(value)}")
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


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def warn(line: str) -> None:
    """One warning line on stderr, once per process."""
    if line not in _warned:
        _warned.add(line)
        print(f"gpt2hub: warning: {line}", file=sys.stderr)


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
        """Parse and check a manifest; every defect is one line naming the file and the field.

        Every name is a plain file name (`check_name`) and every count and size is bounded (MAX_*).
        """
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: a manifest is a JSON object")

        def need(key: str, kind: type | tuple[type, ...]):
            if key not in data:
                raise ManifestError(f"{source}: missing {key!r}")
            value = data[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ManifestError(f"{source}: {key!r} has the wrong type ({type(value).__name__})")
            return value

        def listed(key: str, default: list | None, most: int) -> list:
            values = need(key, list) if key in data or default is None else default
            if len(values) > most:
                raise ManifestError(f"{source}: {key!r} lists {len(values):,} entries; at most {most} are allowed")
            return values

        def text(value: object, key: str) -> str:
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise ManifestError(f"{source}: {key!r} must be a string of at most {MAX_TEXT} characters")
            if any(ord(c) < 32 or ord(c) == 127 for c in value):  # printed by info: no terminal escapes
                raise ManifestError(f"{source}: {key!r} holds a control character")
            return value

        name = data.get("name")
        if "name" not in data:
            raise ManifestError(f"{source}: missing 'name'")
        check_name(name, f"{source}: 'name'")
        try:
            hparams = HParams.from_dict(need("hparams", dict), f"{source}: hparams")
        except Exception as e:
            raise ManifestError(str(e)) from None
        files = []
        for i, f in enumerate(listed("files", None, MAX_FILES)):
            where = f"{source}: files[{i}]"
            if not isinstance(f, dict) or "name" not in f:
                raise ManifestError(f"{where}: needs a 'name'")
            check_name(f["name"], f"{where}: 'name'")
            size, sha = f.get("size"), f.get("sha256")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < MAX_BYTES):
                raise ManifestError(f"{where} ({f['name']}): 'size' must be a byte count or null")
            if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
                raise ManifestError(f"{where} ({f['name']}): 'sha256' must be 64 lowercase hex digits or null")
            status = f.get("status", "expected")
            if status not in STATUSES:
                raise ManifestError(f"{where} ({f['name']}): 'status' must be one of {', '.join(STATUSES)}")
            files.append(FileRecord(f["name"], size, sha, status, text(f.get("note", ""), "note")))
        if len({f.name for f in files}) != len(files):
            raise ManifestError(f"{source}: a file is listed twice")
        tensors = listed("tensors", None, MAX_TENSORS)
        for i, t in enumerate(tensors):
            _check_tensor(t, f"{source}: tensors[{i}]")
        aliases = listed("aliases", [], MAX_ALIASES)
        folders = listed("folders", [name], MAX_FOLDERS)
        sources = listed("sources", [], MAX_SOURCES)
        for key, values in (("aliases", aliases), ("folders", folders)):
            for i, v in enumerate(values):
                check_name(v, f"{source}: {key}[{i}]")
        if not all(isinstance(v, str) and v and len(v) <= MAX_TEXT for v in sources):
            raise ManifestError(f"{source}: 'sources' must be a list of non-empty strings")
        parameters = need("parameters", int) if "parameters" in data else hparams.parameters
        released = data.get("released")
        if released is not None and not (isinstance(released, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", released)):
            raise ManifestError(f"{source}: 'released' must be a YYYY-MM-DD date or null")
        return cls(
            name=name,
            aliases=tuple(aliases),
            released=released,
            parameters=parameters,
            hparams=hparams,
            folders=tuple(folders),
            files=tuple(files),
            tensors=tuple(tensors),
            description=text(data.get("description", ""), "description"),
            sources=tuple(sources),
        )

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
        files = tuple(FileRecord(f.name, f.size, f.sha256, "mirror", "as the mirror's own manifest gives it")
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


def _shipped_files() -> list[Path]:
    """The manifests shipped in the wheel (gpt2hub/manifests/*.json), by name. Found through the package's
    import spec, not importlib.resources (whose import, with tempfile and zipfile, costs every command ~10 ms)."""
    spec = importlib.util.find_spec("gpt2hub.manifests")
    folder = Path(next(iter(spec.submodule_search_locations or ()))) if spec else None
    if folder is None or not folder.is_dir():
        raise ManifestError("gpt2hub/manifests: the shipped manifests are missing (a broken install?)")
    return sorted(p for p in folder.glob("*.json") if not p.name.endswith(SCHEMA_SUFFIX))


@functools.lru_cache(maxsize=1)
def _builtin_manifests() -> tuple[ReleaseManifest, ...]:
    """The releases shipped in the wheel: the root of trust."""
    out = []
    for path in _shipped_files():
        m = ReleaseManifest.from_bytes(path.read_bytes(), f"gpt2hub/manifests/{path.name}")
        out.append(ReleaseManifest(**{**m.__dict__, "path": path}))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _shipped_names() -> frozenset[str]:
    """The shipped releases' names and aliases, lower-cased: read from their JSON without validating every
    file and tensor record as _builtin_manifests does (5x faster), for a manifest that claims none of them."""
    names: set[str] = set()
    for path in _shipped_files():
        data = json.loads(path.read_bytes())  # the wheel's own files: parse_json's limits are for others'
        names |= {str(n).lower() for n in (data["name"], *data.get("aliases", ()))}
    return frozenset(names)


def _names(m: ReleaseManifest) -> set[str]:
    return {n.lower() for n in m.names}


def is_shipped(m: ReleaseManifest) -> bool:
    """True for a release OpenAI published, as the shipped registry describes it (never one a name only claims)."""
    return any(s.name == m.name and s.to_dict() == m.to_dict() for s in _builtin_manifests())


def clashes(m: ReleaseManifest, *, path: Path | None = None) -> list[str]:
    """The names and aliases of `m` that already belong to another release (shipped, or a user manifest
    other than the one at `path`)."""
    taken: set[str] = set()
    for other in (*_builtin_manifests(), *_user_manifests()):
        if other.path is None or path is None or other.path.resolve() != Path(path).resolve():
            taken |= _names(other)
    return sorted(n for n in m.names if n.lower() in taken)


def user_manifest_dirs() -> list[Path]:
    """Folders searched for user manifests: $GPT2HUB_MANIFESTS (path list), then <home>/manifests."""
    dirs = [Path(p) for p in (settings.text(MANIFESTS_ENV) or "").split(os.pathsep) if p]
    return dirs + [store.home() / "manifests"]


def _user_manifests() -> list[ReleaseManifest]:
    """User manifests that can be used: a broken one, or one claiming a name or alias of a shipped or an
    earlier user release, is skipped with one warning, so it cannot break or shadow anything else."""
    taken = set().union(*(_names(m) for m in _builtin_manifests()))
    out = []
    for d in user_manifest_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.json")):
            if p.name.endswith(SCHEMA_SUFFIX) or p.name.startswith("."):
                continue
            try:
                m = ReleaseManifest.from_file(p)
            except ManifestError as e:
                warn(f"skipping a manifest: {e}")
                continue
            clash = sorted(n for n in m.names if n.lower() in taken)
            if clash:
                warn(f"skipping {p}: {', '.join(clash)} already names another release")
                continue
            taken |= _names(m)
            out.append(m)
    return out


def releases() -> list[ReleaseManifest]:
    """Every known release: the shipped ones, then each user manifest whose names are its own."""
    return sorted((*_builtin_manifests(), *_user_manifests()), key=lambda m: (m.parameters, m.name))


def resolve(name: str | None = None, manifest: Path | str | None = None) -> ReleaseManifest:
    """The release a name or alias (case-insensitive) refers to, or the one in `manifest`.

    A manifest file may not take a shipped release's name or alias unless it is that release's manifest.
    """
    if manifest is not None:
        m = ReleaseManifest.from_file(manifest)
        if name is not None and name.lower() not in _names(m):
            raise UnknownRelease(f"{manifest} describes {m.name!r}, not {name!r}")
        shipped = sorted(n for n in m.names if n.lower() in _shipped_names())
        if shipped and not is_shipped(m):
            raise ManifestError(f"{manifest}: {', '.join(shipped)} already names a shipped release; "
                                "give this manifest another name")
        return m
    if name is None:
        raise UnknownRelease("no release named; known: " + known_names())
    known = releases()
    for m in [*(m for m in known if m.name.lower() == name.lower()), *known]:
        if name.lower() in _names(m):
            return m
    raise UnknownRelease(f"unknown release {_short(name)}; known: {known_names(known)}")


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
    check_name(name, "--name")
    for alias in aliases:
        check_name(alias, "--alias")
    # Before hashing gigabytes: a name or alias of another release is refused (remaking your own is not).
    taken = set().union(*(_names(r) for r in releases() if r.name != name or any(r is s for s in _builtin_manifests())))
    clash = [n for n in (name, *aliases) if n.lower() in taken]
    if clash:
        raise ManifestError(f"{name}: {', '.join(clash)} already names another release; choose another name")
    ckpt = Checkpoint(folder)
    hparams_path = folder / "hparams.json"
    shapes = ckpt.shapes()
    hparams = HParams.from_file(hparams_path) if hparams_path.is_file() else infer_hparams(shapes, n_head)
    files = [
        FileRecord(p.name, p.stat().st_size, sha256_file(p), "measured")
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and not p.name.lower().endswith(RESERVED_SUFFIXES)
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
    return write_json(path, m.to_dict())


def save_user_manifest(m: ReleaseManifest, path: Path | str | None = None) -> Path:
    """Write `m` where every command finds it (<home>/manifests/NAME.json) or to `path`.

    Refused where a name or alias of `m` already names another release (shipped or the user's), or the
    file holds another release's manifest.
    """
    home_manifests = store.home() / "manifests"
    path = Path(path) if path is not None else store.inside(home_manifests, f"{m.name}.json")
    clash = clashes(m, path=path)
    if clash:
        raise ManifestError(f"{m.name}: {', '.join(clash)} already names another release; choose another name")
    if path.exists():
        try:
            other = ReleaseManifest.from_file(path).name
        except ManifestError:
            other = None
        if other != m.name:
            raise ManifestError(f"{path}: exists and describes another release; choose another file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest(m, path)

