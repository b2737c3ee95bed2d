"""safetensors in the Hugging Face layout: `model.safetensors` plus config and tokenizer files.

The file is written by hand, not with safetensors' `save_file`, because that needs every tensor in
memory at once. The format is tiny (an 8-byte little-endian header length, a JSON header of names,
dtypes, shapes and byte ranges padded with spaces to 8 bytes, then the raw bytes), so tensors are
streamed: they are laid out in the data file's order, and in f32 the payload is the data file's
model bytes, copied by the kernel (copy_file_range) in large runs without entering Python. Where
the source's sha256 is not known (for the header's metadata) it is computed on a thread meanwhile.
"""

from __future__ import annotations

import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import (CASTS, CHUNK_BYTES, BackgroundSha256, Format, Planned, Progress, Source, numel, pipelined, plan,
               read_bytes, row_chunks)
from . import hf

WEIGHTS = "model.safetensors"
ST_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
SHA_PLACEHOLDER = "0" * 64  # same length as the digest, patched in place once the source is hashed


def header(source: Source, planned: list[Planned], dtype: str, sha256: list[str]) -> bytes:
    """The length prefix and JSON header; `__metadata__` names the source and the converter."""
    meta = {
        "format": "pt",
        "source_release": source.release,
        "source_file": ",".join(p.name for p in source.ckpt.data_paths),
        "source_sha256": ",".join(sha256),
        "converter": f"gpt2hub {source.version}",
    }
    entries: dict[str, object] = {"__metadata__": meta}
    size, offset = CASTS[dtype][0], 0
    for p in planned:
        n = numel(p.shape) * size
        entries[p.name] = {"dtype": ST_DTYPES[dtype], "shape": list(p.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write(source: Source, out: Path, dtype: str, progress: Progress) -> None:
    planned = plan(source, hf.GLOBAL_RULES, hf.BLOCK_RULES)
    hashing = None if source.data_sha256 else BackgroundSha256(source.ckpt.data_paths)
    try:
        with ThreadPoolExecutor(1) as pool:
            side_files = pool.submit(hf.write_side_files, source, out, dtype)
            with open(out / WEIGHTS, "wb") as f:
                f.write(header(source, planned, dtype, source.data_sha256 or [SHA_PLACEHOLDER] * len(source.ckpt.data_paths)))
                if dtype == "f32":
                    _copy_runs(source, planned, f, progress)
                else:
                    cast = CASTS[dtype][1]
                    blocks = (b for p in planned for b in row_chunks(source, p))
                    for data, n in pipelined(lambda b: (cast(b), b.nbytes), blocks):
                        f.write(memoryview(data).cast("B"))
                        progress(n)
                if hashing:
                    f.seek(0)
                    f.write(header(source, planned, dtype, hashing.result()))
            side_files.result()
    finally:
        if hashing:
            hashing.close()


def _runs(planned: list[Planned]) -> list[tuple[int, int, int]]:
    """(shard, offset, size) of maximal runs of tensors adjacent in the data file."""
    runs: list[list[int]] = []
    for p in planned:
        e = p.entry
        if runs and runs[-1][0] == e.shard_id and runs[-1][1] + runs[-1][2] == e.offset:
            runs[-1][2] += e.size
        else:
            runs.append([e.shard_id, e.offset, e.size])
    return [tuple(r) for r in runs]  # type: ignore[misc]


def _copy_runs(source: Source, planned: list[Planned], f, progress: Progress) -> None:
    """f32: the output bytes are the source bytes; the kernel copies them (read/write where it can't)."""
    f.flush()
    dst_pos = f.tell()
    for shard, offset, size in _runs(planned):
        with open(source.ckpt.data_paths[shard], "rb") as src:
            if not _kernel_copy(src.fileno(), f.fileno(), offset, dst_pos, size, progress):
                os.lseek(f.fileno(), dst_pos, os.SEEK_SET)
                for pos in range(offset, offset + size, CHUNK_BYTES):
                    chunk = read_bytes(src, pos, min(CHUNK_BYTES, offset + size - pos), "data")
                    _write_all(f.fileno(), memoryview(chunk))
                    progress(len(chunk))
            dst_pos += size
    f.seek(dst_pos)


def _kernel_copy(src: int, dst: int, src_pos: int, dst_pos: int, size: int, progress: Progress) -> bool:
    """copy_file_range in chunks (for the progress bar); False if this filesystem pair can't."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, min(CHUNK_BYTES * 2, size - done), src_pos + done, dst_pos + done)
        except OSError:
            if done:
                raise
            return False
        if n == 0:
            raise OSError(f"copy_file_range: source ended {size - done} bytes early")
        done += n
        progress(n)
    return True


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


FORMAT = Format(name="safetensors", rank=10, dtypes=tuple(ST_DTYPES), default_dtype="f32", write=write, **hf.FOLDER_FIELDS,
                demo_dtypes=("f32",), hub_default=True, tags=("safetensors",))
