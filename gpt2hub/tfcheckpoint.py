"""Read TensorFlow V2 checkpoints (tensor bundles) without TensorFlow.

A bundle is `P.index`, an SSTable mapping tensor names to BundleEntryProto values, and
`P.data-NNNNN-of-NNNNN`, the raw little-endian tensor bytes. Tensors open as zero-copy
numpy views of a memory map; their masked CRC32C is checked on request.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Callable

from . import lazy
from .errors import CheckpointError, ChecksumError
from .source_kinds import SourceKind
from .sstable import crc32c, read_table, read_varint, unmask_crc
from .tfbundle import (DT_STRING, DTYPES, HEADER_KEY, ITEMSIZE, BundleHeader, TensorEntry, data_filename, parse_entry,
                       parse_header)

np = lazy.module("numpy")  # loaded on first use: reading an index does not need it

KIND = "tf"  # OpenAI's TensorFlow layout as a source kind (convert --from tf)
MAX_INDEX_BYTES = 64 << 20  # a whole .index file (the real 1558M one: 20 KB); sstable caps the keys inside
CRC_CHUNK_BYTES = 8 << 20  # read size of the CRC pass: bounds its resident memory


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


def _string_crc(raw: memoryview, count: int, what: str) -> int:
    """The CRC32C TF records for a string tensor: lengths are varints on disk but checksummed as uint32s."""
    pos, crc = 0, 0
    for _ in range(count):
        n, pos = read_varint(raw, pos, len(raw), what)
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



def _is_tf_folder(folder: Path) -> bool:
    return any(folder.glob("*.index"))


SOURCE = SourceKind(name=KIND, rank=0, accepts="a TensorFlow checkpoint folder (*.index)", is_file=False,
                    detect=_is_tf_folder, open=None)
