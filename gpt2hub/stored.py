"""What a converted output stores, as its format reads it back for verify's exact proofs (no weight read).

Formats (converters/) build these from their headers; gpt2hub.verification.weights checks them against the
source. They live here, below both, so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2}  # bytes per value of the unblocked encodings (gguf-py's type names)


@dataclass(frozen=True)
class Stored:
    """One tensor as an output stores it: name, encoding (gguf-py's type name), logical shape, byte range."""

    name: str
    encoding: str
    shape: tuple[int, ...]
    path: Path
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Expected:
    """What a stored tensor must be: the TF variable it comes from, its encoding, and whether it is transposed."""

    source: str
    encoding: str
    transpose: bool = False
    zero_rows: int = 0  # rows stored after the source's, every bit zero (llm.c pads wte to a multiple of 128)


@dataclass
class StoredOutput:
    """An output as its format reads it back for the proofs: what it stores, what it must store, its metadata."""

    dtype: str
    config: dict  # GPTConfig's fields as the output declares them: n_vocab, n_ctx, n_embd, n_head, n_layer, eps, activation,
    # n_inner, tied, attn_scale_by_layer
    tensors: dict[str, Stored]
    expected: dict[str, Expected]
    problems: list[str] = field(default_factory=list)  # format-specific metadata that is wrong (tokenizer, semantics keys)
    approximated: list[str] = field(default_factory=list)  # fields computed at GPT-2's value (--allow-approximate-activation)
