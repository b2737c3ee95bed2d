"""A zip of stored (uncompressed) records, written front to back, byte for byte as Python's zipfile writes it.

pytorch_model.bin is such a zip. It is written here rather than with zipfile because a record's bytes
may be copied by the kernel (copy_file_range) without entering Python, which zipfile's writer cannot
do. Headers, the central directory and the end records are laid out as zipfile (3.11) lays them out,
zip64 fields included past its ZIP64_LIMIT, so outputs keep the bytes they had when zipfile wrote them.
The CRC-32 is zlib-ng's: zip's polynomial, about 6x zlib's speed.
"""

from __future__ import annotations

import struct
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Iterator

ZIP64_LIMIT = (1 << 31) - 1  # zipfile's (zip allows 4 GiB): sizes and offsets past it go in zip64 fields
MAX_RECORDS = 0xFFFF  # records the classic end record can count
LOCAL_HEADER = 30  # fixed part of a local file header
ZIP64_LOCAL_EXTRA = 20  # the zip64 field (id, length, two sizes) a local header carries when it needs one
VERSION, ZIP64_VERSION = 20, 45  # "version needed to extract": plain, and with zip64 fields
DOS_TIME, DOS_DATE = 0, 1 << 5 | 1  # 1980-01-01 00:00, the zip epoch: the same input always gives the same bytes
MADE_ON_UNIX, PERMISSIONS = 3, 0o600 << 16  # as zipfile on Unix: rw-------
UTF8_NAME = 0x800  # flag bit: the name is UTF-8 (else ASCII)

LOCAL = struct.Struct("<4s2B4HL2L2H")
CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
END = struct.Struct("<4s4H2LH")
END64 = struct.Struct("<4sQ2H2L4Q")
END64_LOCATOR = struct.Struct("<4sLQL")


def crc32(data, crc: int = 0) -> int:
    """The zip CRC-32 of `data` (any buffer), continuing `crc`."""
    from zlib_ng import zlib_ng

    return zlib_ng.crc32(data, crc)


def local_zip64(size: int) -> bool:
    """Whether a record's local header carries zip64 sizes: zipfile's test, with its 5% margin for compression."""
    return size * 1.05 > ZIP64_LIMIT


def header_size(name: str, size: int) -> int:
    """A record's local header without its extra field: its data starts this + len(extra) after the header."""
    return LOCAL_HEADER + len(_name(name)[0]) + (ZIP64_LOCAL_EXTRA if local_zip64(size) else 0)


def _name(name: str) -> tuple[bytes, int]:
    """The name's bytes and flag bits: ASCII where it can be, else UTF-8 with the flag set."""
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode("utf-8"), UTF8_NAME


@dataclass
class _Record:
    name: str
    size: int
    extra: bytes  # the caller's extra field (never a zip64 one: the writer adds those)
    offset: int  # of its local header
    crc: int = 0

    def local_header(self) -> bytes:
        name, flags = _name(self.name)
        extra, size = self.extra, self.size
        if local_zip64(self.size):
            extra += struct.pack("<HHQQ", 1, 16, self.size, self.size)
            size = 0xFFFFFFFF
        version = ZIP64_VERSION if local_zip64(self.size) else VERSION
        return LOCAL.pack(b"PK\x03\x04", version, 0, flags, 0, DOS_TIME, DOS_DATE, self.crc, size, size,
                          len(name), len(extra)) + name + extra

    def central_header(self) -> bytes:
        name, flags = _name(self.name)
        size, offset, fields = self.size, self.offset, []
        if size > ZIP64_LIMIT:
            fields += [size, size]
            size = 0xFFFFFFFF
        if offset > ZIP64_LIMIT:
            fields.append(offset)
            offset = 0xFFFFFFFF
        extra = (struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b"") + self.extra
        version = ZIP64_VERSION if fields or local_zip64(self.size) else VERSION
        return CENTRAL.pack(b"PK\x01\x02", version, MADE_ON_UNIX, version, 0, flags, 0, DOS_TIME, DOS_DATE, self.crc,
                            size, size, len(name), len(extra), 0, 0, 0, PERMISSIONS, offset) + name + extra


class RecordData:
    """Where one record's bytes go: written through `write`, or by the caller at `start` when the CRC was given."""

    def __init__(self, f: BinaryIO, record: _Record, start: int):
        self._f, self._record, self.start, self.written = f, record, start, 0

    def write(self, data) -> None:
        self._record.crc = crc32(data, self._record.crc)
        self.written += self._f.write(data)


class ZipWriter:
    """Stored records appended to a new, seekable file; the central directory and end records on close().

    with ZipWriter(f) as zw: zw.add(name, data) for small records, zw.record(name, size) for large ones.
    """

    def __init__(self, f: BinaryIO):
        self.file = f
        self._records: list[_Record] = []
        self.offset = f.tell()  # where the next local header goes

    def add(self, name: str, data: bytes, extra: bytes = b"") -> None:
        """A record of `data`."""
        with self.record(name, len(data), extra) as r:
            r.write(data)

    @contextmanager
    def record(self, name: str, size: int, extra: bytes = b"", crc: int | None = None) -> Iterator[RecordData]:
        """A record of `size` bytes. Without `crc`, its bytes go through RecordData.write (the CRC computed on the
        way, the header rewritten after them); with it, the caller writes them at RecordData.start, through the file
        descriptor (the file is flushed first), and nothing checks how many."""
        record = _Record(name, size, extra, self.offset, crc or 0)
        f = self.file
        f.seek(record.offset)
        f.write(record.local_header())
        data = RecordData(f, record, f.tell())
        if crc is not None:
            f.flush()
        yield data
        if crc is None:
            if data.written != size:
                raise ValueError(f"zip record {name}: {data.written} bytes written, {size} declared")
            f.seek(record.offset)
            f.write(record.local_header())
        self.offset = data.start + size
        f.seek(self.offset)
        self._records.append(record)

    def close(self) -> None:
        """The central directory and the end records (zip64 ones where a count, size or offset needs them)."""
        f = self.file
        f.seek(self.offset)
        for record in self._records:
            f.write(record.central_header())
        end = f.tell()
        count, size, start = len(self._records), end - self.offset, self.offset
        if count > MAX_RECORDS or start > ZIP64_LIMIT or size > ZIP64_LIMIT:
            f.write(END64.pack(b"PK\x06\x06", 44, ZIP64_VERSION, ZIP64_VERSION, 0, 0, count, count, size, start))
            f.write(END64_LOCATOR.pack(b"PK\x06\x07", 0, end, 1))
            count, size, start = min(count, MAX_RECORDS), min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
        f.write(END.pack(b"PK\x05\x06", 0, 0, count, count, size, start, 0))
        f.flush()

    def __enter__(self) -> ZipWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:  # a failed write leaves no directory: the file is not a zip
            self.close()
