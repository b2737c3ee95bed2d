"""A torch.save zip read in place, without torch and without running its pickle.

torch.save writes a zip: `<stem>/data.pkl` (the pickled object, each tensor a call to
`torch._utils._rebuild_tensor_v2` on a persistent storage id) and one stored record `<stem>/data/<key>` per
storage. data.pkl is read here by a restricted unpickler that admits only those tensor rebuilds, storage types,
`collections.OrderedDict` and plain containers and scalars; any other global (os.system, builtins.eval, a
`__reduce__` gadget's callable) is refused before anything is called. Tensors become `TensorRef`s, byte ranges
of the zip, never loaded. torch.load(mmap=True) would keep every page it reads resident (6 GB at 1558M).

Everything an attacker controls is bounded before it is used: the central directory's size and count, data.pkl's
size, its opcode count and memo indices (CPython's unpickler sizes its memo from the largest index it is given).
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import lazy
from .errors import ConversionError
from .stored import Stored
from .zipwriter import END, END64, END64_LOCATOR, LOCAL_HEADER

# Imported when a torch zip is read: the CLI loads this module at start-up through the source kinds.
pickle = lazy.module("pickle")
pickletools = lazy.module("pickletools")
zipfile = lazy.module("zipfile")

ZIP_MAGIC = b"PK\x03\x04"
# Far above any GPT-2-family save (nanoGPT's 1558M ckpt.pt: about 2,300 records, a data.pkl of about 200 KB,
# 60,000 opcodes), low enough that a crafted file cannot make the reader allocate more than ~100 MB.
MAX_RECORDS = 1 << 17
MAX_DIRECTORY_BYTES = 32 << 20
MAX_PICKLE_BYTES = 16 << 20
MAX_PICKLE_OPS = 1 << 20
MAX_WALK = 1 << 20  # objects visited when walking the unpickled tree
# torch's storage types (pickled as globals `torch.<Type>`): gpt2hub's encoding name and bytes per element.
STORAGES = {
    "FloatStorage": ("F32", 4), "HalfStorage": ("F16", 2), "BFloat16Storage": ("BF16", 2),
    "DoubleStorage": ("F64", 8), "LongStorage": ("I64", 8), "IntStorage": ("I32", 4), "ShortStorage": ("I16", 2),
    "CharStorage": ("I8", 1), "ByteStorage": ("U8", 1), "BoolStorage": ("BOOL", 1),
}
FLOAT_ENCODINGS = ("F32", "F16", "BF16")  # what a model's weights may be stored in
ITEM_BYTES = {encoding: size for encoding, size in STORAGES.values()}
REFUSED = "is not part of a plain state dict (only tensors and plain containers are read; nothing was run)"


def _refuse_build(self: Any, state: Any) -> None:
    """__setstate__ of the objects the unpickler makes: a pickle's BUILD opcode may not change them after their
    checks (a frozen slotted dataclass would otherwise accept any field values from it)."""
    raise pickle.UnpicklingError(f"a pickle setting the state of {type(self).__name__}")


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A tensor as data.pkl names it: storage record `key`, element encoding, offset (elements), shape, stride."""

    key: str
    encoding: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    __setstate__ = _refuse_build

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class _Storage:
    key: str
    encoding: str
    __setstate__ = _refuse_build


@dataclass(frozen=True, slots=True)
class _StorageType:
    encoding: str
    __setstate__ = _refuse_build


class _Sealed(type):
    """A class whose attributes a pickle's BUILD opcode cannot set (it could otherwise replace a method)."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"setting {name[:40]} on {cls.__name__}")


class StateDict(dict, metaclass=_Sealed):
    """collections.OrderedDict as a state dict unpickles: a dict whose `_metadata` attribute (module versions,
    set by the pickle's BUILD opcode) is kept as data and never read."""


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value) or len(value) > 8:
        raise pickle.UnpicklingError(f"a tensor's {what} is {str(value)[:40]}, not a tuple of sizes")
    return value


@dataclass(frozen=True, slots=True)
class _RebuildTensor:
    """torch._utils._rebuild_tensor_v2, as data: the storage's record and where in it the tensor lies. (An object
    without attributes to set, unlike a function, whose __defaults__ a pickle's BUILD could replace.)"""

    __setstate__ = _refuse_build

    def __call__(self, storage: Any, offset: Any, shape: Any, stride: Any, *_: Any) -> TensorRef:
        if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
            raise pickle.UnpicklingError("a tensor rebuild without a storage and offset")
        return TensorRef(storage.key, storage.encoding, offset, _ints(shape, "shape"), _ints(stride, "stride"))


ALLOWED = {
    ("collections", "OrderedDict"): StateDict,
    ("torch._utils", "_rebuild_tensor_v2"): _RebuildTensor(),
    **{("torch", name): _StorageType(encoding) for name, (encoding, _) in STORAGES.items()},
}


def _unpickler(stream: io.BytesIO) -> "pickle.Unpickler":
    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            found = ALLOWED.get((module, name))
            if found is None:
                raise pickle.UnpicklingError(f"{module[:60]}.{name[:60]} {REFUSED}")
            return found

        def persistent_load(self, pid: Any) -> _Storage:
            # torch's id: ("storage", storage type, record key, location, element count)
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                    and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and pid[2].isdigit()):
                raise pickle.UnpicklingError(f"persistent id {str(pid)[:60]} is not a torch storage")
            return _Storage(pid[2], pid[1].encoding)

    return Restricted(stream)


def _check_opcodes(data: bytes) -> None:
    """Parse data.pkl's opcodes without building anything: bounded count, memo indices within it."""
    for n, (op, arg, _) in enumerate(pickletools.genops(data)):
        if n >= MAX_PICKLE_OPS:
            raise pickle.UnpicklingError(f"more than {MAX_PICKLE_OPS:,} opcodes")
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= int(arg) <= n:
            raise pickle.UnpicklingError(f"memo index {arg} at opcode {n}")


def _check_directory(path: Path) -> None:
    """The end records' entry count and central directory size, bounded before zipfile reads them."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        tail_size = min(size, END.size + 0xFFFF)
        f.seek(size - tail_size)
        tail = f.read(tail_size)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < END.size:
            raise zipfile.BadZipFile("no end of central directory record (truncated?)")
        _, _, _, _, count, cd_size, _, _ = END.unpack_from(tail, at)
        if count == 0xFFFF or cd_size == 0xFFFFFFFF:
            loc = at - END64_LOCATOR.size
            if loc < 0 or tail[loc:loc + 4] != b"PK\x06\x07":
                raise zipfile.BadZipFile("no zip64 end record locator")
            _, _, end64, _ = END64_LOCATOR.unpack_from(tail, loc)
            f.seek(end64)
            record = f.read(END64.size)
            if len(record) != END64.size or record[:4] != b"PK\x06\x06":
                raise zipfile.BadZipFile("no zip64 end record")
            fields = END64.unpack(record)
            count, cd_size = fields[6], fields[7]
    if count > MAX_RECORDS or cd_size > MAX_DIRECTORY_BYTES:
        raise zipfile.BadZipFile(f"{count:,} records in a {cd_size:,}-byte directory, beyond gpt2hub's limit "
                                 f"of {MAX_RECORDS:,} records")


def is_torch_zip(path: Path) -> bool:
    """Whether a file starts as a zip (torch.save's format since torch 1.6); content only, cheap."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == ZIP_MAGIC
    except OSError:
        return False


def data_pkl(path: Path) -> bytes | None:
    """data.pkl's bytes (at most MAX_PICKLE_BYTES), or None where the file is no zip with one. For detection."""
    try:
        _check_directory(path)
        with zipfile.ZipFile(path) as zf:
            pkl = next((i for i in zf.infolist() if i.filename.endswith("/data.pkl")), None)
            if pkl is None or pkl.file_size > MAX_PICKLE_BYTES:
                return None
            with zf.open(pkl) as f:
                return f.read(MAX_PICKLE_BYTES + 1)[:MAX_PICKLE_BYTES]
    except Exception:  # a damaged or hostile file is simply not detected here; open says what is wrong
        return None


@dataclass(frozen=True)
class TorchSave:
    """A torch.save zip opened: the object it holds (tensors as TensorRef) and where each storage record's bytes
    start in the file."""

    path: Path
    root: Any
    records: dict[str, tuple[int, int]]  # storage key -> (first data byte in the file, record size)

    def stored(self, name: str, ref: TensorRef) -> Stored:
        """The tensor's byte range, checked: a contiguous tensor inside its stored (uncompressed) record."""
        if ref.key not in self.records:
            raise ConversionError(f"{self.path}: {name}'s storage {ref.key!r} has no stored record in the zip")
        start, size = self.records[ref.key]
        item = ITEM_BYTES[ref.encoding]
        contiguous = tuple(math.prod(ref.shape[i + 1:]) for i in range(len(ref.shape)))
        if ref.stride != contiguous and ref.numel > 1:
            raise ConversionError(f"{self.path}: {name} is not a contiguous tensor (stride {list(ref.stride)})")
        if (ref.offset + ref.numel) * item > size:
            raise ConversionError(f"{self.path}: {name} needs {(ref.offset + ref.numel) * item:,} bytes of a "
                                  f"{size:,}-byte record")
        return Stored(name, ref.encoding, ref.shape, self.path, start + ref.offset * item, ref.numel * item)


def load(path: Path, what: str) -> TorchSave:
    """Open a torch.save zip; any failure is one line '<path>: not <what> (<why>)' with nothing executed."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        _check_directory(path)
        size = path.stat().st_size
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            infos = zf.infolist()
            pkl = next((i for i in infos if i.filename.endswith("/data.pkl")), None)
            if pkl is None:
                raise zipfile.BadZipFile("no data.pkl (not a torch.save zip)")
            if pkl.file_size > MAX_PICKLE_BYTES:
                raise pickle.UnpicklingError(f"data.pkl is {pkl.file_size:,} bytes, beyond gpt2hub's limit of "
                                             f"{MAX_PICKLE_BYTES:,}")
            with zf.open(pkl) as f:
                data = f.read(MAX_PICKLE_BYTES + 1)
            _check_opcodes(data)
            root = _unpickler(io.BytesIO(data)).load()
            stem = pkl.filename[: -len("data.pkl")] + "data/"
            records = {}
            for info in infos:
                key = info.filename[len(stem):]
                if not info.filename.startswith(stem) or not key.isdigit() or info.compress_type != zipfile.ZIP_STORED:
                    continue
                raw.seek(info.header_offset)
                head = raw.read(LOCAL_HEADER)
                if len(head) != LOCAL_HEADER or head[:4] != ZIP_MAGIC:
                    raise zipfile.BadZipFile(f"record {info.filename[:80]} has no local header")
                name_len, extra_len = struct.unpack_from("<HH", head, 26)
                start = info.header_offset + LOCAL_HEADER + name_len + extra_len
                if start + info.file_size > size:
                    raise zipfile.BadZipFile(f"record {info.filename[:80]} ends past the end of the file (truncated?)")
                records[key] = (start, info.file_size)
    except ConversionError:
        raise
    except Exception as e:  # zipfile, zlib and the unpickler raise many types; the unpickler calls nothing but
        # ALLOWED's entries, so any failure while reading is a malformed or hostile file, never gpt2hub's state
        raise ConversionError(f"{path}: not {what} ({type(e).__name__}: {str(e)[:200]})") from None
    return TorchSave(path, root, records)


def walk(value: Any) -> Iterator[TensorRef]:
    """Every TensorRef inside an unpickled object (each object visited once; at most MAX_WALK visited)."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if len(seen) > MAX_WALK:
            raise ConversionError(f"more than {MAX_WALK:,} objects in a torch.save pickle")
        if isinstance(item, TensorRef):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def zip_tensors(path: Path) -> list[Stored]:
    """Every tensor of a torch.save zip of a flat state dict (pytorch_model.bin), read in place."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file (named in the shard index)")
    save = load(path, "a PyTorch state dict")
    if not isinstance(save.root, dict):
        raise ConversionError(f"{path}: not a PyTorch state dict (it holds a {type(save.root).__name__})")
    tensors = []
    for name, ref in save.root.items():
        if not isinstance(name, str) or not isinstance(ref, TensorRef):
            raise ConversionError(f"{path}: not a PyTorch state dict ({str(name)[:60]} is not a named tensor)")
        tensors.append(save.stored(name, ref))
    return tensors
