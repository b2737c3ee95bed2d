"""The kinds of checkpoint gpt2hub reads (convert's --from), as data: each source module declares one `SOURCE`.

A source is detected from its content, never its name. Every kind but OpenAI's own layout opens to a
checkpoint object with the attributes converters read: `.entries` {OpenAI's variable name: SourceTensor},
`.data_paths` (the files the entries' byte ranges are in), `.index_path` (the file naming the tensors),
`.hparams` (layout.HParams, variant fields included), `.vocab` (vocabulary.Vocab), `.hparams_from` (e.g.
"config.json"), `.ignored` (tensors read and set aside, e.g. optimizer state), `.notes` (what the output and
report should say, e.g. that quantized tensors were dequantized), and `.close()`.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import Gpt2hubError, load_json


@dataclass(frozen=True)
class OpenOptions:
    """What the user said about a source beyond its path."""

    vocab: Path | None = None  # --vocab DIR: GPT-2's encoder.json + vocab.bpe for a source that carries none
    vocab_kept: bool = False  # `vocab` is the copy import kept beside a one-file checkpoint in the store, not --vocab


@dataclass(frozen=True)
class SourceKind:
    """One kind of checkpoint: its --from name, how errors name it, how it is detected, and how it opens."""

    name: str  # --from NAME; also Release.kind and ConvertInput.source_kind
    rank: int  # detection order (first match wins) and listing order
    accepts: str  # "a nanoGPT ckpt.pt (torch.save of train.py's dict)": for "accepted: ..." in error lines
    is_file: bool  # the path is one file (ckpt.pt, .bin, .gguf); False: a folder
    detect: Callable[[Path], bool]  # whether the path holds this kind, from its content (cheap: headers only)
    open: Callable[[Path, OpenOptions], Any] | None  # None: OpenAI's layout, which conversion opens itself
    exact: bool = True  # False where reading may lose nothing only by luck (quantized GGUF): said in errors/notes


# The modules that declare a SOURCE, in no particular order (rank orders them).
MODULES = ("tfcheckpoint", "hf_source", "llmc_source", "gguf_source", "nanogpt_source")


@functools.cache
def _registry() -> dict[str, SourceKind]:
    found = [importlib.import_module(f"gpt2hub.{m}").SOURCE for m in MODULES]
    return {k.name: k for k in sorted(found, key=lambda k: k.rank)}


def kinds() -> list[SourceKind]:
    return list(_registry().values())


def names() -> tuple[str, ...]:
    return tuple(_registry())


def get(name: str) -> SourceKind:
    return _registry()[name]


def detect(path: Path, from_: str | None = None) -> SourceKind | None:
    """The kind a path holds (or --from's, if it holds that), or None."""
    wanted = [get(from_)] if from_ else kinds()
    for kind in wanted:
        if kind.is_file == path.is_file() and kind.detect(path):
            return kind
    return None


def describe(path: Path) -> str:
    """What a path that is no known source looked like, in a few words."""
    if path.is_file():
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            return f"an unreadable file ({e.strerror})"
        size = path.stat().st_size
        return f"a file of {size:,} bytes starting {head!r}"
    config = path / "config.json"
    if config.is_file():
        try:
            data = load_json(config, Gpt2hubError)
        except Gpt2hubError:
            data = None
        model_type = data.get("model_type") if isinstance(data, dict) else None
        return f"config.json with model_type {str(model_type)[:40]!r} and " + _names(path)
    return _names(path) if any(path.iterdir()) else "an empty folder"


def _names(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return "files " + ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def accepted(from_: str | None = None) -> str:
    """'accepted: A, B or C' for an error line."""
    wanted = [get(from_)] if from_ else kinds()
    texts = [k.accepts for k in wanted]
    said = texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]
    return f"accepted{' with --from ' + from_ if from_ else ''}: {said}"


def refuse(path: Path, from_: str | None, error: type[Gpt2hubError]) -> Gpt2hubError:
    """The one-line error for a path that holds no source gpt2hub reads."""
    return error(f"{path}: not a checkpoint gpt2hub reads: it holds {describe(path)}; {accepted(from_)}")
