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
import math
import os
import struct
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from gpt2hub import lazy
from gpt2hub.errors import CheckpointError, ConversionError

from . import (CASTS, CHUNK_BYTES, Format, Planned, Progress, Source, cast_for, copy_range, numel, pipelined, plan,
               row_chunks)
from . import hf

# The registry imports every format at start-up; these load when a zip is written or read.
pickle = lazy.module("pickle")
zipfile = lazy.module("zipfile")

WEIGHTS = "pytorch_model.bin"
INDEX = "pytorch_model.bin.index.json"
SHARD_NAME = "pytorch_model-{:05d}-of-{:05d}.bin"
MAX_SHARD_BYTES = 5 * 10**9  # transformers 4.x save_pretrained's default max_shard_size, "5GB"
STORAGE_TYPES = {"f32": "FloatStorage", "f16": "HalfStorage", "bf16": "BFloat16Storage"}
ALIGNMENT = 64  # torch's kFieldAlignment and `.storage_alignment`
PAGE = 4096
PADDING_FIELD = 0x4246  # "FB": the zip extra-field id torch pads local headers with
LOCAL_HEADER = 30  # fixed part of a zip local file header
ZIP64_EXTRA = 20  # what zipfile appends to a local header that needs zip64 sizes
RECORD_DATE = (1980, 1, 1, 0, 0, 0)
KERNEL_COPY = True  # f32 records copied by the kernel; False: through zipfile's writer (the reference path, in tests)


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

def _record(zf: zipfile.ZipFile, name: str, size: int,
            source_offset: int | None = None) -> tuple[zipfile.ZipInfo, bool]:
    """A stored record whose data will start on a 64-byte boundary, as torch's writer aligns them; given the
    offset its bytes have in the data file (a multiple of 64 in every GPT-2 release), at the same place in a
    page, so that the kernel copies them page by page (copy_file_range across page offsets ran ~3x slower)."""
    info = zipfile.ZipInfo(name, RECORD_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own test: it adds 20 bytes to the header
    start = zf.start_dir + LOCAL_HEADER + len(name.encode()) + (ZIP64_EXTRA if zip64 else 0) + 4
    pad = -start % ALIGNMENT
    if source_offset is not None and source_offset % ALIGNMENT == 0:
        pad = (source_offset - start) % PAGE
    info.extra = struct.pack("<HH", PADDING_FIELD, pad) + b"\0" * pad
    return info, zip64


@contextmanager
def _fast_crc32():
    """zipfile's CRC-32 from zlib-ng while a shard is written: the same polynomial and results as zlib's, about
    6x faster (zlib's was most of a 1558M conversion's time). zipfile takes it from its module global `crc32`."""
    from zlib_ng import zlib_ng

    saved = zipfile.crc32
    zipfile.crc32 = zlib_ng.crc32
    try:
        yield
    finally:
        zipfile.crc32 = saved


def _crc32(path: Path, offset: int, size: int) -> int:
    """The zip CRC-32 of `size` bytes at `offset` of a file, read in CHUNK_BYTES pieces (never mapped: see row_chunks)."""
    from zlib_ng import zlib_ng

    crc, buf = 0, memoryview(bytearray(max(1, min(CHUNK_BYTES, size))))
    with open(path, "rb", buffering=0) as f:
        while size:
            n = os.preadv(f.fileno(), [buf[:min(len(buf), size)]], offset)
            if n <= 0:
                raise CheckpointError(f"{path}: ends early (the data file shrank or is truncated)")
            crc = zlib_ng.crc32(buf[:n], crc)
            offset, size = offset + n, size - n
    return crc


def _copied_record(zf: zipfile.ZipFile, info: zipfile.ZipInfo, zip64: bool, crc: int, src: Path, offset: int,
                   progress: Progress) -> None:
    """A stored record whose bytes are copied from `src` by the kernel, written as zf.writestr would write them.

    zipfile can only write a record's bytes through Python; this writes the local header it would (CRC and sizes
    known up front, so written once), then the bytes, then registers the record for the central directory.
    """
    info.CRC, info.compress_size, info.header_offset = crc, info.file_size, zf.start_dir
    info.external_attr = info.external_attr or 0o600 << 16  # as ZipFile.open(..., "w") sets it
    zf._writecheck(info)
    zf._didModify = True
    zf.fp.seek(zf.start_dir)
    zf.fp.write(info.FileHeader(zip64))
    zf.fp.flush()
    start = zf.fp.tell()
    with open(src, "rb") as f:
        copy_range(f, zf.fp, offset, start, info.file_size, progress)
    zf.fp.seek(start + info.file_size)
    zf.filelist.append(info)
    zf.NameToInfo[info.filename] = info
    zf.start_dir = zf.fp.tell()


def _write_shard(path: Path, source: Source, planned: list[Planned], keys: list[str], dtype: str, progress: Progress) -> None:
    with _fast_crc32():
        _write_zip(path, source, planned, keys, dtype, progress)


def _write_zip(path: Path, source: Source, planned: list[Planned], keys: list[str], dtype: str, progress: Progress) -> None:
    stem = path.stem
    size = CASTS[dtype][0]
    cast = cast_for(dtype, sum(p.entry.size for p in planned))
    pickle_bytes = state_dict_pickle([(p.name, STORAGE_TYPES[dtype], k, p.shape) for p, k in zip(planned, keys)])
    small = [("data.pkl", pickle_bytes), (".format_version", b"1"), (".storage_alignment", str(ALIGNMENT).encode()),
             ("byteorder", b"little")]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in small:
            info, _ = _record(zf, f"{stem}/{name}", len(data))
            zf.writestr(info, data)
        same_bytes = dtype == "f32" and not any(p.rule.transpose for p in planned)  # records = the data file's bytes
        if same_bytes and KERNEL_COPY:
            # CRCs read ahead on threads, bytes copied by the kernel.
            crcs = pipelined(lambda p: _crc32(source.ckpt.data_paths[p.entry.shard_id], p.entry.offset, p.entry.size),
                             planned, workers=2)
            for p, key, crc in zip(planned, keys, crcs):
                info, zip64 = _record(zf, f"{stem}/data/{key}", p.entry.size, p.entry.offset)
                _copied_record(zf, info, zip64, crc, source.ckpt.data_paths[p.entry.shard_id], p.entry.offset, progress)
        else:
            for p, key in zip(planned, keys):
                info, zip64 = _record(zf, f"{stem}/data/{key}", numel(p.shape) * size,
                                      p.entry.offset if same_bytes else None)
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


# --- reading a zip back, for verify: names, types, shapes and byte ranges without loading a weight ----

ENCODINGS = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16"}  # gguf-py's type names
ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2}


@dataclass(frozen=True)
class _TensorRef:
    key: str
    encoding: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, shape, stride, *_):
    _, storage_type, key, _location, _numel = storage
    return _TensorRef(key, ENCODINGS[storage_type], offset, tuple(shape), tuple(stride))


def _state_dict_unpickler(stream) -> pickle.Unpickler:
    """data.pkl read to (storage key, type, shape) without torch: torch.load(mmap=True) would keep every page it
    reads resident (6 GB at 1558M). Anything but a plain state dict of tensors is refused."""

    class StateDictUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) == ("collections", "OrderedDict"):
                return dict
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return _rebuild_tensor
            if module == "torch" and name in ENCODINGS:
                return name
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain state dict")

        def persistent_load(self, pid):
            return tuple(pid)

    return StateDictUnpickler(stream)


def stored_tensors(path: Path) -> list:
    """Every tensor's name, encoding, shape and byte range in a torch.save zip (stored records, read in place)."""
    from gpt2hub.verification.weights import Stored

    if not path.is_file():
        raise ConversionError(f"{path}: no such file (named in the shard index)")
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
            if pkl is None:
                raise ConversionError(f"{path}: no data.pkl (not a torch.save zip)")
            stem = pkl[: -len("data.pkl")]
            tensors = []
            for name, ref in _state_dict_unpickler(zf.open(pkl)).load().items():
                info = zf.getinfo(f"{stem}data/{ref.key}")
                n, item = math.prod(ref.shape), ITEM_BYTES[ref.encoding]
                contiguous = tuple(math.prod(ref.shape[i + 1:]) for i in range(len(ref.shape)))
                if info.compress_type != zipfile.ZIP_STORED or ref.stride != contiguous or (ref.offset + n) * item > info.file_size:
                    raise ConversionError(f"{path}: {name} is not a contiguous tensor in a stored record")
                raw.seek(info.header_offset + 26)  # the local header's name and extra lengths
                name_len, extra_len = struct.unpack("<HH", raw.read(4))
                start = info.header_offset + LOCAL_HEADER + name_len + extra_len + ref.offset * item
                tensors.append(Stored(name, ref.encoding, ref.shape, path, start, n * item))
            return tensors
    except (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, ValueError, EOFError, struct.error) as e:
        raise ConversionError(f"{path}: not a PyTorch state dict ({type(e).__name__}: {e})") from None


FORMAT = Format(name="pytorch", rank=20, dtypes=tuple(STORAGE_TYPES), default_dtype="f32", write=write, **hf.FOLDER_FIELDS,
                side_files=hf.write_side_files, proof_reads=("pytorch_model.bin.index.json",),
                demo_dtypes=("f32",), tags=("pytorch",))
