"""GPT-2's own vocabulary for a source that carries none (nanoGPT, llm.c without its tokenizer file, an HF folder
without tokenizer files): from `--vocab DIR`, else a pulled OpenAI release in the store, else tiktoken's cache.

A pulled release's and tiktoken's files count only with the sha256 OpenAI published for encoder.json and vocab.bpe
(tiktoken_cache.GPT2_FILES); `--vocab DIR` is the user's word, held to GPT-2's 50257 tokens with <|endoftext|> last.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from . import registry, store, tiktoken_cache, vocab_cache
from .errors import ConversionError, TiktokenError
from .source_kinds import OpenOptions
from .vocabulary import Vocab

N_TOKENS, EOT_ID = 50257, 50256  # GPT-2's vocabulary: 50,000 merges + 256 bytes + <|endoftext|>
NAMES = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))  # OpenAI's names, then HF's for the same files
SAID = "GPT-2's vocabulary from"  # how every note of a vocabulary taken from here begins (import looks for it)
MAX_BYTES = 4 << 20  # encoder.json is 1,042,301 bytes and vocab.bpe 456,318: anything far larger is not them


def gpt2_vocab(options: OpenOptions, need: str) -> tuple[Vocab, str]:
    """GPT-2's vocabulary and where it came from ("GPT-2's vocabulary from ..."), for `.notes`; `need` says what
    the source lacks (e.g. "ckpt.pt carries no vocabulary") in the one-line error when it is nowhere."""
    if options.vocab is not None:
        where = f"the copy import kept in {options.vocab}" if options.vocab_kept else f"--vocab {options.vocab}"
        return _from_dir(Path(options.vocab)), f"{SAID} {where}"
    found = _from_store() or _from_tiktoken()
    if found is None:
        raise ConversionError(
            f"{need}, and GPT-2's vocabulary is not here: pass --vocab DIR (a folder with encoder.json and vocab.bpe), "
            "pull it (gpt2hub pull 124M --only tokenizer), or fill tiktoken's cache (tiktoken.get_encoding('gpt2'))")
    return found


def _from_dir(folder: Path) -> Vocab:
    """--vocab DIR: encoder.json + vocab.bpe (or vocab.json + merges.txt), in DIR or a store's DIR/original."""
    if not folder.is_dir():
        raise ConversionError(f"--vocab {folder}: no such folder")
    for d in (folder, folder / "original"):
        for enc, bpe in NAMES:
            if (d / enc).is_file() and (d / bpe).is_file():
                return _checked(Vocab.from_files(d / enc, d / bpe), f"--vocab {folder}")
    raise ConversionError(f"--vocab {folder}: no encoder.json and vocab.bpe (nor vocab.json and merges.txt) in it")


def _checked(vocab: Vocab, where: str) -> Vocab:
    if vocab.n_tokens != N_TOKENS or vocab.eot_id != EOT_ID:
        raise ConversionError(f"{where}: {vocab.n_tokens:,} tokens with <|endoftext|> at {vocab.eot_id}, not GPT-2's "
                              f"{N_TOKENS:,} with it at {EOT_ID} (not GPT-2's vocabulary)")
    return vocab


def _openai_bytes(path: Path, name: str) -> bytes | None:
    """The file's bytes if they are OpenAI's published `name` (encoder.json or vocab.bpe), else None."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == tiktoken_cache.GPT2_FILES[name][1] else None


def _from_store() -> tuple[Vocab, str] | None:
    """The first release in the store whose encoder.json and vocab.bpe are OpenAI's files."""
    for m in registry.releases():
        folder = store.release_dir(m.name)
        if all(_openai_bytes(folder / name, name) is not None for name in tiktoken_cache.GPT2_FILES):
            vocab = Vocab.from_files(folder / "encoder.json", folder / "vocab.bpe")
            return vocab, f"GPT-2's vocabulary from the pulled release {m.name}"
    return None


def _from_tiktoken() -> tuple[Vocab, str] | None:
    """encoder.json and vocab.bpe as tiktoken caches them (under the sha1 of their URLs), copied out of that shared
    folder into gpt2hub's vocabulary cache once their bytes are OpenAI's."""
    try:
        folder = tiktoken_cache.cache_dir()
    except TiktokenError:  # the cache turned off
        return None
    contents = {}
    for name, (url, _) in tiktoken_cache.GPT2_FILES.items():
        data = _openai_bytes(folder / hashlib.sha1(url.encode()).hexdigest(), name)
        if data is None:
            return None
        contents[name] = data
    kept = vocab_cache.kept_files(contents)
    return Vocab.from_files(kept["encoder.json"], kept["vocab.bpe"]), f"GPT-2's vocabulary from tiktoken's cache ({folder})"
