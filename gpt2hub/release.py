"""A release on disk: NAME (pulled into the store) or DIR (a checkpoint folder), found one way for every command."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import converters, registry, store
from .errors import Gpt2hubError
from .manifest import ReleaseManifest


@dataclass(frozen=True)
class Release:
    """Where a release's original checkpoint is, and what is known of it."""

    name: str
    original: Path
    in_store: bool
    manifest: ReleaseManifest | None

    def output_paths(self, fmt: str) -> list[Path]:
        """Where `gpt2hub convert` puts this release's `fmt` outputs (a folder, or one file per dtype)."""
        form = converters.get(fmt)
        if self.in_store:
            return form.outputs_in(store.release_dir(self.name, fmt))
        # convert writes beside a checkpoint folder outside the store (DIR-<fmt>/, DIR-<dtype><suffix>);
        # a release root laid out as the store (DIR/original, DIR/<fmt>/) is found too.
        return form.outputs_beside(self.original)


def pulled_names() -> list[str]:
    return [m.name for m in registry.releases() if store.original_state(m.name) == "verified"]


def locate(target: str | os.PathLike | None, manifest: Path | str | None = None, *,
           error: type[Gpt2hubError] = Gpt2hubError, complete: bool = True) -> Release:
    """NAME (or alias), DIR (a checkpoint folder, or a release root holding original/), or nothing: the one release pulled.

    Every failure is `error` with one line: no such folder or no checkpoint in it, nothing pulled or several,
    a release not pulled (or, with `complete`, only partly pulled).
    """
    path = Path(target).expanduser() if target is not None else None
    if path is not None and (path.is_dir() or os.sep in str(target)):
        if not path.is_dir():
            raise error(f"{path}: no such folder")
        path = path.absolute()  # not resolve(): outputs are found beside the path as given, even through a link
        original = path / "original" if (path / "original").is_dir() else path
        if not any(original.glob("*.index")):
            raise error(f"{path}: no TensorFlow checkpoint (*.index) here or in {path / 'original'}")
        named_by_store = original.name == "original" and original.parent.parent.resolve() == store.home().resolve()
        if manifest is not None:
            m = registry.resolve(None, manifest)
        elif named_by_store:
            m = next((r for r in registry.releases() if r.name == original.parent.name), None)
        else:
            m = None
        name = m.name if m else (original.parent.name if original.name == "original" else original.name)
        return Release(name, original, named_by_store, m)
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
    return Release(m.name, store.release_dir(m.name), True, m)
