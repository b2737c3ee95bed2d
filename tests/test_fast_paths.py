"""The faster paths give the same bytes: bfloat16 via ml_dtypes, the zip CRC-32 via zlib-ng."""

from __future__ import annotations

import zipfile
import zlib

import numpy as np

import gpt2hub
from gpt2hub.casts import ONE_PASS_FROM, cast_for, to_bf16, to_bf16_one_pass


def _ggml_bf16(x: np.ndarray) -> np.ndarray:
    """ggml's ggml_compute_fp32_to_bf16, element by element: NaN keeps sign and payload, made quiet; else RNE."""
    out = []
    for u in np.ascontiguousarray(x, np.float32).view(np.uint32).ravel().tolist():
        if (u & 0x7FFFFFFF) > 0x7F800000:
            out.append((u >> 16) | 64)
        else:
            out.append((u + (0x7FFF + ((u >> 16) & 1))) >> 16)
    return np.array(out, np.uint16).reshape(x.shape)


def test_bf16_matches_ggml_on_every_kind_of_float():
    special = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345, 0x7FBFFFFF, 0x7F800000, 0xFF800000, 0,
                        0x80000000, 0x00000001, 0x807FFFFF, 0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF], np.uint32)
    rng = np.random.default_rng(1)
    x = np.concatenate([special, rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)]).view(np.float32)
    strided = x[:20000].reshape(100, 200)[:, ::3]  # a transposed or strided input, as converters pass
    for cast in (to_bf16, to_bf16_one_pass):
        assert (cast(x) == _ggml_bf16(x)).all()
        assert (cast(strided) == _ggml_bf16(strided)).all() and cast(strided).flags.c_contiguous


def test_the_one_pass_cast_is_for_large_models_only():
    assert cast_for("bf16", ONE_PASS_FROM) is to_bf16_one_pass and cast_for("bf16", ONE_PASS_FROM - 1) is to_bf16
    assert cast_for("f16", ONE_PASS_FROM) is not to_bf16_one_pass


def test_pytorch_zip_crcs_are_zips_own(tiny_release, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    out = gpt2hub.convert(tiny_release, to="pytorch", out=tmp_path / "pt").path
    with zipfile.ZipFile(out / "pytorch_model.bin") as z:
        assert z.testzip() is None  # every record's CRC-32 recomputed by zlib and compared
        for info in z.infolist():
            assert zlib.crc32(z.read(info)) == info.CRC
    assert zipfile.crc32 is zlib.crc32  # zipfile's own is back for everyone else


def test_pytorch_f32_copied_by_the_kernel_is_what_zipfile_writes(tiny_release, tmp_path, monkeypatch):
    from gpt2hub.conversion import convert
    from gpt2hub.converters import pytorch

    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    fast = convert(tiny_release, to="pytorch", out=tmp_path / "fast", max_shard_bytes=300_000).path
    monkeypatch.setattr(pytorch, "KERNEL_COPY", False)
    slow = convert(tiny_release, to="pytorch", out=tmp_path / "slow", max_shard_bytes=300_000).path
    names = sorted(p.name for p in slow.iterdir())
    assert names == sorted(p.name for p in fast.iterdir()) and len([n for n in names if n.endswith(".bin")]) > 1
    for n in names:
        assert (fast / n).read_bytes() == (slow / n).read_bytes(), n
