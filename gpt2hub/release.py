"""A release on disk: NAME (pulled into the store) or DIR (a checkpoint folder), found one way for every command."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import converters, hf_source, registry, store, tfcheckpoint
from .errors import Gpt2hubError
from .manifest import ReleaseManifest


@dataclass(frozen=True)
class Release:
    """Where a release's original checkpoint is, and what is known of it."""

    name: str
    original: Path
    in_store: bool
    manifest: ReleaseManifest | None
    kind: str = tfcheckpoint.KIND  # what `original` holds: OpenAI's layout, or hf_source.KIND (a Hugging Face GPT-2 folder)

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


KINDS = (tfcheckpoint.KIND, hf_source.KIND)  # source kinds a folder is detected as (convert's --from)
ACCEPTED = {tfcheckpoint.KIND: "a TensorFlow checkpoint (*.index)",
            hf_source.KIND: "a Hugging Face GPT-2 folder (config.json with model_type gpt2 + model.safetensors "
                            "or pytorch_model.bin)"}


def locate(target: str | os.PathLike | None, manifest: Path | str | None = None, *,
           error: type[Gpt2hubError] = Gpt2hubError, complete: bool = True, kinds: tuple[str, ...] = (tfcheckpoint.KIND,),
           from_: str | None = None) -> Release:
    """NAME (or alias), DIR (a checkpoint folder, or a release root holding original/), or nothing: the one release pulled.

    A DIR is detected as one of `kinds` by its content (TF first), or read as `from_` when given.
    Every failure is `error` with one line: no such folder or no checkpoint in it, nothing pulled or several,
    a release not pulled (or, with `complete`, only partly pulled).
    """
    if from_ is not None and from_ not in kinds:
        raise error(f"--from {from_}: not a source kind here; kinds: {', '.join(kinds)}")
    path = Path(target).expanduser() if target is not None else None
    if path is not None and (path.is_dir() or os.sep in str(target)):
        if not path.is_dir():
            raise error(f"{path}: no such folder")
        path = path.absolute()  # not resolve(): outputs are found beside the path as given, even through a link
        original = path / "original" if (path / "original").is_dir() else path
        kind = _kind(path, original, kinds, from_, error)
        named_by_store = original.name == "original" and original.parent.parent.resolve() == store.home().resolve()
        if manifest is not None:
            m = registry.resolve(None, manifest)
        elif named_by_store:
            m = next((r for r in registry.releases() if r.name == original.parent.name), None)
        else:
            m = None
        name = m.name if m else (original.parent.name if original.name == "original" else original.name)
        return Release(name, original, named_by_store, m, kind)
    if from_ not in (None, tfcheckpoint.KIND):
        raise error(f"--from {from_} takes a folder; {target!r} is not one")
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


def _kind(path: Path, original: Path, kinds: tuple[str, ...], from_: str | None, error: type[Gpt2hubError]) -> str:
    """What the folder holds, from its content (or as --from says), among `kinds`; else one line saying what it
    looked like and what is accepted."""
    found = {tfcheckpoint.KIND: any(original.glob("*.index")), hf_source.KIND: hf_source.is_hf_folder(original)}
    wanted = [from_] if from_ else list(kinds)
    for kind in wanted:
        if found[kind]:
            return kind
    no_tf = f"no TensorFlow checkpoint (*.index) here or in {path / 'original'}"
    if kinds == (tfcheckpoint.KIND,):  # the commands that read OpenAI's layout only
        raise error(f"{path}: {no_tf}")
    missing = {tfcheckpoint.KIND: no_tf, hf_source.KIND: "not a Hugging Face GPT-2 folder"}
    accepted = f"accepted{' with --from ' + from_ if from_ else ''}: {' or '.join(ACCEPTED[k] for k in wanted)}"
    raise error(f"{path}: {', and '.join(missing[k] for k in wanted)}: it holds {hf_source.describe(original)}; "
                f"{accepted}")
