"""A small genuine byte-level BPE (GPT-2's algorithm) trained offline, for demo and test releases."""

from __future__ import annotations

import json
from collections import Counter

from ..tokenizer import ENDOFTEXT, bytes_to_unicode

# openai/gpt-2 src/encoder.py's pre-tokenizer, as written there for the `regex` module.
GPT2_SOURCE_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
DEFAULT_GENERATED_MERGES = 300

BPE_TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. It's a sentence that uses every letter of the alphabet,
and typists have practised on it for more than a hundred years.

A language model reads text as a sequence of tokens. The tokenizer splits the text into words, then
merges the most frequent pairs of bytes into longer pieces, again and again, until the vocabulary
is large enough. Common words such as "the", "and", "of" and "to" become single tokens; rare words
are spelled out from smaller pieces, and any byte at all can still be written, so nothing is lost.

In 2019 the model was released in four sizes: 124M, 355M, 774M and 1558M parameters. Each release
holds a checkpoint, the hyper-parameters, the encoder and the merges. We'll download the files,
check their sizes and hashes, and convert them to other formats. They're large, so the download
must resume where it stopped, and it shouldn't trust a file until every byte has been verified.

She said: "I've read the paper twice, and I'd read it again." He didn't agree; he thought the
results were interesting but the method wasn't new. Still, they both wanted to run the model on
their own machines, with their own prompts, and see what it would write next.
"""



def train_bpe(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Learn `n_merges` GPT-2 style merges from `text` (pre-tokenized with GPT2_SOURCE_PATTERN).

    Ties on pair frequency break on the pair itself, so the result is deterministic. A pair whose
    concatenation is already a token is never chosen, so every merge makes a new, unique token
    (tiktoken requires that).
    """
    import regex

    b2u = bytes_to_unicode()
    words = Counter(tuple(b2u[b] for b in w.encode("utf-8")) for w in regex.findall(GPT2_SOURCE_PATTERN, text))
    vocab = set(b2u.values())
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                if pair[0] + pair[1] not in vocab:
                    pairs[pair] += count
        if not pairs:
            raise ValueError(f"the BPE training text supports only {len(merges)} merges, not {n_merges}")
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(best)
        vocab.add(merged)
        new_words: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    return merges


def generated_vocab(n_vocab: int | None = None) -> tuple[str, str]:
    """(encoder.json text, vocab.bpe text) of a small genuine byte-level BPE.

    Ids: the 256 byte tokens in bytes_to_unicode order, then one per merge, then <|endoftext|>,
    so n_vocab = 256 + merges + 1 (default 557).
    """
    n_merges = DEFAULT_GENERATED_MERGES if n_vocab is None else n_vocab - 257
    if n_merges < 0:
        raise ValueError(f"n_vocab={n_vocab}: a byte-level BPE needs at least 257 tokens")
    merges = train_bpe(BPE_TRAINING_TEXT, n_merges)
    encoder = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for a, b in merges:
        encoder[a + b] = len(encoder)
    encoder[ENDOFTEXT] = len(encoder)
    vocab_bpe = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return json.dumps(encoder), vocab_bpe
