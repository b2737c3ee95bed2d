"""gpt2hub.zipwriter writes the bytes Python's zipfile writes for the same stored records, zip64 included, and
zipfile reads back what it writes past 4 GiB."""

from __future__ import annotations

import io
import zipfile

import pytest

from gpt2hub import zipwriter

FB = b"FB\x04\x00\0\0\0\0"  # an extra field, as torch's padding


def _zipfile_bytes(records: list[tuple[str, bytes, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data, extra in records:
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            info.extra = extra
            zf.writestr(info, data)
    return buf.getvalue()


def _zipwriter_bytes(records: list[tuple[str, bytes, bytes]]) -> bytes:
    """Each record by another of the writer's three ways: whole, streamed in pieces, or its CRC given up front."""
    buf = io.BytesIO()
    with zipwriter.ZipWriter(buf) as zw:
        for i, (name, data, extra) in enumerate(records):
            if i % 3 == 0:
                zw.add(name, data, extra)
            elif i % 3 == 1:
                with zw.record(name, len(data), extra) as r:
                    for at in range(0, len(data), 1000):
                        r.write(data[at:at + 1000])
            else:
                with zw.record(name, len(data), extra, zipwriter.crc32(data)) as r:
                    buf.seek(r.start)  # as the kernel copy writes: at the record's start, around the writer
                    buf.write(data)
    return buf.getvalue()


def _records(sizes: list[int]) -> list[tuple[str, bytes, bytes]]:
    return [(f"archive/data/{i}", bytes(range(256)) * (n // 256) + bytes(n % 256), FB if i % 2 else b"")
            for i, n in enumerate(sizes)]


@pytest.mark.parametrize("limit", [zipfile.ZIP64_LIMIT, 1 << 12])
def test_stored_records_are_the_bytes_zipfile_writes(monkeypatch, limit):
    """With a 4 KiB limit: records whose local header needs zip64 (past limit/1.05), records past the limit, records
    and a directory at offsets past it: the layouts a 1558M shard has past 2 GiB."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", limit)
    monkeypatch.setattr(zipwriter, "ZIP64_LIMIT", limit)
    records = _records([0, 1, 64, 3950, 4000, 4096, 5000, 12000, 3, 700]) + [("ünïcode/name", b"x", b"")]
    ours = _zipwriter_bytes(records)
    assert ours == _zipfile_bytes(records)
    with zipfile.ZipFile(io.BytesIO(ours)) as zf:
        assert zf.testzip() is None and [zf.read(name) for name, _, _ in records] == [d for _, d, _ in records]
    if limit < zipfile.ZIP64_LIMIT:
        assert b"PK\x06\x06" in ours


def test_more_records_than_the_classic_end_record_counts():
    records = [(f"r{i}", b"", b"") for i in range(zipwriter.MAX_RECORDS + 2)]
    assert _zipwriter_bytes(records) == _zipfile_bytes(records)


def test_a_record_past_4_gib_reads_back_with_zipfile(tmp_path):
    """A real 4.5 GiB record, its bytes a hole in a sparse file (zeros, no disk), then a record beyond it."""
    size, block = (9 << 29), bytes(64 << 20)
    crc = 0
    for _ in range(size // len(block)):
        crc = zipwriter.crc32(block, crc)
    path = tmp_path / "big.zip"
    with open(path, "wb") as f, zipwriter.ZipWriter(f) as zw:
        zw.add("first", b"a" * 100, FB)
        with zw.record("big", size, FB, crc):
            pass  # the writer seeks past it: a hole of zeros
        zw.add("after", b"the end", FB)
    with zipfile.ZipFile(path) as zf:
        first, big, after = zf.infolist()
        assert (big.file_size, big.compress_size, big.CRC) == (size, size, crc)
        assert after.header_offset > 1 << 32 and zf.read("after") == b"the end" and zf.read("first") == b"a" * 100
        with zf.open("big") as r:
            assert r.read(1 << 20) == bytes(1 << 20)


def test_a_streamed_record_shorter_than_declared_is_refused():
    with zipwriter.ZipWriter(io.BytesIO()) as zw:
        with pytest.raises(ValueError, match=r"^zip record short: 3 bytes written, 4 declared$"):
            with zw.record("short", 4) as r:
                r.write(b"abc")
