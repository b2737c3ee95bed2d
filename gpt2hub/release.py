"""A release on disk: NAME (pulled into the store) or DIR (a checkpoint folder), found one way for every command."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import converters, registry, source_kinds, store, tfcheckpoint
from .errors import Gpt2hubError
from .manifest import ReleaseManifest


@dataclass(frozen=True)
class Release:
    """Where a release's original checkpoint is, and what is known of it."""

    name: str
    original: Path
    in_store: bool
    manifest: ReleaseManifest | None
    kind: str = tfcheckpoint.KIND  # what `original` holds (a gpt2hub.source_kinds name): "tf" is OpenAI's layout

    @property
    def beside(self) -> Path:
        """The path outputs are named after: outside the store, the folder or the file without its suffix; in the
        store, the release's original folder (so convert puts outputs in <home>/<name>/<format>/)."""
        if self.in_store:
            return store.release_dir(self.name)
        return self.original.with_suffix("") if self.original.is_file() else self.original

    @property
    def folder(self) -> Path:
        """The folder holding the original files (`original` itself, or the folder of a one-file checkpoint)."""
        return self.original.parent if self.original.is_file() else self.original

    def output_paths(self, fmt: str) -> list[Path]:
        """Where `gpt2hub convert` puts this release's `fmt` outputs (a folder, or one file per dtype)."""
        form = converters.get(fmt)
        if self.in_store:
            return form.outputs_in(store.release_dir(self.name, fmt))
        # convert writes beside a checkpoint folder outside the store (DIR-<fmt>/, DIR-<dtype><suffix>);
        # a release root laid out as the store (DIR/original, DIR/<fmt>/) is found too.
        return form.outputs_beside(self.beside)


def pulled_names() -> list[str]:
    return [m.name for m in registry.releases() if store.original_state(m.name) == "verified"]


def locate(target: str | os.PathLike | None, manifest: Path | str | None = None, *,
           error: type[Gpt2hubError] = Gpt2hubError, complete: bool = True, kinds: tuple[str, ...] | None = (tfcheckpoint.KIND,),
           from_: str | None = None) -> Release:
    """NAME (or alias), PATH (a checkpoint folder or file, or a release root holding original/), or nothing: the one
    release pulled.

    A PATH is detected as one of `kinds` (None: every source kind) by its content, or read as `from_` when given.
    Every failure is `error` with one line: no such folder or no checkpoint in it, nothing pulled or several,
    a release not pulled (or, with `complete`, only partly pulled).
    """
    kinds = source_kinds.names() if kinds is None else kinds
    if from_ is not None and from_ not in kinds:
        raise error(f"--from {from_}: not a source kind here; kinds: {', '.join(kinds)}")
    path = Path(target).expanduser() if target is not None else None
    if path is not None and (path.is_file() and kinds != (tfcheckpoint.KIND,)):
        path = path.absolute()
        return Release(path.stem, path, False, None, _kind(path, path, kinds, from_, error))
    if path is not None and (path.is_dir() or os.sep in str(target)):
        if not path.is_dir():
            raise error(f"{path}: no such {'folder' if kinds == (tfcheckpoint.KIND,) else 'file or folder'}")
        path = path.absolute()  # not resolve(): outputs are found beside the path as given, even through a link
        original = path / "original" if (path / "original").is_dir() else path
        named_by_store = original.name == "original" and original.parent.parent.resolve() == store.home().resolve()
        if manifest is not None:
            m = registry.resolve(None, manifest)
        elif named_by_store:
            m = next((r for r in registry.releases() if r.name == original.parent.name), None)
        else:
            m = None
        if named_by_store and m is not None and m.kind != tfcheckpoint.KIND and from_ is None:
            return Release(m.name, original_path(m, error), True, m, _read_here(m, kinds, error))
        kind = _kind(path, original, kinds, from_, error)
        name = m.name if m else (original.parent.name if original.name == "original" else original.name)
        return Release(name, original, named_by_store, m, kind)
    if from_ not in (None, tfcheckpoint.KIND):
        raise error(f"--from {from_} takes a path; {target!r} is not one")
    if target is None and manifest is None:
        pulled = pulled_names()
        if len(pulled) != 1:
            raise error("name a release or a checkpoint folder; pulled: "
                        + (", ".join(pulled) or "none yet (gpt2hub pull NAME); known: " + registry.known_names()))
        target = pulled[0]
    m = registry.resolve(None if target is None else str(target), manifest)
    state = store.original_state(m.name)
    if state == "absent":
        raise error(f"{m.name}: not pulled (nothing in {store.release_dir(m.name)}); run: gpt2hub pull {m.name}")
    if complete and state != "verified":
        raise error(f"{m.name}: only partly pulled ({store.release_dir(m.name)}); finish it with: gpt2hub pull {m.name}")
    return Release(m.name, original_path(m, error), True, m, _read_here(m, kinds, error))


def _read_here(m: ReleaseManifest, kinds: tuple[str, ...], error: type[Gpt2hubError]) -> str:
    """The release's kind, refused in one line where this command reads other kinds only."""
    if m.kind not in kinds:
        raise error(f"{m.name}: an imported {m.kind} checkpoint; this command reads {', '.join(kinds)} only "
                    f"(`gpt2hub convert {m.name} --to tf --out DIR` writes OpenAI's layout)")
    return m.kind


def original_path(m: ReleaseManifest, error: type[Gpt2hubError] = Gpt2hubError) -> Path:
    """Where a release's original checkpoint is in the store: its folder, or for a one-file kind (an imported
    ckpt.pt, .bin, .gguf) the first of the manifest's files that holds that kind."""
    folder = store.release_dir(m.name)
    if m.kind not in source_kinds.names():
        raise error(f"{m.name}: the manifest's kind {m.kind!r} is not one gpt2hub reads; kinds: "
                    f"{', '.join(source_kinds.names())}")
    kind = source_kinds.get(m.kind)
    if not kind.is_file:
        return folder
    for f in m.files:
        path = store.inside(folder, f.name)
        if path.is_file() and kind.detect(path):
            return path
    raise error(f"{m.name}: no file in {folder} holds a {m.kind} checkpoint ({kind.accepts})")


def _kind(path: Path, original: Path, kinds: tuple[str, ...], from_: str | None, error: type[Gpt2hubError]) -> str:
    """What the path holds, from its content (or as --from says), among `kinds`; else one line saying what it
    looked like and what is accepted."""
    found = source_kinds.detect(original, from_)
    if found is not None and found.name in kinds:
        return found.name
    no_tf = f"{path}: no TensorFlow checkpoint (*.index) here or in {path / 'original'}"
    if kinds == (tfcheckpoint.KIND,):  # the commands that read OpenAI's layout only
        raise error(no_tf)
    if from_ in (None, tfcheckpoint.KIND) and original.is_dir() and any(original.glob("model.ckpt*")):
        raise error(f"{no_tf}: the TF checkpoint's index is missing")  # a TF release with a file lost
    raise source_kinds.refuse(original, from_, error)
