"""Write a TensorFlow V2 checkpoint (a single-shard tensor bundle) as TF's SaveV2 lays it out, without TensorFlow."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from . import lazy
from .atomic import writing
from .errors import CheckpointError
from .sstable import build_table, crc32c, mask_crc
from .tfbundle import DTYPES, HEADER_KEY, TensorEntry, data_filename, encode_entry, encode_header

np = lazy.module("numpy")  # loaded on first use


def write_checkpoint(prefix: Path | str, tensors: Iterable[tuple[str, np.ndarray]]) -> dict[str, TensorEntry]:
    """Write a single-shard bundle; tensors must come in bytewise-sorted name order, as SaveV2 writes them."""
    prefix = Path(prefix)
    entries: dict[str, TensorEntry] = {}
    data_path = data_filename(prefix, 0, 1)
    index_path = prefix.with_name(prefix.name + ".index")
    # The data file is renamed into place first, then the index that makes the bundle a checkpoint;
    # on an error neither temp file is left behind.
    with writing(index_path) as index_file:
        with writing(data_path) as f:
            offset, last = 0, None
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
        index_file.write(index_bytes(entries.values()))
    return entries


def index_bytes(entries: Iterable[TensorEntry]) -> bytes:
    """A single-shard bundle's `.index`: the header, then every entry by bytewise-sorted name, as SaveV2 writes it."""
    items = sorted((e.name.encode(), encode_entry(e)) for e in entries)
    return build_table([(HEADER_KEY, encode_header(1))] + items)
