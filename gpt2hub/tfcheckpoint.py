"""Read and write TensorFlow V2 checkpoints (tensor bundles) without TensorFlow.

A bundle is `P.index`, an SSTable mapping tensor names to BundleEntryProto values, and
`P.data-NNNNN-of-NNNNN`, the raw little-endian tensor bytes. Tensors open as zero-copy
numpy views of a memory map; their masked CRC32C is checked on request.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import lazy
from .errors import CheckpointError, ChecksumError

# Loaded on first use: reading an index needs neither, and convert's f32 copies never touch numpy.
np = lazy.module("numpy")
_crc32c = lazy.module("crc32c")

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c
NO_COMPRESSION, SNAPPY_COMPRESSION = 0, 1
BLOCK_SIZE = 262144  # TF's table_options.h defaults, kept so our index is byte-identical to TF's
BLOCK_RESTART_INTERVAL = 16
HEADER_KEY = b""
# Bounds on an index (the real 1558M one: 20 KB, 581 keys of under 40 bytes). Prefix compression lets a
# small hostile file expand to huge keys, so key length, key count and all key bytes together are capped.
MAX_INDEX_BYTES = 64 << 20
MAX_BLOCK_BYTES = 16 << 20  # a block after snappy decompression
MAX_KEY_BYTES = 4096
MAX_ENTRIES = 1 << 16
MAX_TOTAL_KEY_BYTES = 4 << 20

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
CRC_CHUNK_BYTES = 8 << 20  # read size of the CRC pass: bounds its resident memory


# --- checksums ------------------------------------------------------------------------------

SMALL_CRC_BYTES = 32 << 10  # up to this, CRC32C in Python (a few ms) beats importing the crc32c package (~40 ms)


def crc32c(data, value: int = 0) -> int:
    """CRC32C (Castagnoli) of a buffer, continuing from `value`."""
    if len(data) <= SMALL_CRC_BYTES and "crc32c._crc32c" not in sys.modules:
        return _small_crc32c(bytes(data), value)
    return _crc32c.crc32c(data, value)


@functools.cache
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return tuple(table)


def _small_crc32c(data: bytes, value: int) -> int:
    """CRC32C byte by byte (index blocks and headers: kilobytes), as the crc32c package computes it."""
    table, crc = _crc32c_table(), value ^ 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def range_crc32c(path: Path, offset: int, size: int, what: str = "data") -> int:
    """CRC32C of `size` bytes at `offset` of a file, read in chunks into one reused buffer.

    Not through a memory map: every mapped page read stays in the process's resident set (6 GB for
    the 1558M data file); this keeps the CRC pass at CRC_CHUNK_BYTES whatever the file's size.
    """
    buf = bytearray(min(size, CRC_CHUNK_BYTES))
    crc, left = 0, size
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while left:
            view = memoryview(buf)[:min(left, len(buf))]
            n = f.readinto(view)
            if not n:
                raise ChecksumError(f"{Path(path).name}: {what} ends early (the data file shrank or is truncated)")
            crc = crc32c(view[:n], crc)
            left -= n
    return crc


def mask_crc(crc: int) -> int:
    """LevelDB/TF masking: rotate right by 15 and add a constant, so CRCs of CRCs stay strong."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --- protobuf wire format -------------------------------------------------------------------
# Hand-written: the bundle protos use six scalar fields, and this avoids depending on protobuf
# and TensorFlow's generated classes for them.

def _varint(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise CheckpointError(f"{what}: truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, what: str) -> Iterator[tuple[int, int, object]]:
    """Yield (field number, wire type, value) of a serialized protobuf message."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos, end, what)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end, what)
        elif wire == 1:
            if pos + 8 > end:
                raise CheckpointError(f"{what}: truncated fixed64")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos, end, what)
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


def _put_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _put_field(field: int, value: int | bytes, fixed32: bool = False) -> bytes:
    if isinstance(value, bytes):
        return _put_varint(field << 3 | 2) + _put_varint(len(value)) + value
    if fixed32:
        return _put_varint(field << 3 | 5) + struct.pack("<I", value)
    return _put_varint(field << 3) + _put_varint(value)


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


# --- the SSTable ----------------------------------------------------------------------------

def _read_handle(buf: bytes, pos: int, end: int, what: str) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos, end, what)
    size, pos = _varint(buf, pos, end, what)
    return (offset, size), pos


def _read_block(data: bytes, handle: tuple[int, int], what: str) -> bytes:
    offset, size = handle
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(data) - FOOTER_SIZE:
        raise CheckpointError(f"{what}: block at {offset}+{size} runs past the end of the file ({len(data)} bytes)")
    contents, kind = data[offset:end], data[end]
    stored = struct.unpack_from("<I", data, end + 1)[0]
    actual = crc32c(data[end:end + 1], crc32c(contents))
    if unmask_crc(stored) != actual:
        raise CheckpointError(f"{what}: block at {offset} fails its CRC32C (stored {unmask_crc(stored):08x}, computed {actual:08x})")
    if kind == NO_COMPRESSION:
        return contents
    if kind == SNAPPY_COMPRESSION:
        import cramjam
        expanded, _ = _varint(contents, 0, len(contents), what)  # raw snappy begins with its decompressed length
        if expanded > MAX_BLOCK_BYTES:
            raise CheckpointError(f"{what}: snappy block at {offset} claims {expanded:,} bytes decompressed (limit {MAX_BLOCK_BYTES:,})")
        try:
            return bytes(cramjam.snappy.decompress_raw(contents))
        except Exception as e:
            raise CheckpointError(f"{what}: block at {offset} is not valid snappy ({e})") from None
    raise CheckpointError(f"{what}: block at {offset} has unknown compression type {kind}")


def _block_entries(block: bytes, what: str) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) of an SSTable block, undoing prefix compression."""
    if len(block) < 4:
        raise CheckpointError(f"{what}: block too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if num_restarts == 0 or limit < 0:
        raise CheckpointError(f"{what}: bad restart array ({num_restarts} restarts in {len(block)} bytes)")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, limit, what)
        non_shared, pos = _varint(block, pos, limit, what)
        value_len, pos = _varint(block, pos, limit, what)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise CheckpointError(f"{what}: corrupt block entry at {pos}")
        if shared + non_shared > MAX_KEY_BYTES:
            raise CheckpointError(f"{what}: a key of {shared + non_shared:,} bytes (limit {MAX_KEY_BYTES:,})")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + value_len]
        pos += value_len


def read_table(data: bytes, what: str = "index") -> Iterator[tuple[bytes, bytes]]:
    """Yield every (key, value) of an SSTable held in `data`, in key order."""
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"{what}: {len(data)} bytes is too short for a checkpoint index (truncated?)")
    footer = data[-FOOTER_SIZE:]
    magic = struct.unpack_from("<Q", footer, 40)[0]
    if magic != TABLE_MAGIC:
        raise CheckpointError(f"{what}: bad magic 0x{magic:016x} (not a TensorFlow checkpoint index, or truncated)")
    _, pos = _read_handle(footer, 0, 40, what)
    index_handle, _ = _read_handle(footer, pos, 40, what)
    previous, count, key_bytes = None, 0, 0
    for _, handle_bytes in _block_entries(_read_block(data, index_handle, what), what):
        handle, _ = _read_handle(handle_bytes, 0, len(handle_bytes), what)
        for key, value in _block_entries(_read_block(data, handle, what), what):
            if previous is not None and key <= previous:
                raise CheckpointError(f"{what}: keys out of order at {key[:60]!r}")
            count, key_bytes = count + 1, key_bytes + len(key)
            if count > MAX_ENTRIES or key_bytes > MAX_TOTAL_KEY_BYTES:
                raise CheckpointError(f"{what}: more than {MAX_ENTRIES:,} entries or {MAX_TOTAL_KEY_BYTES:,} bytes "
                                      "of names; not a checkpoint gpt2hub reads")
            previous = key
            yield key, value


def read_index(path: Path) -> tuple[BundleHeader, dict[str, TensorEntry]]:
    """Parse a `.index` file into its header and its entries by name."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # read(n) allocates n bytes up front: ask for what the file holds
            data = f.read(min(os.fstat(f.fileno()).st_size, MAX_INDEX_BYTES) + 1)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > MAX_INDEX_BYTES:
        raise CheckpointError(f"{path.name}: larger than {MAX_INDEX_BYTES:,} bytes; not a checkpoint index gpt2hub reads")
    header, entries = None, {}
    for key, value in read_table(data, path.name):
        if key == HEADER_KEY:
            header = parse_header(value)
            continue
        try:
            name = key.decode()
        except UnicodeDecodeError:
            raise CheckpointError(f"{path.name}: tensor name {key[:60]!r} is not UTF-8") from None
        entries[name] = parse_entry(name, value)
    if header is None:
        raise CheckpointError(f"{path.name}: no bundle header entry (not a tensor bundle index)")
    if not header.little_endian:
        raise CheckpointError(f"{path.name}: big-endian bundles are not supported")
    for e in entries.values():
        if e.shard_id >= header.num_shards:
            raise CheckpointError(f"{path.name}: {e.name} is in shard {e.shard_id} of {header.num_shards}")
        if e.dtype_code % 100 in DTYPES and not e.sliced and e.size != e.numel * ITEMSIZE[e.dtype_code % 100]:
            raise CheckpointError(f"{path.name}: {e.name} records {e.size} bytes for shape {list(e.shape)} ({e.dtype_name})")
    return header, entries


# --- a checkpoint on disk -------------------------------------------------------------------

def _prefix_of(path: Path) -> Path:
    """The bundle prefix named by a folder, a `.index` file or a prefix."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            with open(state, "rb") as f:
                text = f.read(1 << 16).decode("utf-8", errors="replace")
            m = re.search(r'^model_checkpoint_path:\s*"([^"\x00]+)"', text, re.M)
            if m:
                # Only a prefix inside this folder: a checkpoint file cannot send gpt2hub elsewhere.
                named = Path(m.group(1))
                for prefix in (path / named, path / named.name):  # as written; or the folder moved since
                    index = prefix.with_name(prefix.name + ".index")
                    if index.resolve().parent == path.resolve() and index.is_file():
                        return prefix
        indexes = sorted(path.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        if not indexes:
            raise CheckpointError(f"{path}: no TensorFlow checkpoint (*.index) in this folder")
        raise CheckpointError(f"{path}: several checkpoints ({', '.join(i.name for i in indexes)}); name one")
    if path.suffix == ".index":
        return path.with_suffix("")
    return path


def data_filename(prefix: Path, shard: int, num_shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")


def _string_crc(raw: memoryview, count: int, what: str) -> int:
    """The CRC32C TF records for a string tensor: lengths are varints on disk but checksummed as uint32s."""
    pos, crc = 0, 0
    for _ in range(count):
        n, pos = _varint(raw, pos, len(raw), what)
        crc = crc32c(struct.pack("<I", n & 0xFFFFFFFF), crc)
    return crc32c(raw[pos:], crc)  # the stored checksum of the lengths, then the string bytes


class Checkpoint:
    """An open tensor bundle: entries by name, tensors as read-only memory-mapped arrays."""

    def __init__(self, path: Path | str):
        self.prefix = _prefix_of(Path(path))
        self.index_path = self.prefix.with_name(self.prefix.name + ".index")
        if not self.index_path.is_file():
            raise CheckpointError(f"{self.index_path}: no such file")
        self.header, self.entries = read_index(self.index_path)
        self.data_paths = [data_filename(self.prefix, i, self.header.num_shards) for i in range(self.header.num_shards)]
        self._maps: dict[int, np.memmap | bytes] = {}
        for e in self.entries.values():
            if e.sliced:
                continue
            size = self._shard_size(e.shard_id)
            if e.offset + e.size > size:
                raise CheckpointError(
                    f"{self.data_paths[e.shard_id].name}: {e.name} needs bytes {e.offset}..{e.offset + e.size} "
                    f"but the file has {size} (truncated download?)")

    def _shard_size(self, shard: int) -> int:
        try:
            return self.data_paths[shard].stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"{self.data_paths[shard]}: no such file") from None

    def _map(self, shard: int):
        if shard not in self._maps:
            path = self.data_paths[shard]
            self._maps[shard] = np.memmap(path, mode="r") if self._shard_size(shard) else b""
        return self._maps[shard]

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: e.shape for n, e in self.entries.items()}

    def raw(self, name: str) -> memoryview:
        """The tensor's bytes in the data file, without a copy."""
        e = self._entry(name)
        return memoryview(self._map(e.shard_id))[e.offset:e.offset + e.size].cast("B")

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy view of the memory-mapped data file."""
        e = self._entry(name)
        if e.dtype_code % 100 == DT_STRING:
            raise CheckpointError(f"{name}: string tensors cannot be read as arrays")
        dtype = e.dtype
        return np.frombuffer(self._map(e.shard_id), dtype=dtype, count=e.numel, offset=e.offset).reshape(e.shape)

    def _entry(self, name: str) -> TensorEntry:
        try:
            e = self.entries[name]
        except KeyError:
            raise CheckpointError(f"{self.index_path.name}: no tensor named {name!r}") from None
        if e.sliced:
            raise CheckpointError(f"{name}: partitioned (sliced) tensors are not supported")
        return e

    def verify(self, name: str) -> None:
        """Check one tensor's bytes against the masked CRC32C in the index."""
        e = self._entry(name)
        actual = _string_crc(self.raw(name), e.numel, name) if e.dtype_code % 100 == DT_STRING else \
            range_crc32c(self.data_paths[e.shard_id], e.offset, e.size, name)
        if actual != unmask_crc(e.crc32c):
            raise ChecksumError(
                f"{self.data_paths[e.shard_id].name}: {name} fails its CRC32C "
                f"(index {unmask_crc(e.crc32c):08x}, data {actual:08x}): the data file is corrupt")

    def verify_all(self, progress: Callable[[int], None] | None = None) -> None:
        """Check every tensor's CRC32C; `progress` is called with each tensor's byte count."""
        for name, e in self.entries.items():
            if e.sliced:
                continue
            self.verify(name)
            if progress:
                progress(e.size)

    def close(self) -> None:
        self._maps.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- writing ----------------------------------------------------------------------------------

def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n and start[i] < 0xFF and start[i] + 1 < limit[i]:
        return start[:i] + bytes([start[i] + 1])
    return start


def _short_successor(key: bytes) -> bytes:
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


class _BlockBuilder:
    def __init__(self, restart_interval: int):
        self.interval = restart_interval
        self.reset()

    def reset(self) -> None:
        self.buf, self.restarts, self.counter, self.last = bytearray(), [0], 0, b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            n = min(len(self.last), len(key))
            while shared < n and self.last[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += _put_varint(shared) + _put_varint(len(key) - shared) + _put_varint(len(value))
        self.buf += key[shared:] + value
        self.last, self.counter = key, self.counter + 1

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return bytes(self.buf) + b"".join(struct.pack("<I", r) for r in self.restarts) + struct.pack("<I", len(self.restarts))


def build_table(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """An uncompressed SSTable laid out exactly as TF's TableBuilder writes a bundle index."""
    out = bytearray()
    data, index = _BlockBuilder(BLOCK_RESTART_INTERVAL), _BlockBuilder(1)

    def write_block(block: bytes) -> bytes:
        handle = _put_varint(len(out)) + _put_varint(len(block))
        out.extend(block + bytes([NO_COMPRESSION]) + struct.pack("<I", mask_crc(crc32c(b"\0", crc32c(block)))))
        return handle

    pending, last = None, b""
    for key, value in items:
        if pending is not None:
            index.add(_shortest_separator(last, key), pending)
            pending = None
        data.add(key, value)
        last = key
        if data.size_estimate() >= BLOCK_SIZE:
            pending = write_block(data.finish())
            data.reset()
    if data.buf:
        pending = write_block(data.finish())
    if pending is not None:
        index.add(_short_successor(last), pending)
    meta_handle = write_block(_BlockBuilder(BLOCK_RESTART_INTERVAL).finish())
    index_handle = write_block(index.finish())
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out + footer)


def write_checkpoint(prefix: Path | str, tensors: Iterable[tuple[str, np.ndarray]]) -> dict[str, TensorEntry]:
    """Write a single-shard bundle; tensors must come in bytewise-sorted name order, as SaveV2 writes them."""
    prefix = Path(prefix)
    entries: dict[str, TensorEntry] = {}
    data_path = data_filename(prefix, 0, 1)
    tmp = data_path.with_name(data_path.name + ".tmp")
    index_path = prefix.with_name(prefix.name + ".index")
    index_tmp = index_path.with_name(index_path.name + ".tmp")
    try:
        offset, last = 0, None
        with open(tmp, "wb") as f:
            for name, array in tensors:
                key = name.encode()
                if last is not None and key <= last:
                    raise CheckpointError(f"write_checkpoint: {name} is out of sorted order")
                last = key
                array = np.asarray(array)  # not ascontiguousarray: it turns a scalar into shape (1,)
                little = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
                code = next((k for k, v in DTYPES.items() if k != 14 and np.dtype(v) == little), None)
                if code is None:
                    raise CheckpointError(f"write_checkpoint: {name} has unsupported dtype {array.dtype}")
                # A flat uint8 view: memoryview.cast refuses 0-size and 0-d arrays.
                raw = np.ascontiguousarray(array, dtype=little).reshape(-1).view(np.uint8)
                f.write(raw)
                entries[name] = TensorEntry(name, code, tuple(array.shape), 0, offset, raw.nbytes, mask_crc(crc32c(raw)))
                offset += raw.nbytes
        items = [(HEADER_KEY, encode_header(1))] + [(n.encode(), encode_entry(e)) for n, e in entries.items()]
        index_tmp.write_bytes(build_table(items))
        os.replace(tmp, data_path)
        os.replace(index_tmp, index_path)
    except BaseException:  # leave nothing half-written behind
        tmp.unlink(missing_ok=True)
        index_tmp.unlink(missing_ok=True)
        raise
    return entries
