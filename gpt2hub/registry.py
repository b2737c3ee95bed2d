"""The release registry: the manifests shipped in the wheel and the user's own, found, resolved by name, created, written."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Iterable

from .errors import ManifestError, UnknownRelease
from .layout import HParams, infer_hparams, is_model_tensor
from . import settings, store
from .atomic import write_json
from .manifest import RESERVED_SUFFIXES, FileRecord, ReleaseManifest, check_name, short_repr
from .trust import HashStatus

OPENAI_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
SHARED_FROM = "124M"  # the release whose published sha256 a SHARED status names
ACCEPT_DIFFERENT_SHARED_ENV = settings.ACCEPT_DIFFERENT_SHARED  # on: accept a differing SHARED file, unverified
MANIFESTS_ENV = settings.MANIFESTS
MIRROR_MANIFEST = "gpt2hub-manifest.json"  # published by `gpt2hub mirror` beside a release's files
SCHEMA_SUFFIX = ".schema.json"

_warned: set[str] = set()


def warn(line: str) -> None:
    """One warning line on stderr, once per process."""
    if line not in _warned:
        _warned.add(line)
        print(f"gpt2hub: warning: {line}", file=sys.stderr)


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
    dirs = [Path(p) for p in (settings.value(MANIFESTS_ENV) or "").split(os.pathsep) if p]
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


def owner(name: str) -> ReleaseManifest | None:
    """The release whose name or alias `name` is (case-insensitive): a shipped one first, then the user's; or None."""
    return next((m for m in (*_builtin_manifests(), *_user_manifests()) if name.lower() in _names(m)), None)


def is_builtin(m: ReleaseManifest) -> bool:
    """True for a manifest shipped in the wheel (OpenAI's releases), as loaded by the registry."""
    return any(m is s for s in _builtin_manifests())


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
    raise UnknownRelease(f"unknown release {short_repr(name)}; known: {known_names(known)}")


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
        FileRecord(p.name, p.stat().st_size, sha256_file(p), HashStatus.MEASURED.value)
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

