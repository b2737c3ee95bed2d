"""PyTorch `pytorch_model.bin` in the Hugging Face layout, sharded with an index past 5 GB.

Written by hand, not with torch.save, because torch.save needs the whole state dict in memory (and
torch installed). The file is what torch/serialization.py `_save` writes: an uncompressed zip whose
records are `<stem>/data.pkl` (a protocol-2 pickle of an OrderedDict of
`torch._utils._rebuild_tensor_v2(persistent storage, offset, shape, stride, False, OrderedDict())`),
`.format_version`, `.storage_alignment`, `byteorder`, one `data/<key>` record of raw bytes per
storage, aligned to 64 bytes in the file (so torch.load(mmap=True) can map them), and `version`.
"""

from __future__ import annotations

import json
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import CASTS, Format, Planned, Progress, Source, numel, pipelined, plan, row_chunks
from . import hf

WEIGHTS = "pytorch_model.bin"
INDEX = "pytorch_model.bin.index.json"
SHARD_NAME = "pytorch_model-{:05d}-of-{:05d}.bin"
MAX_SHARD_BYTES = 5 * 10**9  # transformers 4.x save_pretrained's default max_shard_size, "5GB"
STORAGE_TYPES = {"f32": "FloatStorage", "f16": "HalfStorage", "bf16": "BFloat16Storage"}
ALIGNMENT = 64  # torch's kFieldAlignment and `.storage_alignment`
PADDING_FIELD = 0x4246  # "FB": the zip extra-field id torch pads local headers with
LOCAL_HEADER = 30  # fixed part of a zip local file header
ZIP64_EXTRA = 20  # what zipfile appends to a local header that needs zip64 sizes
RECORD_DATE = (1980, 1, 1, 0, 0, 0)


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

def _record(zf: zipfile.ZipFile, name: str, size: int) -> tuple[zipfile.ZipInfo, bool]:
    """A stored record whose data will start on a 64-byte boundary, as torch's writer aligns them."""
    info = zipfile.ZipInfo(name, RECORD_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own test: it adds 20 bytes to the header
    start = zf.start_dir + LOCAL_HEADER + len(name.encode()) + (ZIP64_EXTRA if zip64 else 0) + 4
    pad = -start % ALIGNMENT
    info.extra = struct.pack("<HH", PADDING_FIELD, pad) + b"\0" * pad
    return info, zip64


def _write_shard(path: Path, source: Source, planned: list[Planned], keys: list[str], dtype: str, progress: Progress) -> None:
    stem = path.stem
    size, cast = CASTS[dtype]
    pickle_bytes = state_dict_pickle([(p.name, STORAGE_TYPES[dtype], k, p.shape) for p, k in zip(planned, keys)])
    small = [("data.pkl", pickle_bytes), (".format_version", b"1"), (".storage_alignment", str(ALIGNMENT).encode()),
             ("byteorder", b"little")]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in small:
            info, _ = _record(zf, f"{stem}/{name}", len(data))
            zf.writestr(info, data)
        for p, key in zip(planned, keys):
            info, zip64 = _record(zf, f"{stem}/data/{key}", numel(p.shape) * size)
            with zf.open(info, "w", force_zip64=zip64) as w:
                for data, n in pipelined(lambda b: (cast(b), b.nbytes), row_chunks(source, p)):
                    w.write(memoryview(data).cast("B"))
                    progress(n)
        info, _ = _record(zf, f"{stem}/version", 2)
        zf.writestr(info, b"3\n")


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


def write(source: Source, out: Path, dtype: str, progress: Progress) -> None:
    with ThreadPoolExecutor(1) as pool:
        side_files = pool.submit(hf.write_side_files, source, out, dtype)
        _write_weights(source, out, dtype, progress)
        side_files.result()


def _write_weights(source: Source, out: Path, dtype: str, progress: Progress) -> None:
    planned = plan(source, hf.GLOBAL_RULES, hf.BLOCK_RULES)
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
                demo_dtypes=("f32",), tags=("pytorch",))
