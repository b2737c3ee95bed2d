"""GPT-2's byte-level BPE as a tiktoken Encoding, built from a release's encoder.json and vocab.bpe."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .errors import CheckpointError, parse_json

ENDOFTEXT = "<|endoftext|>"
# openai/gpt-2 src/encoder.py's pre-tokenizer, as tiktoken's r50k_base writes it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def byte_decoder() -> dict[str, int]:
    """openai `bytes_to_unicode`, inverted: the printable stand-in character -> the byte it encodes."""
    return {c: b for b, c in bytes_to_unicode().items()}


def mergeable_ranks(folder: Path) -> tuple[dict[bytes, int], int]:
    """(token bytes -> id, id of <|endoftext|>) from encoder.json, checked against vocab.bpe's merge order.

    Written here rather than with tiktoken.load.data_gym_to_mergeable_bpe_ranks, which caches
    files by path in the temp folder and so would return stale vocabularies for reused paths.
    """
    enc_path, bpe_path = folder / "encoder.json", folder / "vocab.bpe"
    try:
        encoder = parse_json(enc_path.read_text(encoding="utf-8"), str(enc_path), CheckpointError)
        merges = bpe_path.read_text(encoding="utf-8").split("\n")[1:]
    except FileNotFoundError as e:
        raise CheckpointError(f"{e.filename}: no such file (the tokenizer needs encoder.json and vocab.bpe)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{enc_path}: unreadable ({e})") from None
    if not isinstance(encoder, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in encoder.values()):
        raise CheckpointError(f"{enc_path}: not a JSON object mapping tokens to ids")
    if ENDOFTEXT not in encoder:
        raise CheckpointError(f"{enc_path}: no {ENDOFTEXT} token")
    eot = encoder.pop(ENDOFTEXT)
    decode = byte_decoder()
    try:
        ranks = {bytes(decode[c] for c in token): i for token, i in encoder.items()}
    except KeyError as e:
        raise CheckpointError(f"{enc_path}: character {e} is not in GPT-2's byte alphabet") from None
    # tiktoken merges by rank, so a token's id must be its merge's priority: merge i makes id 256 + i.
    for i, line in enumerate(m for m in merges if m):
        first, _, second = line.partition(" ")
        merged = bytes(decode.get(c, 0) for c in first + second)
        if ranks.get(merged) != 256 + i:
            raise CheckpointError(f"{bpe_path}: merge {i + 1} ({line!r}) is not token {256 + i} of encoder.json")
    return ranks, eot


def encoding(folder: Path | str):
    """A tiktoken.Encoding for the release folder's encoder.json + vocab.bpe (GPT-2's regex)."""
    import tiktoken

    folder = Path(folder)
    ranks, eot = mergeable_ranks(folder)
    return tiktoken.Encoding(name=f"gpt2:{folder}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: eot})


# --- a small genuine byte-level BPE, for demo releases and tests --------------------------------
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


def bytes_to_unicode() -> dict[int, str]:
    """openai/gpt-2 src/encoder.py: byte -> printable unicode character, in encoder.json order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


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
