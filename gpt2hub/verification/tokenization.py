"""Tokenization parity: tiktoken on encoder.json/vocab.bpe against every output's own tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

from .. import converters, isolation
from ..errors import ConsumerCrashed
from ..vocabulary import Vocab
from .consumers import one_line
from .report import TokenizerRow

# Whitespace runs, contractions, digits, non-Latin scripts, emoji.
TOKENIZER_TEXT = (
    "Hello world!  Two  spaces,   three,\ttab,\n\nnewlines\r\n and trailing   \n"
    "It's, I'm, we'll, they're, I'd, you've, don't; IT'S LOUD. 'quoted' \"double\"\n"
    "Digits: 0 7 42 1234567890 3.14159 1,000,000 2026-11-23 0x1F\n"
    "Ünïcödé café naïve résumé; Ελληνικά; Русский текст; עברית; العربية; हिन्दी; 日本語のテキスト; 中文; 한국어\n"
    "Emoji: 🙂 👍🏽 👨‍👩‍👧‍👦 🇺🇳 ✨🚀  — en–dash … «guillemets» ¿qué? ¡sí!\n"
    "    indented code(x) {return x**2;}  // end   "
)


def _first_difference(a: Sequence[int], b: Sequence[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"differs at token {i} ({list(a[i:i + 3])} vs tiktoken {list(b[i:i + 3])})"


def check_tokenizers(original: Path, outputs: Sequence[tuple[str, Path | None]], text: str = TOKENIZER_TEXT,
                     vocab: Vocab | None = None) -> list[TokenizerRow]:
    """tiktoken's ids for `text` (on the release folder's encoder.json + vocab.bpe, or `vocab`: the original's own,
    added tokens included), and whether every other tokenizer of the release gives the same."""
    from ..tokenizer import encoding, vocab_encoding

    enc = vocab_encoding(vocab) if vocab is not None else encoding(original)
    ref = enc.encode(text)
    round_trip = enc.decode(ref) == text
    rows = [TokenizerRow("tiktoken", str(original), len(ref), round_trip,
                         "decode(encode(text)) == text" if round_trip else "does not round-trip")]
    for fmt, path in outputs:
        reader = converters.get(fmt).tokenizer
        source = reader.file(path) if reader is not None and path is not None else None
        if source is None or importlib.util.find_spec(reader.requires) is None:
            continue
        name = reader.name
        try:
            ids = isolation.run(reader.ids, (source, text), name=name)
        except Exception as e:  # a tokenizer that cannot load is that file's FAIL row; one that crashes, ERROR
            rows.append(TokenizerRow(name, str(source), None, False, one_line(e), isinstance(e, ConsumerCrashed)))
            continue
        rows.append(TokenizerRow(name, str(source), len(ids), ids == ref, "same ids" if ids == ref else _first_difference(ids, ref)))
    return rows
