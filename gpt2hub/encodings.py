"""How tensor values are encoded on disk (gguf-py's type names: F32, F16, BF16, Q8_0, Q4_K, ...), and back to float32.

Shared by the source readers (a checkpoint's tensors as stored) and verify's proofs (an output's tensors as stored).
"""

from __future__ import annotations

import math

from . import lazy

np = lazy.module("numpy")

UNBLOCKED = ("F32", "F16", "BF16")  # one value per element; anything else is a ggml block type


def raw_dtype(encoding: str):
    """The numpy dtype of an unblocked encoding's elements (BF16 as its uint16 bits)."""
    return np.dtype({"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[encoding])


def qtype(encoding: str):
    import gguf

    return gguf.GGMLQuantizationType[encoding]


def is_known(encoding: str) -> bool:
    """F32/F16/BF16, or a ggml block type gguf-py can dequantize."""
    if encoding in UNBLOCKED:
        return True
    try:
        import gguf
    except ImportError:
        return False
    return encoding in gguf.GGMLQuantizationType.__members__ and qtype(encoding) in gguf.GGML_QUANT_SIZES


def block_size(encoding: str) -> int:
    """Values per block: 1 for the unblocked encodings."""
    if encoding in UNBLOCKED:
        return 1
    import gguf

    return gguf.GGML_QUANT_SIZES[qtype(encoding)][0]


def rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    return (1, shape[0]) if len(shape) == 1 else (math.prod(shape[:-1]), shape[-1])


def row_bytes(encoding: str, cols: int) -> int:
    """Bytes of one row of `cols` values (a whole number of blocks for a block type)."""
    if encoding in UNBLOCKED:
        return raw_dtype(encoding).itemsize * cols
    import gguf

    size, type_size = gguf.GGML_QUANT_SIZES[qtype(encoding)]
    return cols // size * type_size


def nbytes(encoding: str, shape: tuple[int, ...]) -> int:
    rows, cols = rows_cols(shape)
    return rows * row_bytes(encoding, cols)


def decode(raw: np.ndarray, encoding: str) -> np.ndarray:
    """Stored rows back to float32: F16/BF16 widened exactly; block types by gguf-py's dequantizer."""
    if encoding == "F32":
        return raw
    if encoding == "F16":
        return raw.astype(np.float32)  # every f16 is a float32: exact
    if encoding == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    import gguf

    return gguf.quants.dequantize(raw, qtype(encoding))
