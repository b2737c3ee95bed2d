"""Exact weight proofs: every tensor of an output equals the transform its source implies, no tolerance.

A format describes each tensor it stores (`Stored`: name, encoding, shape, where its bytes are) and what
it should be (`Expected`: the TF variable, the encoding, whether the layout is transposed, how many zero
rows pad it), both from gpt2hub.stored. The checks are then generic, per encoding: F32 bit-identical to
the source; F16/BF16 equal to the source rounded to nearest even; block types (Q8_0, ...) byte-identical
to gguf-py's reference quantizer, or else every dequantized value within that type's proven error bound;
padding rows all zero bits. Tensors stream one row-chunk at a time through read(2), so memory stays at a
few chunks whatever the model size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ..encodings import UNBLOCKED, decode, qtype as _qtype, raw_dtype, row_bytes, rows_cols
from .. import source_tensors
from ..source_tensors import SourceTensor
from ..stored import Expected, Stored, StoredOutput

CHUNK_BYTES = 16 << 20
RAW_DTYPES = {e: raw_dtype(e) for e in UNBLOCKED}  # BF16 as its bits
KIND = {"F32": "f32 bit-identical", "F16": "f16 = source rounded to nearest even",
        "BF16": "bf16 = source rounded to nearest even"}


def _q8_0_bound(amax: np.ndarray) -> np.ndarray:
    """Q8_0 stores d = f16(amax/127) and q = round(x * 127/amax): |x - d q| <= amax/254 (rounding of q)
    + 127 |d - amax/127| (d rounded to f16: 2^-11 relative, or 2^-25 absolute when subnormal)."""
    return (amax * (1 / 254 + 2.0**-11) + 127 * 2.0**-25) * (1 + 2.0**-16)


# Proven per-block error bounds of block types, |dequantized - source| <= bound(block's max |x|).
BLOCK_BOUNDS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"Q8_0": _q8_0_bound}








def read_rows(s: Stored, r0: int, r1: int, f=None) -> np.ndarray:
    """Rows r0:r1 of a stored tensor as stored: a float/uint16 matrix, or uint8 block rows."""
    _, cols = rows_cols(s.shape)
    rb = row_bytes(s.encoding, cols)
    own = f is None
    f = open(s.path, "rb") if own else f
    try:
        f.seek(s.offset + r0 * rb)
        buf = np.fromfile(f, np.uint8, (r1 - r0) * rb)
    finally:
        if own:
            f.close()
    if buf.size != (r1 - r0) * rb:
        raise ValueError(f"{s.path.name}: {s.name} ends early (the file is truncated)")
    buf = buf.reshape(r1 - r0, rb)
    return buf.view(RAW_DTYPES[s.encoding]) if s.encoding in RAW_DTYPES else buf


def encode(x: np.ndarray, encoding: str) -> np.ndarray:
    """float32 rows in an encoding, by an implementation independent of gpt2hub's converters."""
    if encoding == "F32":
        return x
    if encoding in ("F16", "BF16"):  # torch rounds to nearest even, with the CPU's conversion instructions (fast)
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.to(torch.float16).numpy() if encoding == "F16" else t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    import gguf

    return gguf.quants.quantize(np.ascontiguousarray(x), _qtype(encoding))




def read_source(ckpt, name: str) -> np.ndarray:
    """A checkpoint tensor read with read(2) (not the memory map), Conv1D's leading 1 dropped: float32 in OpenAI's
    matrix layout whatever the source's kind (a SourceTensor decoded from its encoding and layout)."""
    e = ckpt.entries[name]
    if isinstance(e, SourceTensor):
        return source_tensors.read(ckpt.data_paths, e)
    a = np.fromfile(ckpt.data_paths[e.shard_id], e.dtype, e.numel, offset=e.offset)
    shape = e.shape[1:] if len(e.shape) == 3 and e.shape[0] == 1 else e.shape
    return a.reshape(shape)


@dataclass
class Proof:
    """The outcome for one output: counts per kind of exact match, and the first failures."""

    checked: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def detail(self) -> str:
        if self.failures:
            more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            return self.failures[0] + more
        return f"all {self.checked} tensors: " + ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items()))


def _first_difference(raw: np.ndarray, want: np.ndarray, encoding: str, r0: int) -> str:
    if encoding not in RAW_DTYPES:
        r, c = (int(i) for i in np.argwhere(raw != want.view(np.uint8))[0])
        return f": row {r0 + r}, byte {c} differs from gguf-py's quantizer"
    bits = np.dtype(f"<u{raw.dtype.itemsize}")
    r, c = (int(i) for i in np.argwhere(raw.view(bits) != want.view(bits))[0])
    got = decode(raw[r:r + 1, c:c + 1], encoding)[0, 0]
    exp = decode(want.view(raw.dtype)[r:r + 1, c:c + 1], encoding)[0, 0]
    return f"[{r0 + r}, {c}] is {float(got)!r}, the source implies {float(exp)!r}"


def check_tensor(s: Stored, exp: Expected, src: np.ndarray, proof: Proof) -> None:
    """One stored tensor against its source (float32, checkpoint layout squeezed)."""
    mat = src.T if exp.transpose else src
    shape = (mat.shape[0] + exp.zero_rows, *mat.shape[1:]) if exp.zero_rows else tuple(mat.shape)
    if exp.encoding is not None and s.encoding != exp.encoding:  # None: a mix, each tensor's type its writer's choice
        return proof.fail(f"{s.name}: stored as {s.encoding}, expected {exp.encoding}")
    if tuple(s.shape) != shape:
        return proof.fail(f"{s.name}: shape {list(s.shape)}, the source implies {list(shape)}"
                          + (" (transposed?)" if tuple(s.shape) == shape[::-1] else ""))
    rows, cols = rows_cols(shape)
    rb = row_bytes(s.encoding, cols)
    if s.nbytes != rows * rb:
        return proof.fail(f"{s.name}: {s.nbytes} bytes stored, {rows * rb} expected")
    rows -= exp.zero_rows
    if exp.zero_rows and not _zero_rows_hold(s, rows, rows + exp.zero_rows, proof):
        return None
    mat = mat.reshape(rows, cols)
    step = max(1, CHUNK_BYTES // max(1, cols * 4))
    bound = BLOCK_BOUNDS.get(s.encoding)
    within = 0
    with open(s.path, "rb") as f:
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            x = np.ascontiguousarray(mat[r0:r1], dtype=np.float32)
            try:
                raw = read_rows(s, r0, r1, f)
            except ValueError as e:
                return proof.fail(str(e))
            try:
                want = encode(x, s.encoding)
            except NotImplementedError:  # gguf-py has no quantizer for this type (K-quants): not proven here
                kind = f"{s.encoding} not proven (no reference quantizer in gguf-py)"
                proof.kinds[kind] = proof.kinds.get(kind, 0) + 1
                return None
            if np.array_equal(raw.view(np.uint8), want.view(np.uint8)):
                continue
            if bound is None:
                return proof.fail(f"{s.name}{_first_difference(raw, want, s.encoding, r0)}")
            # Not the reference quantizer's bytes: accept only if every value is within the type's bound.
            block = _qtype_block_size(s.encoding)
            err = np.abs(decode(raw, s.encoding).reshape(-1, block) - x.reshape(-1, block)).max(axis=1)
            limit = bound(np.abs(x.reshape(-1, block)).max(axis=1))
            if np.any(~(err <= limit)):
                i = int(np.argmax(~(err <= limit)))
                return proof.fail(f"{s.name}: block {i} of rows {r0}..{r1} is off by {err[i]:.3g}, "
                                  f"beyond {s.encoding}'s bound {limit[i]:.3g}")
            within += 1
    kind = KIND.get(s.encoding, f"{s.encoding} blocks identical to gguf-py's quantizer")
    if within:
        kind = f"{s.encoding} within its error bound (not gguf-py's bytes)"
    proof.kinds[kind] = proof.kinds.get(kind, 0) + 1


def _zero_rows_hold(s: Stored, r0: int, r1: int, proof: Proof) -> bool:
    """Whether rows r0:r1 of a stored tensor are all zero bits; else the first nonzero one is the proof's failure."""
    _, cols = rows_cols(s.shape)
    step = max(1, CHUNK_BYTES // max(1, row_bytes(s.encoding, cols)))
    with open(s.path, "rb") as f:
        for a in range(r0, r1, step):
            try:
                raw = read_rows(s, a, min(r1, a + step), f).view(np.uint8)
            except ValueError as e:
                proof.fail(str(e))
                return False
            if raw.any():
                r = a + int(np.argmax(raw.any(axis=1)))
                proof.fail(f"{s.name}: padding row {r} is not zero (rows {r0}..{r1 - 1} pad past the source's {r0})")
                return False
    return True


def _qtype_block_size(encoding: str) -> int:
    import gguf

    return gguf.GGML_QUANT_SIZES[_qtype(encoding)][0]


def prove(ckpt, outputs: Iterable[tuple[dict[str, Stored], dict[str, Expected]]]) -> list[Proof]:
    """One Proof per output ({name: Stored}, {name: Expected}); each source tensor is read once for all of them."""
    outputs = list(outputs)
    proofs = [Proof() for _ in outputs]
    by_source: dict[str, list[tuple[int, Stored, Expected]]] = {}
    for i, (stored, expected) in enumerate(outputs):
        missing = sorted(set(expected) - set(stored))
        extra = sorted(set(stored) - set(expected))
        if missing:
            proofs[i].fail(f"{len(missing)} tensors missing, e.g. {missing[0]}")
        if extra:
            proofs[i].fail(f"{len(extra)} unexpected tensors, e.g. {extra[0]}")
        for name, exp in expected.items():
            if name in stored:
                by_source.setdefault(exp.source, []).append((i, stored[name], exp))
    order = sorted(by_source, key=lambda n: (ckpt.entries[n].shard_id, ckpt.entries[n].offset))
    for tf_name in order:
        src = read_source(ckpt, tf_name)
        for i, s, exp in by_source[tf_name]:
            proofs[i].checked += 1
            try:
                check_tensor(s, exp, src, proofs[i])
            except (OSError, ValueError) as e:
                proofs[i].fail(f"{s.name}: {e}")
        del src
    return proofs


def stored_weights(s: Stored, exp: Expected) -> np.ndarray:
    """A stored tensor decoded to float32 in the checkpoint's layout (the weights the file holds)."""
    shape = (s.shape[0] - exp.zero_rows, *s.shape[1:])  # the padding left out
    a = decode(read_rows(s, 0, rows_cols(shape)[0]), s.encoding).reshape(shape)
    return a.T if exp.transpose else a


def transformed_weights(src: np.ndarray, exp: Expected) -> np.ndarray:
    """The weights an output with this encoding must hold, decoded to float32 in the checkpoint's layout."""
    if exp.encoding == "F32":
        return src
    mat = src.T if exp.transpose else src
    rows, cols = rows_cols(mat.shape)
    a = decode(encode(np.ascontiguousarray(mat.reshape(rows, cols)), exp.encoding), exp.encoding).reshape(mat.shape)
    return a.T if exp.transpose else a


class LayerCache:
    """Source tensors of the scope being read (one layer, or the globals), shared by every lane of a forward
    pass: each is read from disk once however many sets of weights derive from it."""

    def __init__(self, ckpt):
        self.ckpt, self.scope, self.items = ckpt, None, {}

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.items:
            part = name.split("/")[1]
            scope = part if part[:1] == "h" and part[1:].isdigit() else "globals"
            if scope != self.scope:
                self.items.clear()
                self.scope = scope
            self.items[name] = read_source(self.ckpt, name)
        return self.items[name]


def held_weights(source: Callable[[str], np.ndarray], stored: StoredOutput | None, proof: Proof | None):
    """(key, TF name -> float32 array) of the weights an output must hold, for its float64 reference.

    Outputs holding the same weights share a key (every f32 output: the source itself). Block types proven
    right are read from the file (dequantized is cheaper than quantizing); otherwise the source is put
    through the output's encodings, so a broken output is compared with what it should hold.
    """
    if stored is None or all(e.encoding == "F32" for e in stored.expected.values()):  # every f32 output: the source
        return "source", source
    by_source = {e.source: (n, e) for n, e in reversed(stored.expected.items())}  # the tied wte, not an untied copy
    if (proof is not None and proof.passed and any(e.encoding not in RAW_DTYPES for _, e in by_source.values())) \
            or any(e.encoding is None for _, e in by_source.values()):  # a mix: only the file says what it holds
        return str(stored.tensors[next(iter(by_source.values()))[0]].path), \
            lambda name: stored_weights(stored.tensors[by_source[name][0]], by_source[name][1])
    key = tuple(sorted((t, e.encoding, e.transpose) for t, (_, e) in by_source.items()))
    return key, lambda name: transformed_weights(source(name), by_source[name][1])
