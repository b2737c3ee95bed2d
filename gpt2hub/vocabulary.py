"""A release's BPE vocabulary as converters read it, with what is derived from it cached (gpt2hub.vocab_cache)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

from . import vocab_cache
from .errors import CheckpointError
from .tokenizer import read_vocab_files
from .version import __version__


@dataclass(frozen=True)
class Vocab:
    """The BPE vocabulary of a release (encoder.json + vocab.bpe): tokens by id (byte-level unicode), merges,
    <|endoftext|>; plus the tokens a fine-tune added (`added`: (id, content, special), ids contiguous after the
    base tokens). Parsed on first use; what converters derive from it is cached by the files' sha256."""

    encoder_json: Path
    vocab_bpe: Path
    added: tuple[tuple[int, str, bool], ...] = ()

    @classmethod
    def from_folder(cls, folder: Path) -> "Vocab":
        """The vocabulary of a release folder (gpt2hub.tokenizer.read_vocab's checks and errors), read on first
        use; one seen before (the same files' sha256) is not read again."""
        return cls.from_files(folder / "encoder.json", folder / "vocab.bpe")

    @classmethod
    def from_files(cls, encoder_json: Path, vocab_bpe: Path, added: tuple[tuple[int, str, bool], ...] = ()) -> "Vocab":
        """from_folder for files named otherwise (an HF folder's vocab.json and merges.txt), with added tokens."""
        vocab = cls(encoder_json, vocab_bpe, tuple(added))
        vocab.facts  # a vocabulary not seen before is read now: a bad one fails before anything is written
        base = vocab.facts["n_tokens"]
        ids = [i for i, _, _ in vocab.added]
        if ids != list(range(base, base + len(ids))):
            raise CheckpointError(f"{encoder_json}: added token ids {ids[:4]}... do not follow the {base} base tokens "
                                  "one by one")
        return vocab

    @classmethod
    def in_folder(cls, folder: Path) -> "Vocab":
        """The vocabulary of a release folder, not read until a property is asked for."""
        return cls(folder / "encoder.json", folder / "vocab.bpe")

    @cached_property
    def key(self) -> str:
        """The vocabulary's cache key (see gpt2hub.vocab_cache)."""
        try:
            salt = f"gpt2hub {__version__}" + (f" added {json.dumps(self.added)}" if self.added else "")
            return vocab_cache.key([self.encoder_json, self.vocab_bpe], salt)
        except OSError:
            read_vocab_files(self.encoder_json, self.vocab_bpe)  # says what is wrong with the files, in one line
            raise

    def derived(self, name: str, build: Callable[[], str]) -> str:
        """A text built from this vocabulary only (tokenizer.json, say), from the cache when it was built before."""
        return vocab_cache.cached_text(self.key, name, build)

    @cached_property
    def facts(self) -> dict:
        """{"eot_id", "n_tokens"}: what configs need, without reading the files where they were seen before."""
        return json.loads(self.derived("facts.json", lambda: json.dumps(
            {"eot_id": self._parsed[2], "n_tokens": len(self._parsed[0])})))

    @property
    def eot_id(self) -> int:
        return self.facts["eot_id"]

    @property
    def n_tokens(self) -> int:
        """Every token: the base vocabulary's and the added ones."""
        return self.facts["n_tokens"] + len(self.added)

    @property
    def all_tokens(self) -> list[str]:
        """The tokens by id, added ones included (their content as written, not byte-level unicode)."""
        return self.tokens + [content for _, content, _ in self.added]

    @property
    def tokens(self) -> list[str]:
        return self._parsed[0]

    @property
    def merges(self) -> list[str]:
        """"a b" pairs, in rank order."""
        return self._parsed[1]

    @cached_property
    def _parsed(self) -> tuple[list[str], list[str], int]:
        return read_vocab_files(self.encoder_json, self.vocab_bpe)
