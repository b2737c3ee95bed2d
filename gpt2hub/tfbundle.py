"""The tensor bundle's own records: BundleEntryProto and BundleHeaderProto, dtypes, and data file names.

Hand-written protobuf wire format: the bundle protos use six scalar fields, and this avoids depending on
protobuf and TensorFlow's generated classes for them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import lazy
from .errors import CheckpointError
from .sstable import put_varint, read_varint

np = lazy.module("numpy")  # loaded on first use: reading an index does not need it

HEADER_KEY = b""  # the index key of the BundleHeaderProto

# tensorflow/core/framework/types.proto -> numpy dtype, as numpy spells it (np.dtype(...) where an object is
# needed: numpy loads on first use); the _REF variants (+100) read the same.
DTYPES: dict[int, str] = {
    1: "<f4",   # DT_FLOAT
    2: "<f8",   # DT_DOUBLE
    3: "<i4",   # DT_INT32
    4: "u1",    # DT_UINT8
    5: "<i2",   # DT_INT16
    6: "i1",    # DT_INT8
    9: "<i8",   # DT_INT64
    10: "?",    # DT_BOOL
    14: "<u2",  # DT_BFLOAT16: numpy has no bfloat16, so its raw 16-bit words
    17: "<u2",  # DT_UINT16
    19: "<f2",  # DT_HALF
    22: "<u4",  # DT_UINT32
    23: "<u8",  # DT_UINT64
}
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
               9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32", 23: "uint64"}
ITEMSIZE = {k: int(v[-1]) if v[-1].isdigit() else 1 for k, v in DTYPES.items()}
DT_STRING = 7


# --- protobuf wire format -------------------------------------------------------------------

def _fields(buf: bytes, what: str) -> Iterator[tuple[int, int, object]]:
    """Yield (field number, wire type, value) of a serialized protobuf message."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = read_varint(buf, pos, end, what)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos, end, what)
        elif wire == 1:
            if pos + 8 > end:
                raise CheckpointError(f"{what}: truncated fixed64")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = read_varint(buf, pos, end, what)
            if pos + n > end:
                raise CheckpointError(f"{what}: length-delimited field runs past its message")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            if pos + 4 > end:
                raise CheckpointError(f"{what}: truncated fixed32")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise CheckpointError(f"{what}: unsupported protobuf wire type {wire}")
        yield field, wire, value



def _put_field(field: int, value: int | bytes, fixed32: bool = False) -> bytes:
    if isinstance(value, bytes):
        return put_varint(field << 3 | 2) + put_varint(len(value)) + value
    if fixed32:
        return put_varint(field << 3 | 5) + struct.pack("<I", value)
    return put_varint(field << 3) + put_varint(value)



# --- bundle entries -------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a bundle: where its bytes are and the masked CRC32C TF recorded for them."""

    name: str
    dtype_code: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int
    sliced: bool = False

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype_code % 100, f"unknown dtype {self.dtype_code}")

    @property
    def dtype(self) -> np.dtype:
        try:
            return np.dtype(DTYPES[self.dtype_code % 100])
        except KeyError:
            raise CheckpointError(f"{self.name}: {self.dtype_name} cannot be read as an array") from None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class BundleHeader:
    num_shards: int
    little_endian: bool
    producer: int


def _wire(field: int, wire: int, expected: int, what: str) -> None:
    """Reject a known field sent with the wrong wire type (its value would have the wrong kind)."""
    if wire != expected:
        raise CheckpointError(f"{what}: field {field} has wire type {wire}, expected {expected}")


def _parse_shape(buf: bytes, what: str) -> tuple[int, ...]:
    dims = []
    for field, wire, value in _fields(buf, what):
        if field == 2:
            _wire(field, wire, 2, what)
            size = 0
            for f, w, v in _fields(value, what):  # type: ignore[arg-type]
                if f == 1:
                    _wire(f, w, 0, what)
                    size = v if v < 1 << 63 else v - (1 << 64)  # int64
            if size < 0:
                raise CheckpointError(f"{what}: negative dimension {size}")
            dims.append(size)
        elif field == 3 and value:
            raise CheckpointError(f"{what}: shape of unknown rank")
    return tuple(dims)


def parse_entry(name: str, value: bytes) -> TensorEntry:
    """Decode a BundleEntryProto."""
    what = f"model.ckpt.index: entry {name!r}"
    fields = {"dtype_code": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": 0, "sliced": False}
    for field, wire, v in _fields(value, what):
        if field == 1 and wire == 0:
            fields["dtype_code"] = v
        elif field == 2 and wire == 2:
            fields["shape"] = _parse_shape(v, what)  # type: ignore[arg-type]
        elif field == 3 and wire == 0:
            fields["shard_id"] = v
        elif field == 4 and wire == 0:
            fields["offset"] = v
        elif field == 5 and wire == 0:
            fields["size"] = v
        elif field == 6 and wire == 5:
            fields["crc32c"] = v
        elif field == 7:
            fields["sliced"] = True
    if fields["offset"] >= 1 << 62 or fields["size"] >= 1 << 62:  # negative int64s
        raise CheckpointError(f"{what}: negative offset or size")
    return TensorEntry(name=name, **fields)  # type: ignore[arg-type]


def encode_entry(e: TensorEntry) -> bytes:
    """Encode a BundleEntryProto as TF's proto3 serializer does (zero scalars omitted)."""
    shape = b"".join(_put_field(2, _put_field(1, d) if d else b"") for d in e.shape)
    out = _put_field(1, e.dtype_code) if e.dtype_code else b""
    out += _put_field(2, shape)
    for field, value in ((3, e.shard_id), (4, e.offset), (5, e.size)):
        if value:
            out += _put_field(field, value)
    if e.crc32c:
        out += _put_field(6, e.crc32c, fixed32=True)
    return out


def parse_header(value: bytes) -> BundleHeader:
    what = "model.ckpt.index: bundle header"
    num_shards, endianness, producer = 0, 0, 0
    for field, wire, v in _fields(value, what):
        if field in (1, 2, 3):
            _wire(field, wire, 2 if field == 3 else 0, what)
        if field == 1:
            num_shards = v
        elif field == 2:
            endianness = v
        elif field == 3:
            for f, w, pv in _fields(v, what):  # type: ignore[arg-type]
                if f == 1:
                    _wire(f, w, 0, what)
                    producer = pv
    if num_shards < 1 or num_shards > 1 << 16:
        raise CheckpointError(f"{what}: implausible shard count {num_shards}")
    return BundleHeader(num_shards=num_shards, little_endian=endianness == 0, producer=producer)


def encode_header(num_shards: int = 1) -> bytes:
    return _put_field(1, num_shards) + _put_field(3, _put_field(1, 1))

def data_filename(prefix: Path, shard: int, num_shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")
