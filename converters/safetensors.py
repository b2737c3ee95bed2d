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
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpt2hub.casts import CASTS, cast_for
from gpt2hub.threads import BackgroundSha256, pipelined

from . import CHUNK_BYTES, ConvertInput, Format, Planned, Progress, copy_runs, f32_size, numel, plan, row_chunks
from . import hf

WEIGHTS = "model.safetensors"
ST_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
PAGE = 4096
SHA_PLACEHOLDER = "0" * 64  # same length as the digest, patched in place once the source is hashed


def header(source: ConvertInput, planned: list[Planned], dtype: str, sha256: list[str]) -> bytes:
    """The length prefix and JSON header; `__metadata__` names the source and the converter."""
    meta = {
        "format": "pt",
        "source_release": source.release,
        "source_file": ",".join(p.name for p in source.ckpt.data_paths),
        "source_sha256": ",".join(sha256),
        "converter": f"gpt2hub {source.version}",
    }
    if source.source_kind != "tf":  # source_file and source_sha256 then name the HF weight files, not a TF data file
        meta["source_kind"] = source.source_kind
    entries: dict[str, object] = {"__metadata__": meta}
    size, offset = CASTS[dtype][0], 0
    for p in planned:
        n = numel(p.shape) * size
        entries[p.name] = {"dtype": ST_DTYPES[dtype], "shape": list(p.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(entries, separators=(",", ":")).encode()
    # The spec allows trailing spaces. f32: the weights start on a page, as they do in the data file, so the
    # kernel copies whole pages (copy_file_range to an unaligned offset ran ~3x slower here); else 8 bytes.
    raw += b" " * (-(8 + len(raw)) % (PAGE if dtype == "f32" else 8))
    return struct.pack("<Q", len(raw)) + raw


def write(source: ConvertInput, out: Path, dtype: str, progress: Progress) -> None:
    planned = plan(source, hf.GLOBAL_RULES, hf.BLOCK_RULES, hf.HEAD)
    hashing = None if source.data_sha256 else BackgroundSha256(source.ckpt.data_paths, CHUNK_BYTES)
    try:
        with ThreadPoolExecutor(1) as pool:
            side_files = pool.submit(hf.write_side_files, source, out, dtype)
            with open(out / WEIGHTS, "wb") as f:
                f.write(header(source, planned, dtype, source.data_sha256 or [SHA_PLACEHOLDER] * len(source.ckpt.data_paths)))
                if dtype == "f32":
                    copy_runs(source, [p.entry for p in planned], f, progress)
                else:
                    cast = cast_for(dtype, sum(f32_size(p.entry) for p in planned))
                    blocks = (b for p in planned for b in row_chunks(source, p))
                    for data, n in pipelined(lambda b: (cast(b), b.nbytes), blocks):
                        f.write(memoryview(data).cast("B"))
                        progress(n)
                if hashing:
                    f.seek(0)
                    source.hashed = hashing.result()
                    f.write(header(source, planned, dtype, source.hashed))
            side_files.result()
    finally:
        if hashing:
            hashing.close()


FORMAT = Format(name="safetensors", rank=10, dtypes=tuple(ST_DTYPES), default_dtype="f32", write=write, **hf.FOLDER_FIELDS,
                side_files=hf.write_side_files, proof_reads=("model.safetensors.index.json",),
                demo_dtypes=("f32",), hub_default=True, tags=("safetensors",))
