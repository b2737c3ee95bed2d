"""`gpt2hub import PATH --name NAME`: a checkpoint of any source kind put in the store as a release of its own.

The source is opened by its kind first, so every refusal comes before a byte lands. Its files are then copied
as given (never modified or moved) into a temp folder beside `<home>/NAME/original/`, hashed as they are
written, opened again from there, and renamed into place only when complete; the manifest
`<home>/manifests/NAME.json` records the kind, hparams, every file's size and the sha256 measured while copying
(the user's own measurement, never "published": trust.HashStatus.MEASURED) and the tensor layout.

Copies, not hard links, by default: a user's file rewritten in place (torch.save over ckpt.pt opens the same
inode with O_TRUNC) would change a linked store copy too. Nothing in gpt2hub writes an original file in place
(pull replaces a file by rename), so a link is safe for files gpt2hub itself downloaded (`pull hf://`) and for
users who ask for one (`link=True`); `verify` then catches a copy changed behind its back by its recorded sha256.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import atomic, hashes, original, registry, settings, source_kinds, store, tfcheckpoint, vocab_fallback
from .errors import ConversionError, ManifestError, StoreError
from .integrity import FileCheck, Record, write_record
from .layout import check_shapes, infer_hparams, is_model_tensor, HParams
from .manifest import (MAX_FILES, MAX_TENSORS, RESERVED_SUFFIXES, FileRecord, ReleaseManifest, check_name,
                       short_repr)
from .progress import ProgressEvent, Reporter, bytes_counter, emit
from .trust import Check, HashStatus

# Files a one-file checkpoint reads from beside itself, copied with it when present: llm.c's tokenizer file.
COMPANIONS = ("gpt2_tokenizer.bin",)
COPY_BLOCK = 8 << 20
MEASURED_AT_IMPORT = "sha256 measured by gpt2hub import while copying the file into the store"
TF_TENSOR_SUFFIXES = (".index", ".meta")  # with ".data-": the files of a TF checkpoint (only the opened one is copied)


@dataclass
class ImportedFile:
    name: str
    size: int
    sha256: str
    linked: bool  # a hard link to the input's file, not a copy
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImportResult:
    """What `gpt2hub import` put in the store."""

    name: str
    kind: str
    path: Path  # the original checkpoint in the store (a folder, or the one file of a one-file kind)
    manifest: Path
    source: Path
    files: list[ImportedFile]
    hparams: dict
    hparams_from: str
    tensors: int
    parameters: int
    replaced: bool = False  # --force replaced an earlier release of this name (and dropped its conversions)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_text(self) -> str:
        from .printing import size_text

        how = "linked" if all(f.linked for f in self.files) else "copied"
        return "\n".join([
            *self.notes,
            f"{self.name} ({self.kind}): {self.tensors} tensors, {self.parameters:,} parameters "
            f"(hparams from {self.hparams_from}); {len(self.files)} files ({size_text(self.bytes)}) {how} "
            f"in {self.seconds:.1f} s",
            f"{self.path}",
            f"manifest {self.manifest}: each file's sha256 as measured here (yours, never 'published')"])

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "path": str(self.path), "manifest": str(self.manifest),
                "source": str(self.source), "bytes": self.bytes, "files": [f.to_dict() for f in self.files],
                "hparams": self.hparams, "hparams_from": self.hparams_from, "tensors": self.tensors,
                "parameters": self.parameters, "replaced": self.replaced, "seconds": round(self.seconds, 3),
                "notes": self.notes}


@dataclass
class _Opened:
    """A source as opened by its kind: what the manifest records of it, and the files that make it up."""

    hparams: HParams
    hparams_from: str
    tensors: list[dict]
    files: list[Path]
    notes: list[str]
    # GPT-2's encoder.json + vocab.bpe where a one-file checkpoint carries no vocabulary (gpt2hub.vocab_fallback):
    # copied beside it under those names, so convert, verify, sample and a mirror need no --vocab again
    vocab_files: tuple[Path, Path] | None = None


def check_new_name(name: str, force: bool) -> None:
    """Refuse, before any work, a NAME that is not a plain folder name, that names a shipped release or another
    release's alias, or (without `force`) that names a release already here."""
    check_name(name, "--name")
    found = registry.owner(name)
    if found is not None and registry.is_builtin(found):
        raise ManifestError(f"{name}: already names OpenAI's release {found.name} "
                            f"({', '.join(found.names)}); choose another name")
    if found is not None and found.name.lower() != name.lower():
        raise ManifestError(f"{name}: already an alias of the release {found.name}; choose another name")
    mine = store.home() / "manifests" / f"{name}.json"
    if found is not None and found.path is not None and found.path.resolve() != mine.resolve():
        raise ManifestError(f"{name}: already described by {found.path}; remove it there or choose another name")
    if not force and (store.home() / name).exists():
        raise ManifestError(f"{name}: a release of this name is already here ({store.home() / name}); "
                            "pass --force to replace it (its conversions are removed too)")
    if not force and found is not None:
        raise ManifestError(f"{name}: already described by {found.path or 'a manifest'}; pass --force to replace it")


def import_checkpoint(path: str | os.PathLike, name: str, *, from_: str | None = None, force: bool = False,
                      vocab: Path | str | None = None, link: bool = False, progress: Reporter | None = None,
                      notes: dict[str, str] | None = None, description: str | None = None,
                      own_files: bool = False) -> ImportResult:
    """Put the checkpoint at `path` (any source kind, or `from_`'s) in the store as release `name` (see the module).

    `notes`: a note per file name for the manifest (e.g. the Hub's hash it matched); `own_files`: the files are
    gpt2hub's own (a download), so they are hard-linked rather than copied where the file system allows.
    """
    started = time.perf_counter()
    check_new_name(name, force)
    src = Path(path).expanduser().absolute()
    if not src.exists():
        raise ConversionError(f"{src}: no such file or folder")
    release_root = store.home() / name
    if src.resolve().is_relative_to(release_root.resolve()):
        raise ConversionError(f"{src}: lies inside the store's folder of {name}; import from elsewhere")
    if from_ is not None and from_ not in source_kinds.names():
        raise ConversionError(f"--from {from_}: not a source kind; kinds: {', '.join(source_kinds.names())}")
    kind = source_kinds.detect(src, from_)
    if kind is None:
        raise source_kinds.refuse(src, from_, ConversionError)
    options = source_kinds.OpenOptions(vocab=Path(vocab).expanduser() if vocab is not None else None)
    opened = _open(kind, src, options)  # every refusal of the source happens here, before the store is touched
    if len(opened.files) > MAX_FILES:
        raise ConversionError(f"{src}: {len(opened.files)} files; a release holds at most {MAX_FILES}")
    if len(opened.tensors) > MAX_TENSORS:
        raise ConversionError(f"{src}: {len(opened.tensors):,} tensors; a release holds at most {MAX_TENSORS:,}")
    for p in opened.files:
        check_name(p.name, f"{src}: file")

    from filelock import FileLock, Timeout

    created = not release_root.exists()
    release_root.mkdir(parents=True, exist_ok=True)
    locks = [FileLock(str(release_root / n)) for n in (settings.PULL_LOCK, settings.CONVERT_LOCK)]
    try:
        for lock, what in zip(locks, ("pull or import", "convert")):
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise StoreError(f"{name}: a {what} of it is running; try again when it is done") from None
        result = _install(name, kind, src, opened, options, force, link, own_files, notes or {}, description,
                          progress)
    except BaseException:
        if created:
            for n in (settings.PULL_LOCK, settings.CONVERT_LOCK):
                (release_root / n).unlink(missing_ok=True)
            try:
                release_root.rmdir()
            except OSError:
                pass
        raise
    finally:
        for lock in reversed(locks):
            if lock.is_locked:
                lock.release()
    result.seconds = time.perf_counter() - started
    return result


def _open(kind: source_kinds.SourceKind, src: Path, options: source_kinds.OpenOptions) -> _Opened:
    """Open the source as its kind does for convert (every refusal here), and list the files that make it up."""
    if kind.open is None:  # OpenAI's layout: conversion opens it itself, so do the same here
        return _open_tf(src)
    ckpt = kind.open(src, options)
    try:
        tensors = [tensor_row(e, ckpt.data_paths) for e in ckpt.entries.values()]
        shapes = {n: e.shape for n, e in ckpt.entries.items()}
        check_shapes(ckpt.hparams, shapes, str(ckpt.index_path))
        used = {Path(p).absolute() for p in (*ckpt.data_paths, ckpt.index_path)}
        h, h_from, notes = ckpt.hparams, ckpt.hparams_from, list(ckpt.notes)
        fallback = kind.is_file and any(vocab_fallback.SAID in n for n in notes)
        vocab_files = (ckpt.vocab.encoder_json, ckpt.vocab.vocab_bpe) if fallback else None
    finally:
        ckpt.close()
    if kind.is_file:
        files = [src, *(src.parent / c for c in COMPANIONS if (src.parent / c).is_file() and src.name != c)]
        outside = sorted(p.name for p in used if p.parent != src.parent)
    else:
        files = _plain_files(src)
        outside = sorted(str(p) for p in used if p.parent != src)
        folders = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
        if folders:
            notes.append(f"left out {len(folders)} sub-folders (e.g. {folders[0]}): a checkpoint's files are at its top")
    if outside:
        raise ConversionError(f"{src}: the checkpoint reads files outside its folder ({', '.join(outside[:3])}); "
                              "put them beside it to import it")
    missing = sorted(p.name for p in used if p not in {f.absolute() for f in files})
    if missing:
        raise ConversionError(f"{src}: the checkpoint reads {', '.join(missing[:3])}, which import would not copy")
    if vocab_files is not None and any(p.name in original.VOCAB_FILES for p in files):
        vocab_files = None  # a file of the checkpoint's own has the name: not shadowed (--vocab is needed again)
    return _Opened(h, h_from, tensors, files, notes, vocab_files)


def _open_tf(src: Path) -> _Opened:
    """A TF checkpoint folder: the opened checkpoint's index, data and meta files plus every other plain file
    (hparams.json, encoder.json, vocab.bpe, checkpoint, ...), but no other checkpoint's tensors."""
    ckpt = tfcheckpoint.Checkpoint(src)
    model = {n: e.shape for n, e in ckpt.entries.items() if is_model_tensor(n)}
    if (src / "hparams.json").is_file():
        h, h_from = HParams.from_file(src / "hparams.json"), "hparams.json"
    else:
        h, h_from = infer_hparams(model), "inferred from shapes (n_head = n_embd / 64)"
    check_shapes(h, model, str(ckpt.index_path))
    for n in model:
        e = ckpt.entries[n]
        if e.sliced or e.dtype_name != "float32":
            raise ConversionError(f"{ckpt.index_path}: {n} is {'sliced' if e.sliced else e.dtype_name}; "
                                  "only whole float32 tensors can be converted")
    tensors = [tensor_row(e, ckpt.data_paths) for e in ckpt.entries.values()]
    mine = {ckpt.index_path.name, *(p.name for p in ckpt.data_paths), ckpt.prefix.name + ".meta"}
    other_checkpoints = [p for p in _plain_files(src) if p.name not in mine
                         and (p.name.endswith(TF_TENSOR_SUFFIXES) or ".data-" in p.name)]
    files = [p for p in _plain_files(src) if p not in other_checkpoints]
    notes = [f"left out {len(other_checkpoints)} files of other checkpoints in the folder "
             f"(e.g. {other_checkpoints[0].name})"] if other_checkpoints else []
    return _Opened(h, h_from, tensors, files, notes)


def tensor_row(e, data_paths: list[Path]) -> dict:
    """A manifest's tensor record: OpenAI's name and TF shape, how and where it is stored."""
    row = {"name": e.name, "shape": list(e.shape), "dtype": getattr(e, "encoding", None) or e.dtype_name,
           "offset": e.offset, "size": e.size, "file": Path(data_paths[e.shard_id]).name}
    if getattr(e, "transposed", False):
        row["transposed"] = True
    return row


def _plain_files(folder: Path) -> list[Path]:
    """The folder's own files as a release holds them: plain files, not hidden, not a name gpt2hub keeps for
    its own (a .part, a lock); sub-folders are not part of a checkpoint."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
                  and not p.name.lower().endswith(RESERVED_SUFFIXES))


def _install(name: str, kind: source_kinds.SourceKind, src: Path, opened: _Opened, options, force: bool, link: bool,
             own_files: bool, notes: dict[str, str], description: str | None,
             progress: Reporter | None) -> ImportResult:
    """Copy (or link) the files into a temp folder, open the copy, then swap it into place and write the manifest."""
    final = store.release_dir(name)
    tmp = final.parent / (atomic.temp_name_prefix(final) + secrets.token_hex(4))
    tmp.mkdir()
    old: Path | None = None
    try:
        copied = _copy_files(opened.files, tmp, link or own_files, progress)
        for f in copied:
            f.note = notes.get(f.name, MEASURED_AT_IMPORT)
        for given, as_name in zip(opened.vocab_files or (), original.VOCAB_FILES):
            digest = _copy(given, tmp / as_name, lambda n: None)
            copied.append(ImportedFile(as_name, (tmp / as_name).stat().st_size, digest, False,
                                       f"GPT-2's vocabulary, which {src.name} does not carry: copied at import from "
                                       f"{given} ({MEASURED_AT_IMPORT})"))
        in_store = tmp / src.name if kind.is_file else tmp
        again = _open(kind, in_store, options)  # the store's copy opens as the source did, with the same layout
        if again.tensors != opened.tensors:
            raise ConversionError(f"{src}: changed while it was being imported; try again")
        m = ReleaseManifest(
            name=name, aliases=(), released=None, parameters=opened.hparams.parameters, hparams=opened.hparams,
            folders=(name,), files=tuple(FileRecord(f.name, f.size, f.sha256, HashStatus.MEASURED.value, f.note[:4096])
                                         for f in copied),
            tensors=tuple(opened.tensors), kind=kind.name,
            description=description or f"imported by gpt2hub import from {short_repr(src.name)} ({kind.accepts})")
        m = ReleaseManifest.from_dict(m.to_dict(), f"{name} (import)")  # every bound a manifest must keep
        manifest_path = store.inside(store.home() / "manifests", f"{name}.json")
        write_record(tmp, Record(name, {f.name: FileCheck(f.size, f.sha256, Check.MEASURED_SHA256, MEASURED_AT_IMPORT)
                                        for f in copied}, str(manifest_path)))
        replaced = final.exists()
        if replaced:  # --force: checked by check_new_name
            old = final.parent / (atomic.temp_name_prefix(final) + secrets.token_hex(4))
            os.rename(final, old)
        os.rename(tmp, final)
        try:
            registry.save_user_manifest(m, manifest_path)
        except BaseException:
            os.rename(final, tmp)
            if old is not None:
                os.rename(old, final)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if replaced:
        _drop_conversions(name)
    for f in copied:
        hashes.remember(final / f.name, f.sha256)  # convert and mirror need not hash these bytes again
    path = final / src.name if kind.is_file else final
    return ImportResult(name, kind.name, path, manifest_path, src, copied, opened.hparams.to_dict(),
                        opened.hparams_from, len(opened.tensors), opened.hparams.parameters, replaced,
                        notes=opened.notes)


def _copy_files(files: list[Path], dest: Path, link: bool, progress: Reporter | None) -> list[ImportedFile]:
    """Each file into `dest` under its own name, hashed from the bytes as they land; linked where `link` and the
    file system allow (else copied)."""
    task = "import"
    emit(progress, ProgressEvent.begin(task, sum(p.stat().st_size for p in files)))
    count = bytes_counter(progress, task)
    out = []
    try:
        for p in files:
            target = dest / p.name
            linked = False
            if link:
                try:
                    os.link(p, target)
                    linked = True
                except OSError:  # another file system, or links not allowed: copy
                    pass
            digest = _hash(target, count) if linked else _copy(p, target, count)
            out.append(ImportedFile(p.name, target.stat().st_size, digest, linked))
    finally:
        emit(progress, ProgressEvent.end(task))
    return out


def _copy(src: Path, target: Path, count) -> str:
    """Copy `src` to a new file `target` (never through a link), fsync it; the sha256 of the bytes written."""
    h = hashlib.sha256()
    with open(src, "rb") as fin:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fout:
            while block := fin.read(COPY_BLOCK):
                fout.write(block)
                h.update(block)
                count(len(block))
            fout.flush()
            os.fsync(fout.fileno())
    return h.hexdigest()


def _hash(path: Path, count) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(COPY_BLOCK):
            h.update(block)
            count(len(block))
    return h.hexdigest()


def _drop_conversions(name: str) -> None:
    """After --force replaced a release's original: its conversions were made from the old one, so they go."""
    for fmt in store.FORMATS[1:]:
        folder = store.release_dir(name, fmt)
        if folder.is_symlink():
            continue  # gpt2hub makes no links in the store; one here is not ours to follow
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
