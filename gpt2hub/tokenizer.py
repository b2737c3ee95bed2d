"""GPT-2's byte-level BPE as a tiktoken Encoding, built from a release's encoder.json and vocab.bpe."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CheckpointError

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
        encoder = json.loads(enc_path.read_text(encoding="utf-8"))
        merges = bpe_path.read_text(encoding="utf-8").split("\n")[1:]
    except FileNotFoundError as e:
        raise CheckpointError(f"{e.filename}: no such file (the tokenizer needs encoder.json and vocab.bpe)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{enc_path}: unreadable ({e})") from None
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
