"""The LevelDB-style table (SSTable) a TensorFlow bundle index is: varints, masked CRC32C, blocks, the builder.

Read and built byte for byte as TF's own table code does (tensorflow/core/lib/io/table*), without TensorFlow.
"""

from __future__ import annotations

import functools
import struct
import sys
from typing import Iterable, Iterator

from . import lazy
from .errors import CheckpointError

# Loaded on first use: small buffers are checksummed in Python (see SMALL_CRC_BYTES).
_crc32c = lazy.module("crc32c")

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c
NO_COMPRESSION, SNAPPY_COMPRESSION = 0, 1
BLOCK_SIZE = 262144  # TF's table_options.h defaults, kept so our index is byte-identical to TF's
BLOCK_RESTART_INTERVAL = 16
# Bounds on an index (the real 1558M one: 20 KB, 581 keys of under 40 bytes). Prefix compression lets a
# small hostile file expand to huge keys, so key length, key count and all key bytes together are capped.
MAX_BLOCK_BYTES = 16 << 20  # a block after snappy decompression
MAX_KEY_BYTES = 4096
MAX_ENTRIES = 1 << 16
MAX_TOTAL_KEY_BYTES = 4 << 20


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


def mask_crc(crc: int) -> int:
    """LevelDB/TF masking: rotate right by 15 and add a constant, so CRCs of CRCs stay strong."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --- varints --------------------------------------------------------------------------------

def read_varint(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """The base-128 varint at `pos` (not past `end`) and the position after it."""
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



def put_varint(n: int) -> bytes:
    """`n` as a base-128 varint."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)



# --- reading --------------------------------------------------------------------------------

def _read_handle(buf: bytes, pos: int, end: int, what: str) -> tuple[tuple[int, int], int]:
    offset, pos = read_varint(buf, pos, end, what)
    size, pos = read_varint(buf, pos, end, what)
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
        expanded, _ = read_varint(contents, 0, len(contents), what)  # raw snappy begins with its decompressed length
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
        shared, pos = read_varint(block, pos, limit, what)
        non_shared, pos = read_varint(block, pos, limit, what)
        value_len, pos = read_varint(block, pos, limit, what)
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



# --- building -------------------------------------------------------------------------------

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
        self.buf += put_varint(shared) + put_varint(len(key) - shared) + put_varint(len(value))
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
        handle = put_varint(len(out)) + put_varint(len(block))
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

