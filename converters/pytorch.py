"""PyTorch `pytorch_model.bin` in the Hugging Face layout, sharded with an index past 5 GB.

Written by hand, not with torch.save, because torch.save needs the whole state dict in memory (and
torch installed). The file is what torch/serialization.py `_save` writes: an uncompressed zip whose
records are `<stem>/data.pkl` (a protocol-2 pickle of an OrderedDict of
`torch._utils._rebuild_tensor_v2(persistent storage, offset, shape, stride, False, OrderedDict())`),
`.format_version`, `.storage_alignment`, `byteorder`, one `data/<key>` record of raw bytes per
storage, aligned to 64 bytes in the file (so torch.load(mmap=True) can map them), and `version`.
The zip is gpt2hub.zipwriter's, so that f32 records can be copied by the kernel; converters/hf.py reads it back.
"""

from __future__ import annotations

import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpt2hub import zipwriter
from gpt2hub.casts import CASTS, cast_for
from gpt2hub.errors import CheckpointError
from gpt2hub.source_tensors import is_plain
from gpt2hub.threads import pipelined

from . import CHUNK_BYTES, ConvertInput, Format, Planned, Progress, copy_range, f32_size, numel, plan, row_chunks
from . import hf

WEIGHTS = "pytorch_model.bin"
INDEX = "pytorch_model.bin.index.json"
SHARD_NAME = "pytorch_model-{:05d}-of-{:05d}.bin"
MAX_SHARD_BYTES = 5 * 10**9  # transformers 4.x save_pretrained's default max_shard_size, "5GB"
STORAGE_TYPES = {"f32": "FloatStorage", "f16": "HalfStorage", "bf16": "BFloat16Storage"}
ALIGNMENT = 64  # torch's kFieldAlignment and `.storage_alignment`
PAGE = 4096
PADDING_FIELD = 0x4246  # "FB": the zip extra-field id torch pads local headers with
KERNEL_COPY = True  # f32 records copied by the kernel; False: written through Python (the reference path, in tests)


# --- the pickle --------------------------------------------------------------------------------
# Opcodes of pickle protocol 2, written directly: a pickler would need the real torch globals.

def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _int(n: int) -> bytes:
    if 0 <= n < 1 << 8:
        return b"K" + bytes([n])  # BININT1
    if 0 <= n < 1 << 16:
        return b"M" + struct.pack("<H", n)  # BININT2
    if -(1 << 31) <= n < 1 << 31:
        return b"J" + struct.pack("<i", n)  # BININT
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b  # LONG1


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def state_dict_pickle(tensors: list[tuple[str, str, str, tuple[int, ...]]]) -> bytes:
    """data.pkl for (name, storage type, storage key, shape), each tensor owning its whole storage."""
    ordered_dict = _global("collections", "OrderedDict") + b")R"  # OrderedDict()
    out = b"\x80\x02" + ordered_dict + b"("  # PROTO 2, the dict, MARK for SETITEMS
    for name, storage_type, key, shape in tensors:
        strides, step = [], 1
        for d in reversed(shape):
            strides.insert(0, step)
            step *= d
        storage = _tuple([_str("storage"), _global("torch", storage_type), _str(key), _str("cpu"), _int(numel(shape))])
        args = _tuple([storage + b"Q", _int(0), _tuple([_int(d) for d in shape]), _tuple([_int(s) for s in strides]),
                       b"\x89", ordered_dict])  # BINPERSID, offset, size, stride, NEWFALSE, backward hooks
        out += _str(name) + _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"  # REDUCE
    return out + b"u."  # SETITEMS, STOP


# --- the zip ---------------------------------------------------------------------------------

def _padding(offset: int, name: str, size: int, source_offset: int | None = None) -> bytes:
    """The extra field of a record whose header goes at `offset`: padding that puts its data on a 64-byte boundary,
    as torch's writer aligns them; given the offset its bytes have in the data file (a multiple of 64 in every GPT-2
    release), at the same place in a page, so that the kernel copies them page by page (copy_file_range across
    page offsets ran ~3x slower)."""
    start = offset + zipwriter.header_size(name, size) + 4
    pad = -start % ALIGNMENT
    if source_offset is not None and source_offset % ALIGNMENT == 0:
        pad = (source_offset - start) % PAGE
    return struct.pack("<HH", PADDING_FIELD, pad) + b"\0" * pad


def _crc32(path: Path, offset: int, size: int) -> int:
    """The zip CRC-32 of `size` bytes at `offset` of a file, read in CHUNK_BYTES pieces (never mapped: see row_chunks)."""
    crc, buf = 0, memoryview(bytearray(max(1, min(CHUNK_BYTES, size))))
    with open(path, "rb", buffering=0) as f:
        while size:
            n = os.preadv(f.fileno(), [buf[:min(len(buf), size)]], offset)
            if n <= 0:
                raise CheckpointError(f"{path}: ends early (the data file shrank or is truncated)")
            crc = zipwriter.crc32(buf[:n], crc)
            offset, size = offset + n, size - n
    return crc


def _write_shard(path: Path, source: ConvertInput, planned: list[Planned], keys: list[str], dtype: str,
                 progress: Progress) -> None:
    stem = path.stem
    size = CASTS[dtype][0]
    cast = cast_for(dtype, sum(f32_size(p.entry) for p in planned))
    pickle_bytes = state_dict_pickle([(p.name, STORAGE_TYPES[dtype], k, p.shape) for p, k in zip(planned, keys)])
    small = [("data.pkl", pickle_bytes), (".format_version", b"1"), (".storage_alignment", str(ALIGNMENT).encode()),
             ("byteorder", b"little")]
    with open(path, "wb") as f, zipwriter.ZipWriter(f) as zf:
        for name, data in small:
            zf.add(f"{stem}/{name}", data, _padding(zf.offset, f"{stem}/{name}", len(data)))
        # records = the data file's bytes
        same_bytes = dtype == "f32" and all(not p.rule.transpose and is_plain(p.entry) for p in planned)
        if same_bytes and KERNEL_COPY:
            # CRCs read ahead on threads, bytes copied by the kernel.
            crcs = pipelined(lambda p: _crc32(source.ckpt.data_paths[p.entry.shard_id], p.entry.offset, p.entry.size),
                             planned, workers=2)
            for p, key, crc in zip(planned, keys, crcs):
                name, e = f"{stem}/data/{key}", p.entry
                with zf.record(name, e.size, _padding(zf.offset, name, e.size, e.offset), crc) as record, \
                        open(source.ckpt.data_paths[e.shard_id], "rb") as src:
                    copy_range(src, f, e.offset, record.start, e.size, progress)
        else:
            for p, key in zip(planned, keys):
                name, nbytes = f"{stem}/data/{key}", numel(p.shape) * size
                extra = _padding(zf.offset, name, nbytes, p.entry.offset if same_bytes else None)
                with zf.record(name, nbytes, extra) as record:
                    for data, n in pipelined(lambda b: (cast(b), b.nbytes), row_chunks(source, p)):
                        record.write(memoryview(data).cast("B"))
                        progress(n)
        zf.add(f"{stem}/version", b"3\n", _padding(zf.offset, f"{stem}/version", 2))


def shards(planned: list[Planned], dtype: str, max_bytes: int) -> list[list[Planned]]:
    """Greedy split in order, as transformers shards: a new shard when the next tensor would overflow."""
    out: list[list[Planned]] = [[]]
    used = 0
    for p in planned:
        n = numel(p.shape) * CASTS[dtype][0]
        if out[-1] and used + n > max_bytes:
            out.append([])
            used = 0
        out[-1].append(p)
        used += n
    return out


def write(source: ConvertInput, out: Path, dtype: str, progress: Progress) -> None:
    with ThreadPoolExecutor(1) as pool:
        side_files = pool.submit(hf.write_side_files, source, out, dtype)
        _write_weights(source, out, dtype, progress)
        side_files.result()


def _write_weights(source: ConvertInput, out: Path, dtype: str, progress: Progress) -> None:
    planned = plan(source, hf.GLOBAL_RULES, hf.BLOCK_RULES, hf.HEAD)
    groups = shards(planned, dtype, source.max_shard_bytes or MAX_SHARD_BYTES)
    if len(groups) == 1:
        _write_shard(out / WEIGHTS, source, planned, [str(i) for i in range(len(planned))], dtype, progress)
    else:
        weight_map = {}
        for i, group in enumerate(groups):
            name = SHARD_NAME.format(i + 1, len(groups))
            _write_shard(out / name, source, group, [str(k) for k in range(len(group))], dtype, progress)
            weight_map.update({p.name: name for p in group})
        total = sum(numel(p.shape) for p in planned) * CASTS[dtype][0]
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")


FORMAT = Format(name="pytorch", rank=20, dtypes=tuple(STORAGE_TYPES), default_dtype="f32", write=write, **hf.FOLDER_FIELDS,
                side_files=hf.write_side_files, proof_reads=("pytorch_model.bin.index.json",),
                demo_dtypes=("f32",), tags=("pytorch",))
