"""A release's original checkpoint opened as its kind (OpenAI's layout, an HF folder, ckpt.pt, .bin, .gguf): its
tensors, hparams and vocabulary, as verify, sample and mirror read them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import source_kinds, tfcheckpoint
from .layout import HParams
from .release import Release
from .vocabulary import Vocab

# GPT-2's vocabulary as import copies it beside a one-file checkpoint that carries none (nanoGPT, llm.c).
VOCAB_FILES = ("encoder.json", "vocab.bpe")


@dataclass
class OpenedOriginal:
    """The original opened: `ckpt` has `.entries` (OpenAI's names) and `.data_paths` whatever the kind."""

    release: Release
    ckpt: Any
    hparams: HParams
    vocab: Vocab
    notes: list[str]

    @property
    def is_tf(self) -> bool:
        return self.release.kind == tfcheckpoint.KIND

    def close(self) -> None:
        self.ckpt.close()

    def __enter__(self) -> "OpenedOriginal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_options(release: Release, vocab: Path | str | None = None) -> source_kinds.OpenOptions:
    """`--vocab DIR` if given; else, for a one-file checkpoint in the store, GPT-2's vocabulary import copied
    beside it (so convert, verify and sample need no --vocab again, and a mirror carries it)."""
    if vocab is None and release.in_store and release.original.is_file() and release.kind != tfcheckpoint.KIND \
            and all((release.folder / n).is_file() for n in VOCAB_FILES):
        return source_kinds.OpenOptions(vocab=release.folder, vocab_kept=True)
    return source_kinds.OpenOptions(vocab=Path(vocab).expanduser() if vocab is not None else None)


def open_original(release: Release) -> OpenedOriginal:
    """The release's original as its kind reads it (the kind's own one-line errors on a bad one)."""
    opener = source_kinds.get(release.kind).open
    if opener is None:  # OpenAI's layout
        hp = HParams.from_file(release.original / "hparams.json")
        return OpenedOriginal(release, tfcheckpoint.Checkpoint(release.original), hp,
                              Vocab.in_folder(release.original), [])
    ckpt = opener(release.original, open_options(release))
    return OpenedOriginal(release, ckpt, ckpt.hparams, ckpt.vocab, list(ckpt.notes))


def tokenizer_source(release: Release) -> Vocab:
    """The release's vocabulary (the source's own, added tokens included), for tokenizing a prompt."""
    if release.kind == tfcheckpoint.KIND:
        return Vocab.in_folder(release.original)
    with open_original(release) as o:
        return o.vocab
