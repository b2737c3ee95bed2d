"""GPT-2's byte-level BPE as a tiktoken Encoding, built from a release's encoder.json and vocab.bpe."""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError, parse_json

ENDOFTEXT = "<|endoftext|>"
# openai/gpt-2 src/encoder.py's pre-tokenizer, as tiktoken's r50k_base writes it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def byte_decoder() -> dict[str, int]:
    """openai `bytes_to_unicode`, inverted: the printable stand-in character -> the byte it encodes."""
    return {c: b for b, c in bytes_to_unicode().items()}


def read_vocab(folder: Path) -> tuple[list[str], list[str], int]:
    """(tokens by id in byte-level unicode, merges "a b" in rank order, id of <|endoftext|>) of a release.

    The one reader of encoder.json + vocab.bpe: converters and the tiktoken encoding both start here.
    """
    return read_vocab_files(folder / "encoder.json", folder / "vocab.bpe")


def read_vocab_files(enc_path: Path, bpe_path: Path) -> tuple[list[str], list[str], int]:
    """read_vocab of two named files: OpenAI's encoder.json + vocab.bpe, or an HF folder's vocab.json + merges.txt
    (the same token -> id map and the same merges under other names, merges.txt opening with `#version`)."""
    encoder_text, bpe_text = _read_text(enc_path), _read_text(bpe_path)
    try:
        encoder = parse_json(encoder_text, str(enc_path), CheckpointError)  # bounded nesting: one line, not a RecursionError
    except ValueError as e:
        raise CheckpointError(f"{enc_path}: not valid JSON ({e})") from None
    if not isinstance(encoder, dict) or not all(type(i) is int for i in encoder.values()):
        raise CheckpointError(f"{enc_path}: not a JSON object of token -> id (not a GPT-2 encoder)")
    if sorted(encoder.values()) != list(range(len(encoder))):
        raise CheckpointError(f"{enc_path}: ids are not 0..{len(encoder) - 1} (not a GPT-2 encoder)")
    if ENDOFTEXT not in encoder:
        raise CheckpointError(f"{enc_path}: no {ENDOFTEXT} token")
    lines = bpe_text.split("\n")
    merges = [line for line in lines[1 if lines[0].startswith("#version") else 0:] if line]
    if any(len(m.split(" ")) != 2 for m in merges):
        raise CheckpointError(f"{bpe_path}: a merge line is not two symbols separated by a space")
    return sorted(encoder, key=encoder.__getitem__), merges, encoder[ENDOFTEXT]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file (the tokenizer needs encoder.json and vocab.bpe)") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e.strerror or e})") from None


def mergeable_ranks(folder: Path, enc_path: Path | None = None, bpe_path: Path | None = None) -> tuple[dict[bytes, int], int]:
    """(token bytes -> id, id of <|endoftext|>) for tiktoken, whose merges by rank need merge i to make id 256 + i;
    of the folder's encoder.json + vocab.bpe, or the two files named.

    Built here rather than with tiktoken.load.data_gym_to_mergeable_bpe_ranks, which caches
    files by path in the temp folder and so would return stale vocabularies for reused paths.
    """
    enc_path, bpe_path = enc_path or folder / "encoder.json", bpe_path or folder / "vocab.bpe"
    tokens, merges, eot = read_vocab_files(enc_path, bpe_path)
    decode = byte_decoder()
    try:
        ranks = {bytes(decode[c] for c in token): i for i, token in enumerate(tokens) if i != eot}
    except KeyError as e:
        raise CheckpointError(f"{enc_path}: character {e} is not in GPT-2's byte alphabet") from None
    for i, line in enumerate(merges):
        merged = bytes(decode.get(c, 0) for c in line.replace(" ", "", 1))
        if ranks.get(merged) != 256 + i:
            raise CheckpointError(f"{bpe_path}: merge {i + 1} ({line!r}) is not token {256 + i} of {enc_path.name}")
    return ranks, eot


def encoding(folder: Path | str, enc_path: Path | None = None, bpe_path: Path | None = None,
             added: tuple[tuple[int, str, bool], ...] = ()):
    """A tiktoken.Encoding for the release folder's encoder.json + vocab.bpe (or the two files named), GPT-2's
    regex; a fine-tune's added tokens (id, content, special) are tokens of their own, as transformers reads them."""
    import tiktoken

    folder = Path(folder)
    ranks, eot = mergeable_ranks(folder, enc_path, bpe_path)
    return tiktoken.Encoding(name=f"gpt2:{enc_path or folder}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: eot} | {content: i for i, content, _ in added})


def vocab_encoding(vocab):
    """encoding() of a vocabulary.Vocab: its two files, its added tokens."""
    return encoding(vocab.encoder_json.parent, vocab.encoder_json, vocab.vocab_bpe, vocab.added)


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
