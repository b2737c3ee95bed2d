"""A source checkpoint's tensor as stored, and its values in OpenAI's layout (float32, Conv1D (in, out)).

Every source kind presents its tensors to converters as `SourceTensor`s under OpenAI's variable names. A
float32 tensor already in OpenAI's layout is `plain`: its bytes are OpenAI's, so writers copy them as they are.
Any other (f16/bf16 widened exactly, a ggml block type dequantized, an (out, in) matrix transposed, a bias
that the source has not stored, read as zeros) is decoded here, a bounded piece at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import encodings, lazy
from .errors import CheckpointError
from .tfbundle import TensorEntry

np = lazy.module("numpy")

DT_FLOAT = 1  # tfbundle's dtype code of float32: what every source tensor becomes
ZEROS = "ZEROS"  # an encoding with no bytes: a tensor the source does not store because it is zero (bias=False)
CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class SourceTensor(TensorEntry):
    """A TensorEntry (OpenAI's name and TF shape; shard_id indexes the source's data_paths) whose bytes may be
    encoded otherwise (`encoding`), and whose matrix may be stored (out, in) (`transposed`)."""

    encoding: str = "F32"
    transposed: bool = False

    @staticmethod
    def at(name: str, shape: tuple[int, ...], shard_id: int, offset: int, encoding: str = "F32",
           transposed: bool = False) -> "SourceTensor":
        """A tensor of OpenAI's TF `shape` stored in `encoding` at `offset` of data file `shard_id`."""
        stored = stored_shape(shape, transposed)
        size = 0 if encoding == ZEROS else encodings.nbytes(encoding, stored)
        return SourceTensor(name=name, dtype_code=DT_FLOAT, shape=tuple(shape), shard_id=shard_id, offset=offset,
                            size=size, crc32c=0, encoding=encoding, transposed=transposed)


def same_bytes(a: Path, a_offset: int, b: Path, b_offset: int, size: int, step: int = 8 << 20) -> bool:
    """Whether `size` bytes at two places (of one file or two) are equal, compared `step` bytes at a time (a tied
    head saved twice is 321 MB at 1558M)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for pos in range(0, size, step):
            n = min(step, size - pos)
            fa.seek(a_offset + pos)
            fb.seek(b_offset + pos)
            if fa.read(n) != fb.read(n):
                return False
    return True


def is_plain(e: TensorEntry) -> bool:
    """Whether a tensor's bytes are OpenAI's float32 bytes as they are (so they may be copied, not decoded)."""
    return not isinstance(e, SourceTensor) or (e.encoding == "F32" and not e.transposed)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Conv1D weights are stored [1, in, out] in OpenAI's layout; everywhere else they are (in, out) matrices."""
    return tuple(shape[1:]) if len(shape) == 3 and shape[0] == 1 else tuple(shape)


def stored_shape(shape: tuple[int, ...], transposed: bool) -> tuple[int, ...]:
    m = matrix_shape(shape)
    return m[::-1] if transposed and len(m) == 2 else m


def read_stored_rows(f, e: TensorEntry, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 of a tensor in its stored layout, decoded to float32 (f is its data file, open)."""
    shape = stored_shape(e.shape, getattr(e, "transposed", False))
    encoding = getattr(e, "encoding", "F32")
    _, cols = encodings.rows_cols(shape)
    if encoding == ZEROS:
        return np.zeros((r1 - r0, cols), np.float32)
    rb = encodings.row_bytes(encoding, cols)
    n = (r1 - r0) * rb
    buf = np.empty(n, np.uint8)
    f.seek(e.offset + r0 * rb)
    if f.readinto(buf) != n:
        raise CheckpointError(f"{Path(f.name).name}: {e.name} ends early (the data file shrank or is truncated)")
    buf = buf.reshape(r1 - r0, rb)
    raw = buf.view(encodings.raw_dtype(encoding)) if encoding in encodings.UNBLOCKED else buf
    return np.asarray(encodings.decode(raw, encoding), np.float32).reshape(r1 - r0, cols)


def read(data_paths: list[Path], e: TensorEntry) -> np.ndarray:
    """The whole tensor as float32 in OpenAI's matrix layout ((in, out) for Conv1D weights)."""
    shape = stored_shape(e.shape, getattr(e, "transposed", False))
    rows, _ = encodings.rows_cols(shape)
    if getattr(e, "encoding", "F32") == ZEROS:
        return np.zeros(matrix_shape(e.shape), np.float32)
    with open(data_paths[e.shard_id], "rb") as f:
        a = read_stored_rows(f, e, 0, rows).reshape(shape)
    return transposed(a) if getattr(e, "transposed", False) else a


def transposed(a: np.ndarray, tile: int = 256) -> np.ndarray:
    """A matrix's transpose, contiguous. By hand, in tiles: numpy's strided copy walks one side a column at a time
    and runs at about a third of the speed (measured: 6400x1600 float32 in 88 ms whole, 23 ms in 256-tiles)."""
    rows, cols = a.shape
    out = np.empty((cols, rows), a.dtype)
    for i in range(0, rows, tile):
        for j in range(0, cols, tile):
            out[j:j + tile, i:i + tile] = a[i:i + tile, j:j + tile].T
    return out


def rows(data_paths: list[Path], e: TensorEntry, transpose: bool, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """The tensor in OpenAI's matrix layout (transposed when `transpose`), as float32 blocks of whole rows.

    Rows stream from the file when the stored layout is the one wanted (wte: 321 MB at 1558M stays a few chunks);
    otherwise the matrix (at most 4 n_embd^2 values) is read whole and yielded as strided views of its transpose.
    """
    stored = stored_shape(e.shape, getattr(e, "transposed", False))
    if len(stored) == 1:
        yield read(data_paths, e)
        return
    flip = transpose != getattr(e, "transposed", False)
    if flip:
        a = read(data_paths, e)
        a = a.T if transpose else a
        step = max(1, chunk_bytes // (a.shape[1] * 4))
        for r in range(0, a.shape[0], step):
            yield a[r:r + step]
        return
    step = max(1, chunk_bytes // (stored[1] * 4))
    if getattr(e, "encoding", "F32") == ZEROS:
        for r in range(0, stored[0], step):
            yield np.zeros((min(step, stored[0] - r), stored[1]), np.float32)
        return
    with open(data_paths[e.shard_id], "rb") as f:
        for r in range(0, stored[0], step):
            yield read_stored_rows(f, e, r, min(stored[0], r + step))
