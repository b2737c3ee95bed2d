"""A GGUF file's header (metadata and tensor infos), parsed in one checked pass without gguf-py's reader."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConversionError


@dataclass(frozen=True)
class TensorInfo:
    """One tensor info of a GGUF header: dims as stored (ne0 first), ggml type, absolute byte range."""

    name: str
    dims: tuple[int, ...]
    type: Any  # gguf.GGMLQuantizationType
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Header:
    """A GGUF file's metadata (key -> value; arrays as lists) and tensor infos."""

    fields: dict[str, Any]
    tensors: list[TensorInfo]


MAX_ARRAY = 1 << 22  # entries of one metadata array (GPT-2's vocabulary: 50,257): more is not a GPT-2 file
MAX_NESTING = 3  # arrays within arrays: GPT-2 GGUFs nest one deep (lists of strings); a little room for others'
MAX_ALIGNMENT = 1 << 16  # general.alignment: a power of two, a multiple of 8 (GGUF's rule), at most a large page
MAX_DIMS = 4  # ggml tensors have at most four dimensions
# The fewest bytes a key-value (key length, type, a 1-byte value) and a tensor info (name length, n_dims, type,
# offset) can take: their counts are checked against the bytes left before any is read.
MIN_KV_BYTES, MIN_TENSOR_INFO_BYTES = 8 + 4 + 1, 8 + 4 + 4 + 8


def read_header(path: Path) -> Header:
    """The header of a GGUF file, parsed with struct in one pass over a memory map.

    Written here rather than gguf-py's GGUFReader, which builds numpy views per string and takes ~5 s on
    GPT-2's vocabulary and merges (150,000 strings); this takes ~0.3 s. Every count and length is checked
    against the bytes left, so a crafted header fails in one line instead of reading past the file.
    """
    import mmap
    import struct

    import gguf

    vt = gguf.GGUFValueType
    scalars = {vt.UINT8: "B", vt.INT8: "b", vt.UINT16: "H", vt.INT16: "h", vt.UINT32: "I", vt.INT32: "i",
               vt.FLOAT32: "f", vt.BOOL: "?", vt.UINT64: "Q", vt.INT64: "q", vt.FLOAT64: "d"}
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            pos = 0

            def many(fmt: str) -> tuple:
                nonlocal pos
                size = struct.calcsize("<" + fmt)
                if pos + size > len(m):
                    raise ValueError("the header runs past the end of the file")
                pos += size
                return struct.unpack_from("<" + fmt, m, pos - size)

            def take(fmt: str):
                return many(fmt)[0]

            def string() -> str:
                nonlocal pos
                n = take("Q")
                if n > len(m) - pos:
                    raise ValueError("a string runs past the end of the file")
                pos += n
                return m[pos - n:pos].decode("utf-8", errors="surrogateescape")

            def value(t: int, depth: int = 0):
                if t == vt.STRING:
                    return string()
                if t == vt.ARRAY:
                    if depth >= MAX_NESTING:
                        raise ValueError(f"metadata arrays nested more than {MAX_NESTING} deep")
                    et, n = vt(take("I")), take("Q")
                    if n > MAX_ARRAY:
                        raise ValueError(f"an array of {n:,} entries (at most {MAX_ARRAY:,})")
                    least = struct.calcsize("<" + scalars[et]) if et in scalars else 8 if et == vt.STRING else 12
                    if n * least > len(m) - pos:
                        raise ValueError(f"an array of {n:,} entries runs past the end of the file")
                    if et in scalars:
                        return list(many(f"{n}{scalars[et]}"))
                    return [value(et, depth + 1) for _ in range(n)]
                return take(scalars[vt(t)])

            magic, version, n_tensors, n_kv = many("IIQQ")
            if magic != gguf.GGUF_MAGIC or version not in gguf.READER_SUPPORTED_VERSIONS:
                raise ValueError(f"magic {magic:#x}, version {version}")
            if n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_INFO_BYTES > len(m) - pos:
                raise ValueError(f"{n_tensors:,} tensors, {n_kv:,} keys in a {len(m):,}-byte file")
            fields = {}
            for _ in range(n_kv):
                key = string()
                fields[key] = value(take("I"))
            raw = []
            for _ in range(n_tensors):
                name = string()
                n_dims = take("I")
                if n_dims > MAX_DIMS:
                    raise ValueError(f"tensor {name} has {n_dims:,} dimensions (ggml has at most {MAX_DIMS})")
                dims = many(f"{n_dims}Q")
                raw.append((name, dims, gguf.GGMLQuantizationType(take("I")), take("Q")))
            align = fields.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT)
            if (not isinstance(align, int) or isinstance(align, bool) or not 8 <= align <= MAX_ALIGNMENT
                    or align & (align - 1)):
                raise ValueError(f"{gguf.Keys.General.ALIGNMENT} is {align!r}, not a power of two from 8 to "
                                 f"{MAX_ALIGNMENT:,}")
            start = -(-pos // align) * align
            tensors = []
            for name, dims, typ, offset in raw:
                if typ not in gguf.GGML_QUANT_SIZES:
                    raise ValueError(f"tensor {name} has type {typ.name}, whose size gguf does not know")
                block, type_size = gguf.GGML_QUANT_SIZES[typ]
                nbytes = math.prod(dims) // block * type_size
                if start + offset + nbytes > len(m):
                    raise ValueError(f"tensor {name} runs past the end of the file")
                tensors.append(TensorInfo(name, dims, typ, start + offset, nbytes))
            return Header(fields, tensors)
    except (OSError, ValueError, KeyError, OverflowError, struct.error) as e:
        raise ConversionError(f"{path}: not a GGUF file ({e})") from None
