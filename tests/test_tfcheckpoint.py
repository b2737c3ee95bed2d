"""The TF-free checkpoint reader and writer, against bundles TensorFlow itself wrote."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2hub.errors import CheckpointError, ChecksumError
from gpt2hub.layout import HParams, tensor_shapes
from gpt2hub.sstable import (
    FOOTER_SIZE,
    TABLE_MAGIC,
    _BlockBuilder,
    _block_entries,
    _read_block,
    _read_handle,
    _short_successor,
    build_table,
    crc32c,
    mask_crc,
    put_varint,
    read_table,
    unmask_crc,
)
from gpt2hub.tfbundle import TensorEntry, encode_entry, encode_header
from gpt2hub.tfcheckpoint import Checkpoint, read_index
from gpt2hub.tfwriter import write_checkpoint
from gpt2hub.testing.release import REAL_FIXTURES
from tests.checks import one_line

DATA = "model.ckpt.data-00000-of-00001"
REAL_DATA_SIZE = 497759232
needs_real = pytest.mark.skipif(REAL_FIXTURES is None, reason="../shared/fixtures/openai-124M-real not present")

# One tensor of each kind the reader must handle, in bytewise-sorted name order.
DTYPE_VALUES = {
    "bool": np.array([True, False, True]),
    "empty": np.zeros((0, 4), np.float32),
    "f16": np.arange(6, dtype=np.float16).reshape(2, 3) / np.float16(3),
    "f32": np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 3, 4),
    "f64": np.linspace(0, 1, 5),
    "i16": np.array([-7, 300], np.int16),
    "i32": np.array([1, -2, 2**31 - 1], np.int32),
    "i64": np.array([2**40, -1], np.int64),
    "i8": np.array([-128, 127], np.int8),
    "scalar": np.float32(3.5),
    "u16": np.array([1, 65535], np.uint16),
    "u32": np.array([1, 2**32 - 1], np.uint32),
    "u64": np.array([1, 2**64 - 1], np.uint64),
    "u8": np.array([0, 255], np.uint8),
}


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def object_checkpoint(tf, tmp_path_factory) -> str:
    """A TF2 object-based checkpoint (tf.train.Checkpoint) with several dtypes and a string variable."""
    variables = {k.replace("/", "_"): tf.Variable(v) for k, v in DTYPE_VALUES.items() if k not in ("u32", "u64")}
    variables["text"] = tf.Variable("hello, checkpoint")
    variables["bf16"] = tf.Variable(tf.constant([1.5, -2.0, 3.25], tf.bfloat16))
    return tf.train.Checkpoint(**variables).write(str(tmp_path_factory.mktemp("object") / "ckpt"))


@pytest.fixture(scope="module")
def savev2_prefix(tf, tmp_path_factory) -> Path:
    """DTYPE_VALUES written by TF's SaveV2 op: a bundle holding exactly these tensors."""
    prefix = tmp_path_factory.mktemp("savev2") / "tf"
    names = list(DTYPE_VALUES)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(DTYPE_VALUES[n]) for n in names])
    return prefix


def rewrite_index(index: Path, change) -> None:
    """Re-encode an index with `change(name, entry) -> entry` applied, with valid block CRCs."""
    items = []
    for key, value in read_table(index.read_bytes()):
        if key:
            value = encode_entry(change(key.decode(), _entry(index, key.decode())))
        items.append((key, value))
    index.write_bytes(build_table(items))


def _entry(index: Path, name: str) -> TensorEntry:
    return read_index(index)[1][name]


def copy_release(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- against TensorFlow ----------------------------------------------------------------------

def test_release_names_and_shapes_match_tensorflow(tf, tiny_release):
    reader = tf.train.load_checkpoint(str(tiny_release / "model.ckpt"))
    with Checkpoint(tiny_release) as ckpt:
        assert ckpt.shapes() == {n: tuple(s) for n, s in reader.get_variable_to_shape_map().items()}


def test_release_values_bit_identical_to_tensorflow(tf, tiny_release):
    reader = tf.train.load_checkpoint(str(tiny_release / "model.ckpt"))
    with Checkpoint(tiny_release) as ckpt:
        for name in ckpt.entries:
            ours, theirs = ckpt.tensor(name), reader.get_tensor(name)
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, name
            assert ours.tobytes() == theirs.tobytes(), name


def test_release_tensors_are_read_only_views_of_the_data_file(tiny_release):
    with Checkpoint(tiny_release) as ckpt:
        t = ckpt.tensor("model/wte")
        assert not t.flags.writeable and not t.flags.owndata
        with pytest.raises(ValueError):
            t[0, 0] = 1.0


def test_release_verifies(tiny_release):
    seen = []
    with Checkpoint(tiny_release) as ckpt:
        ckpt.verify_all(progress=seen.append)
        assert sum(seen) == (tiny_release / DATA).stat().st_size


def test_object_checkpoint_dtypes_match_tensorflow(tf, object_checkpoint):
    reader = tf.train.load_checkpoint(object_checkpoint)
    dtypes = reader.get_variable_to_dtype_map()
    with Checkpoint(object_checkpoint) as ckpt:
        assert ckpt.shapes() == {n: tuple(s) for n, s in reader.get_variable_to_shape_map().items()}
        numeric = [n for n in ckpt.entries if dtypes[n] != tf.string]
        assert len(numeric) == len(DTYPE_VALUES) - 2 + 1  # less u32/u64 (covered via SaveV2), plus bf16
        for name in numeric:
            ours, theirs = ckpt.tensor(name), np.asarray(reader.get_tensor(name))
            assert ckpt.entries[name].dtype_name == dtypes[name].name, name
            assert ours.shape == theirs.shape and ours.tobytes() == theirs.tobytes(), name


def test_bfloat16_reads_as_raw_16_bit_words(tf, object_checkpoint):
    reader = tf.train.load_checkpoint(object_checkpoint)
    name = "bf16/.ATTRIBUTES/VARIABLE_VALUE"
    with Checkpoint(object_checkpoint) as ckpt:
        assert ckpt.tensor(name).dtype == np.uint16
        np.testing.assert_array_equal(ckpt.tensor(name), np.asarray(reader.get_tensor(name)).view(np.uint16))


def test_string_tensor_is_refused_as_array_but_verifies(object_checkpoint):
    with Checkpoint(object_checkpoint) as ckpt:
        with pytest.raises(CheckpointError, match="string") as e:
            ckpt.tensor("text/.ATTRIBUTES/VARIABLE_VALUE")
        one_line(e)
        ckpt.verify("text/.ATTRIBUTES/VARIABLE_VALUE")
        ckpt.verify("_CHECKPOINTABLE_OBJECT_GRAPH")
        assert bytes(ckpt.raw("text/.ATTRIBUTES/VARIABLE_VALUE")).endswith(b"hello, checkpoint")


def test_corrupted_string_tensor_fails_verify(object_checkpoint, tmp_path):
    for f in Path(object_checkpoint).parent.iterdir():
        shutil.copyfile(f, tmp_path / f.name)
    prefix = tmp_path / Path(object_checkpoint).name
    name = "text/.ATTRIBUTES/VARIABLE_VALUE"
    entry = Checkpoint(prefix).entries[name]
    data = next(tmp_path.glob("*.data-*"))
    with open(data, "r+b") as f:
        f.seek(entry.offset + entry.size - 1)
        f.write(b"?")  # "hello, checkpoint" -> "hello, checkpoin?"
    with Checkpoint(prefix) as ckpt, pytest.raises(ChecksumError, match="text/") as e:
        ckpt.verify(name)
    one_line(e)


def test_savev2_values_read_bit_identical(savev2_prefix):
    with Checkpoint(savev2_prefix) as ckpt:
        assert list(ckpt.entries) == list(DTYPE_VALUES)
        for name, value in DTYPE_VALUES.items():
            t = ckpt.tensor(name)
            assert t.dtype == value.dtype and t.shape == value.shape and t.tobytes() == value.tobytes(), name
        ckpt.verify_all()


def test_writer_index_is_byte_identical_to_tensorflow(savev2_prefix, tmp_path):
    entries = write_checkpoint(tmp_path / "ours", DTYPE_VALUES.items())
    assert (tmp_path / "ours.index").read_bytes() == savev2_prefix.with_name("tf.index").read_bytes()
    assert (tmp_path / f"ours.data-00000-of-00001").read_bytes() == savev2_prefix.with_name(
        "tf.data-00000-of-00001").read_bytes()
    assert entries["scalar"].shape == () and entries["empty"].shape == (0, 4)


def test_writer_output_loads_in_tensorflow(tf, tmp_path):
    write_checkpoint(tmp_path / "ours", DTYPE_VALUES.items())
    reader = tf.train.load_checkpoint(str(tmp_path / "ours"))
    for name, value in DTYPE_VALUES.items():
        theirs = np.asarray(reader.get_tensor(name))
        assert theirs.dtype == value.dtype and theirs.shape == value.shape and theirs.tobytes() == value.tobytes()


def test_writer_spans_several_data_blocks_like_tensorflow(tf, tmp_path):
    # 6,000 entries with long names overflow TF's 256 KiB block size several times.
    names = sorted((f"model/layer{i:05d}/" + "x" * 80 for i in range(6000)), key=str.encode)
    values = [np.full((2,), i, np.int32) for i in range(len(names))]
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "tf"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(v) for v in values])
    write_checkpoint(tmp_path / "ours", zip(names, values))
    assert (tmp_path / "ours.index").read_bytes() == (tmp_path / "tf.index").read_bytes()
    assert len(read_index(tmp_path / "ours.index")[1]) == len(names)
    assert data_block_count((tmp_path / "ours.index").read_bytes()) >= 3


def data_block_count(index: bytes) -> int:
    footer = index[-FOOTER_SIZE:]
    _, pos = _read_handle(footer, 0, 40, "footer")
    handle, _ = _read_handle(footer, pos, 40, "footer")
    return len(list(_block_entries(_read_block(index, handle, "index"), "index")))


def test_writer_refuses_unsorted_names_and_leaves_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="sorted") as e:
        write_checkpoint(tmp_path / "x", [("b", np.zeros(1)), ("a", np.zeros(1))])
    one_line(e)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_unsupported_dtype_and_leaves_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="complex64") as e:
        write_checkpoint(tmp_path / "x", [("a", np.zeros(1)), ("b", np.zeros(2, np.complex64))])
    one_line(e)
    assert list(tmp_path.iterdir()) == []


# --- the real 124M index -----------------------------------------------------------------------

@needs_real
def test_real_index_has_148_tensors():
    header, entries = read_index(REAL_FIXTURES / "model.ckpt.index")
    assert header.num_shards == 1 and len(entries) == 148


@needs_real
def test_real_index_places_wte():
    entries = read_index(REAL_FIXTURES / "model.ckpt.index")[1]
    wte = entries["model/wte"]
    assert (wte.offset, wte.shape, wte.dtype_name) == (343369728, (50257, 768), "float32")


@needs_real
def test_real_index_offsets_packed_in_bytewise_sorted_order():
    entries = read_index(REAL_FIXTURES / "model.ckpt.index")[1]
    names = sorted(entries, key=str.encode)
    assert list(entries) == names
    offset = 0
    for name in names:
        assert entries[name].offset == offset, name
        offset += entries[name].size
    assert offset == REAL_DATA_SIZE


@needs_real
def test_real_index_shapes_match_hparams():
    entries = read_index(REAL_FIXTURES / "model.ckpt.index")[1]
    h = HParams.from_file(REAL_FIXTURES / "hparams.json")
    assert {n: e.shape for n, e in entries.items()} == tensor_shapes(h)


@needs_real
def test_real_index_is_rebuilt_byte_identically():
    """TF 1.x wrote this index; re-encoding its entries with our writer reproduces every byte."""
    real = (REAL_FIXTURES / "model.ckpt.index").read_bytes()
    items = [(k, v if not k else encode_entry(read_index(REAL_FIXTURES / "model.ckpt.index")[1][k.decode()]))
             for k, v in read_table(real)]
    assert build_table(items) == real


@needs_real
def test_real_first_tensor_crc_from_data_head():
    """Honest partial check: the head holds all of the first tensor, so its CRC can be checked alone."""
    entry = read_index(REAL_FIXTURES / "model.ckpt.index")[1]["model/h0/attn/c_attn/b"]
    head = (REAL_FIXTURES / f"{DATA}.head-3MiB").read_bytes()
    assert entry.offset == 0 and entry.offset + entry.size <= len(head)
    assert crc32c(head[entry.offset:entry.offset + entry.size]) == unmask_crc(entry.crc32c)


@needs_real
def test_real_first_tensor_verifies_in_zero_padded_copy(tmp_path):
    """The head padded (sparsely) to full size: verify() passes the first tensor, fails the second."""
    for name in ("model.ckpt.index", "checkpoint"):
        shutil.copyfile(REAL_FIXTURES / name, tmp_path / name)
    shutil.copyfile(REAL_FIXTURES / f"{DATA}.head-3MiB", tmp_path / DATA)
    os.truncate(tmp_path / DATA, REAL_DATA_SIZE)
    with Checkpoint(tmp_path) as ckpt:
        ckpt.verify("model/h0/attn/c_attn/b")
        with pytest.raises(ChecksumError):
            ckpt.verify("model/wte")


@needs_real
def test_checkpoint_on_truncated_real_data_fails_naming_truncation(tmp_path):
    for name in ("model.ckpt.index", "checkpoint"):
        shutil.copyfile(REAL_FIXTURES / name, tmp_path / name)
    shutil.copyfile(REAL_FIXTURES / f"{DATA}.head-3MiB", tmp_path / DATA)
    with pytest.raises(CheckpointError, match="truncated") as e:
        Checkpoint(tmp_path)
    assert DATA in one_line(e)


# --- snappy blocks -----------------------------------------------------------------------------

def snappy_table(items: list[tuple[bytes, bytes]], contents=None) -> bytes:
    """An SSTable whose one data block is snappy-compressed, as LevelDB writes it."""
    import cramjam

    def block(raw: bytes, kind: int) -> bytes:
        return raw + bytes([kind]) + struct.pack("<I", mask_crc(crc32c(bytes([kind]), crc32c(raw))))

    data = _BlockBuilder(16)
    for k, v in items:
        data.add(k, v)
    compressed = bytes(cramjam.snappy.compress_raw(data.finish())) if contents is None else contents
    out = block(compressed, 1)
    index = _BlockBuilder(1)
    index.add(_short_successor(items[-1][0]), put_varint(0) + put_varint(len(compressed)))
    meta_handle = put_varint(len(out)) + put_varint(8)
    out += block(_BlockBuilder(16).finish(), 0)
    index_raw = index.finish()
    index_handle = put_varint(len(out)) + put_varint(len(index_raw))
    out += block(index_raw, 0)
    return out + (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)


def test_snappy_block_is_decoded(tiny_release, tmp_path):
    items = list(read_table((tiny_release / "model.ckpt.index").read_bytes()))
    (tmp_path / "snappy.index").write_bytes(snappy_table(items))
    assert read_index(tmp_path / "snappy.index") == read_index(tiny_release / "model.ckpt.index")


def test_invalid_snappy_block_is_a_checkpoint_error(tiny_release, tmp_path):
    items = list(read_table((tiny_release / "model.ckpt.index").read_bytes()))
    (tmp_path / "bad.index").write_bytes(snappy_table(items, contents=b"\xff\xff\xff\xff\x0fnot snappy"))
    with pytest.raises(CheckpointError, match="snappy") as e:
        read_index(tmp_path / "bad.index")
    one_line(e)


# --- damaged input -----------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0, 1, FOOTER_SIZE - 1, FOOTER_SIZE, 100, -1, -FOOTER_SIZE])
def test_truncated_index_is_a_checkpoint_error(tiny_release, tmp_path, keep):
    data = (tiny_release / "model.ckpt.index").read_bytes()
    (tmp_path / "t.index").write_bytes(data[:keep])
    with pytest.raises(CheckpointError) as e:
        read_index(tmp_path / "t.index")
    assert "t.index" in one_line(e)


def test_bad_magic_is_a_checkpoint_error(tiny_release, tmp_path):
    data = bytearray((tiny_release / "model.ckpt.index").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "m.index").write_bytes(data)
    with pytest.raises(CheckpointError, match="bad magic") as e:
        read_index(tmp_path / "m.index")
    one_line(e)


def test_not_an_index_at_all_is_a_checkpoint_error(tmp_path):
    (tmp_path / "hparams.index").write_text('{"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12}\n' * 3)
    with pytest.raises(CheckpointError, match="magic") as e:
        read_index(tmp_path / "hparams.index")
    one_line(e)


def test_flipped_byte_in_a_block_fails_its_crc(tiny_release, tmp_path):
    data = bytearray((tiny_release / "model.ckpt.index").read_bytes())
    data[40] ^= 0x01  # inside the first data block
    (tmp_path / "f.index").write_bytes(data)
    with pytest.raises(CheckpointError, match="CRC32C") as e:
        read_index(tmp_path / "f.index")
    one_line(e)


def test_entry_past_end_of_data_file_is_refused_on_open(tiny_release, tmp_path):
    release = copy_release(tiny_release, tmp_path / "r")
    size = (release / DATA).stat().st_size
    rewrite_index(release / "model.ckpt.index",
                  lambda n, e: TensorEntry(**{**e.__dict__, "offset": size}) if n == "model/wpe" else e)
    with pytest.raises(CheckpointError, match="model/wpe") as e:
        Checkpoint(release)
    assert DATA in one_line(e)


def test_truncated_data_file_is_refused_on_open(tiny_release, tmp_path):
    release = copy_release(tiny_release, tmp_path / "r")
    os.truncate(release / DATA, (release / DATA).stat().st_size - 1)
    with pytest.raises(CheckpointError, match="truncated") as e:
        Checkpoint(release)
    one_line(e)


def test_missing_data_file_is_a_checkpoint_error(tiny_release, tmp_path):
    release = copy_release(tiny_release, tmp_path / "r")
    (release / DATA).unlink()
    with pytest.raises(CheckpointError, match="no such file") as e:
        Checkpoint(release)
    one_line(e)


def test_unknown_dtype_errors_on_that_tensor_only(tiny_release, tmp_path):
    release = copy_release(tiny_release, tmp_path / "r")
    rewrite_index(release / "model.ckpt.index",
                  lambda n, e: TensorEntry(**{**e.__dict__, "dtype_code": 99}) if n == "model/wpe" else e)
    with Checkpoint(release) as ckpt:
        with pytest.raises(CheckpointError, match="unknown dtype 99") as e:
            ckpt.tensor("model/wpe")
        assert "model/wpe" in one_line(e)
        np.testing.assert_array_equal(ckpt.tensor("model/wte"), Checkpoint(tiny_release).tensor("model/wte"))


def test_corrupted_data_byte_is_caught_by_verify(tiny_release, tmp_path):
    release = copy_release(tiny_release, tmp_path / "r")
    wte = Checkpoint(release).entries["model/wte"]
    with open(release / DATA, "r+b") as f:
        f.seek(wte.offset + wte.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    with Checkpoint(release) as ckpt:
        ckpt.verify("model/wpe")
        with pytest.raises(ChecksumError, match="model/wte") as e:
            ckpt.verify("model/wte")
        assert DATA in one_line(e)
        with pytest.raises(ChecksumError):
            ckpt.verify_all()


def test_unknown_tensor_name_is_a_checkpoint_error(tiny_release):
    with Checkpoint(tiny_release) as ckpt, pytest.raises(CheckpointError, match="no tensor named") as e:
        ckpt.tensor("model/nope")
    one_line(e)


def test_folder_without_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint") as e:
        Checkpoint(tmp_path)
    one_line(e)


# --- property-based: random damage never escapes as anything but CheckpointError ---------------

@pytest.fixture(scope="module")
def sample_index(tmp_path_factory) -> bytes:
    """The real 124M index where present, else one our writer makes at the 124M layout."""
    if REAL_FIXTURES is not None:
        return (REAL_FIXTURES / "model.ckpt.index").read_bytes()
    h = HParams(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12)
    items = [(b"", encode_header(1))] + [
        (n.encode(), encode_entry(TensorEntry(n, 1, s, 0, 0, 4 * int(np.prod(s)), 1))) for n, s in tensor_shapes(h).items()]
    return build_table(items)


def _read_or_checkpoint_error(data: bytes, folder: Path) -> None:
    path = folder / "fuzz.index"
    path.write_bytes(data)
    try:
        read_index(path)
    except CheckpointError as e:
        assert str(e) and "\n" not in str(e)


FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data())
def test_random_byte_damage_reads_or_raises_checkpoint_error(sample_index, tmp_path, data):
    buf = bytearray(sample_index)
    for _ in range(data.draw(st.integers(1, 8))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        buf = buf[:data.draw(st.integers(0, len(buf)))]
    _read_or_checkpoint_error(bytes(buf), tmp_path)


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data())
def test_random_entry_damage_behind_valid_crcs_reads_or_raises_checkpoint_error(sample_index, tmp_path, data):
    """Block CRCs stop most byte flips; here the table is rebuilt so damaged entries reach the parser."""
    items = [list(kv) for kv in read_table(sample_index)]
    for _ in range(data.draw(st.integers(1, 3))):
        item = items[data.draw(st.integers(0, len(items) - 1))]
        value = bytearray(item[1])
        if value and data.draw(st.booleans()):
            value[data.draw(st.integers(0, len(value) - 1))] = data.draw(st.integers(0, 255))
        else:
            value = value[:data.draw(st.integers(0, len(value)))] + data.draw(st.binary(max_size=12))
        item[1] = bytes(value)
    _read_or_checkpoint_error(build_table([(k, v) for k, v in items]), tmp_path)


def test_range_crc32c_reads_in_chunks_and_equals_the_whole_buffers_crc(tmp_path, monkeypatch):
    from gpt2hub import tfcheckpoint
    from gpt2hub.errors import ChecksumError

    data = bytes(range(256)) * 100
    path = tmp_path / "data"
    path.write_bytes(data)
    monkeypatch.setattr(tfcheckpoint, "CRC_CHUNK_BYTES", 1000)  # many chunks, the last one partial
    assert tfcheckpoint.range_crc32c(path, 77, 20_000) == tfcheckpoint.crc32c(data[77:20_077])
    with pytest.raises(ChecksumError, match="ends early"):
        tfcheckpoint.range_crc32c(path, 25_000, 1_000)


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=3000), start=st.integers(0, 0xFFFFFFFF))
def test_small_buffers_crc32c_in_python_as_the_crc32c_package_does(data, start):
    import crc32c as package

    from gpt2hub.sstable import _small_crc32c

    assert _small_crc32c(b"123456789", 0) == 0xE3069283  # the CRC-32C check value
    assert _small_crc32c(data, start) == package.crc32c(data, start)
