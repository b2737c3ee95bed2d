"""Proving a file someone else wrote against a release on disk, tensor by tensor, to a one-line verdict.

Each tensor is read as the file stores it (its encoding, its layout) and set beside the release's tensor in that
layout. It is then, best first: bit-identical; the release rounded to f16/bf16 to nearest even; quantized blocks
byte-identical to ggml's quantizer (llama.cpp's own C code, else gguf-py's numpy one); blocks within the type's
error bound with quantization's error statistics; or it differs, with max |delta|, relative error, NMSE and, where
the pattern is recognisable, what it looks like (another tensor of the release: swapped layers; the transpose; the
release scaled; zeros). Tensors stream a row chunk at a time; only the release's tensor is held whole.

Bounds of the block types. Q8_0's is proven (weights.BLOCK_BOUNDS). For the others it is a measured property, not
a theorem: max |dequantized - source| of a block over its max |source|, measured with ggml's quantizer on Gaussian,
Student-t(3), Laplace, uniform, sparse and positive data (512 x 1024 values each; llama-cpp-python 0.3.36), times
about 1.5 (the legacy types' closed forms, e.g. Q4_0's max/8 at the clipped end, sit inside); search-based
quantizers (K-quants, importance matrices) choose scales that no closed form bounds. Every bound is widened by one
f16 rounding of the source, since most community GGUFs are quantized from an F16 GGUF. A block type also has to show
quantization's statistics: the tensor's NMSE within the type's band (3x the worst measured) and its gain
<x, y> / <x, x> within what rounding makes (quantizers shrink slightly, by less than the NMSE; a 1% rescale of a
tensor of 100k values stands out at dozens of standard errors).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import encodings
from ..casts import to_bf16
from ..errors import ConversionError, VerificationError
from ..layout import HPARAM_KEYS, SCOPE, HEAD_TENSOR, HParams, tensor_shapes
from ..source_tensors import ZEROS, stored_shape
from .weights import BLOCK_BOUNDS

CHUNK_BYTES = 16 << 20
SAMPLE = 1024  # values per tensor kept to recognise a tensor of the release stored under another name
SHOWN_DIFFERING = 12  # differing tensors listed in the text (all in --json)

# The kinds of per-tensor outcome, best first; the first four pass.
IDENTICAL = "identical"
ROUNDED = "rounded"
BLOCKS_IDENTICAL = "blocks identical"
WITHIN_BOUND = "within bound"
DIFFERS = "differs"
PASSING = (IDENTICAL, ROUNDED, BLOCKS_IDENTICAL, WITHIN_BOUND)

# max |delta| of a block / max |x| of the block (see the module docstring; Q8_0's is proven in weights.py).
MEASURED_BLOCK_LIMITS = {"Q4_0": 0.2, "Q4_1": 0.1, "Q5_0": 0.1, "Q5_1": 0.05, "Q2_K": 0.9, "Q3_K": 0.4, "Q4_K": 0.16,
                         "Q5_K": 0.1, "Q6_K": 0.035, "IQ4_NL": 0.2, "IQ4_XS": 0.2}
# A tensor's NMSE ||y - x||^2 / ||x||^2 that quantization to the type stays within (3x the worst measured).
NMSE_BANDS = {"Q8_0": 2e-4, "Q4_0": 5e-2, "Q4_1": 3e-2, "Q5_0": 1.5e-2, "Q5_1": 8e-3, "Q2_K": 0.4, "Q3_K": 0.1,
              "Q4_K": 3e-2, "Q5_K": 7e-3, "Q6_K": 2e-3, "IQ4_NL": 3e-2, "IQ4_XS": 3e-2}
# NMSE of a tensor that is another tensor of the release in this encoding (to recognise swaps and copies).
FLOAT_NOISE = {"F32": 0.0, "F16": 1e-6, "BF16": 3e-5}
# Types ggml quantizes without an importance matrix and without crashing the process (ggml_quantize_chunk).
GGML_SAFE = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"}
GAIN_SIGMAS = 8  # a gain further than this many standard errors from 1 is no rounding's
F16_ROUNDING = 2.0**-11  # f16's relative rounding error (and 2^-25 absolute below its normal range)


def block_limit(encoding: str, amax: np.ndarray) -> np.ndarray | None:
    """The largest |delta| a block of `encoding` may show, per block (None: no bound known for the type).

    The type's bound is widened by one f16 rounding of the source: most community GGUFs are quantized from an F16
    GGUF, so the quantizer saw f16(x), within 2^-11 |x| of x, and its own bound holds around that."""
    seen = amax * (1 + F16_ROUNDING) + 2.0**-25
    if encoding in BLOCK_BOUNDS:
        return BLOCK_BOUNDS[encoding](seen) + (seen - amax)
    if encoding in MEASURED_BLOCK_LIMITS:
        return seen * MEASURED_BLOCK_LIMITS[encoding] + (seen - amax)
    return None


def noise_band(encoding: str) -> float:
    """The NMSE an honest encoding of a tensor may show."""
    return FLOAT_NOISE.get(encoding, NMSE_BANDS.get(encoding, 0.0))


def quantize(x: np.ndarray, encoding: str) -> tuple[np.ndarray, str] | None:
    """float32 rows in a block type's bytes, and whose quantizer made them; None where none is at hand."""
    if encoding in GGML_SAFE:
        from ..converters.gguf import ggml_quantize

        from ..threads import pipelined

        qtype = encodings.qtype(encoding)
        parts = np.array_split(x, min(len(x), os.cpu_count() or 1))  # ctypes lets go of the GIL: one part a core
        try:
            return np.concatenate(list(pipelined(lambda part: ggml_quantize(part, qtype), parts))), \
                "llama.cpp's quantizer"
        except ConversionError:  # llama-cpp-python absent: gguf-py's numpy quantizer, bit-identical where it has one
            pass
    import gguf

    try:
        return gguf.quants.quantize(np.ascontiguousarray(x), encodings.qtype(encoding)), "gguf-py's quantizer"
    except NotImplementedError:
        return None


def rounded(x: np.ndarray, encoding: str) -> np.ndarray:
    """float32 rounded to nearest even in F16/BF16, as stored (BF16 as its uint16 bits)."""
    return x.astype(np.float16) if encoding == "F16" else to_bf16(x)


@dataclass
class TensorProof:
    """One tensor of the file against the release's: the outcome and the figures behind it."""

    name: str  # OpenAI's variable name
    encoding: str
    stored_name: str = ""  # the file's own name for it, where the reader says (a GGUF's blk.0.ffn_up.weight)
    kind: str = IDENTICAL
    release_name: str = ""  # the release's tensor it was proven against (wte for an untied head)
    max_abs: float = 0.0
    rel_err: float = 0.0  # ||y - x|| / ||x||
    nmse: float = 0.0  # ||y - x||^2 / ||x||^2
    block_ratio: float | None = None  # block types: max over blocks of max |delta| / max |x|
    looks_like: str = ""  # a differing tensor's pattern: "looks like the release's tensor scaled by 1.01", "is swapped with X"
    note: str = ""
    by: str = ""  # whose quantizer the blocks were compared with

    @property
    def passed(self) -> bool:
        return self.kind in PASSING

    @property
    def shown(self) -> str:
        return self.stored_name or self.name


@dataclass
class MetaCheck:
    """One fact about the file other than its weights: hparams, vocabulary, head, extra and missing tensors."""

    what: str
    passed: bool
    detail: str


@dataclass
class ForeignProof:
    """A file proven against one release: every tensor, every metadata fact, and the verdict."""

    path: str
    source_kind: str
    against: str
    tensors: list[TensorProof] = field(default_factory=list)
    metadata: list[MetaCheck] = field(default_factory=list)
    label: str = ""  # the file's type: "f32", "bf16", "Q4_K_M" (general.file_type) or the types it holds
    verdict: str = ""
    verdict_kind: str = ""  # identical | rounded | quantized | within-bound | differs
    seconds: float = 0.0
    candidates: list[str] = field(default_factory=list)  # the releases it was proven against, without --against
    logits: "LogitsCheck | None" = None  # the file through its own consumer (None: not run)

    @property
    def passed(self) -> bool:
        return self.verdict_kind in ("identical", "rounded", "quantized", "within-bound") \
            and (self.logits is None or self.logits.passed)

    def to_dict(self) -> dict:
        return {"path": self.path, "source_kind": self.source_kind, "against": self.against, "label": self.label,
                "verdict": self.verdict, "verdict_kind": self.verdict_kind, "passed": self.passed,
                "seconds": round(self.seconds, 3), "candidates": self.candidates,
                "logits": asdict(self.logits) if self.logits is not None else None, "metadata": [asdict(m) for m in self.metadata],
                "tensors": [asdict(t) for t in self.tensors]}

    def to_text(self) -> str:
        kinds: dict[str, int] = {}
        for t in self.tensors:
            key = f"{t.encoding} {t.kind}" + (f" ({t.by})" if t.by and t.kind == BLOCKS_IDENTICAL else "")
            kinds[key] = kinds.get(key, 0) + 1
        lines = [f"{self.path} ({self.source_kind}) against {self.against}"]
        lines += [f"  {m.what:<12} {'ok  ' if m.passed else 'FAIL'} {m.detail}" for m in self.metadata]
        lines.append(f"  tensors      {len(self.tensors)}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        within = [t for t in self.tensors if t.kind == WITHIN_BOUND]
        if within:
            t = max(within, key=lambda u: u.nmse)
            lines.append(f"  worst within bound: {t.shown} {t.encoding}: NMSE {t.nmse:.2e}, max |delta| "
                         f"{t.block_ratio:.3f} of its block's max")
        bad = [t for t in self.tensors if not t.passed]
        for t in bad[:SHOWN_DIFFERING]:
            lines.append(f"  DIFFERS {t.shown} ({t.encoding}): max |delta| {t.max_abs:.3g}, relative error "
                         f"{t.rel_err:.3g}, NMSE {t.nmse:.3g}" + (f"; {t.looks_like}" if t.looks_like else "")
                         + (f"; {t.note}" if t.note else ""))
        if len(bad) > SHOWN_DIFFERING:
            lines.append(f"  ... and {len(bad) - SHOWN_DIFFERING} more differing tensors (--json lists every one)")
        if within and all(t.note for t in within):
            lines.append(f"  note         every block within bound is {within[0].by} applied to the release rounded to "
                         "f16 (quantized from an F16 file)")
        if self.logits is not None:
            lines.append(self.logits.text())
        lines.append(("PASS " if self.passed else "FAIL ") + self.verdict)
        return "\n".join(lines)


# --- one tensor ----------------------------------------------------------------------------------

@dataclass
class _Sums:
    """Running figures of one tensor, over its row chunks (float64)."""

    dd: float = 0.0  # sum (y - x)^2
    xx: float = 0.0
    yy: float = 0.0
    xy: float = 0.0
    tt: float | None = None  # sum (y - x^T)^2, square matrices only
    max_abs: float = 0.0
    ratio: float = 0.0
    beyond: int = 0  # blocks past the type's bound
    first_beyond: str = ""


def _sample_index(rows: int, cols: int) -> np.ndarray:
    n = rows * cols
    rng = np.random.default_rng([rows, cols])
    return np.sort(rng.choice(n, min(SAMPLE, n), replace=False))


def prove_tensor(name: str, entry, data_paths: list[Path], x: np.ndarray, release_name: str, prefer_f16: bool = False
                 ) -> tuple[TensorProof, np.ndarray, np.ndarray]:
    """One stored tensor against the release's x (float32, OpenAI's matrix layout): its proof, and the samples of
    the stored and the release's values at the same places (to recognise tensors stored under another name)."""
    encoding = getattr(entry, "encoding", "F32")
    transposed = getattr(entry, "transposed", False)
    shape = stored_shape(entry.shape, transposed)
    rows, cols = encodings.rows_cols(shape)
    xs = (x.T if transposed and x.ndim == 2 else x).reshape(rows, cols)  # the release in the stored layout
    square = rows == cols and rows > 1
    proof = TensorProof(name, encoding, release_name=release_name)
    index = _sample_index(rows, cols)
    sample_x = xs.reshape(-1)[index].astype(np.float64)
    if encoding == ZEROS:
        y = np.zeros_like(sample_x)
        s = _Sums(dd=float(np.sum(np.square(x, dtype=np.float64))), xx=float(np.sum(np.square(x, dtype=np.float64))),
                  max_abs=float(np.abs(x).max(initial=0.0)))
        proof.kind = IDENTICAL if s.dd == 0 else DIFFERS
        proof.note = "not stored (zeros)"
        return _finish(proof, s, rows * cols, True), y, sample_x
    block = encodings.block_size(encoding)
    rb = encodings.row_bytes(encoding, cols)
    step = max(1, CHUNK_BYTES // max(1, cols * 4))
    s = _Sums()
    same = True  # bit-identical (F32) / rounded to nearest even (F16, BF16) / blocks identical (block types)
    as_f16 = as_bf16 = encoding == "F32"  # an f32 file whose values are the release rounded
    via_f16 = encoding not in encodings.UNBLOCKED  # blocks: the quantizer's bytes for the release rounded to f16
    sample_y = np.empty(len(index))
    with open(data_paths[entry.shard_id], "rb") as f:
        f.seek(entry.offset)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            raw = np.fromfile(f, np.uint8, (r1 - r0) * rb)
            if raw.size != (r1 - r0) * rb:
                raise VerificationError(f"{Path(f.name).name}: {name} ends early (the file is truncated)")
            raw = raw.reshape(r1 - r0, rb)
            if encoding in encodings.UNBLOCKED:
                raw = raw.view(encodings.raw_dtype(encoding))
            xc = np.ascontiguousarray(xs[r0:r1], dtype=np.float32)
            y = np.asarray(encodings.decode(raw, encoding), np.float32).reshape(r1 - r0, cols)
            if encoding not in encodings.UNBLOCKED:
                same, via_f16 = _blocks_match(raw, xc, encoding, same, via_f16, prefer_f16, proof)
            elif same:
                if encoding == "F32":
                    same = np.array_equal(raw.view(np.uint32), xc.view(np.uint32))
                else:
                    same = np.array_equal(raw.view(np.uint16), rounded(xc, encoding).view(np.uint16))
            if as_f16:
                as_f16 = np.array_equal(y, xc.astype(np.float16).astype(np.float32))
            if as_bf16:
                as_bf16 = np.array_equal(y.view(np.uint32), to_bf16(xc).astype(np.uint32) << 16)
            _accumulate(s, xc, y, encoding, block, r0, xs.T[r0:r1] if square else None, same)
            lo, hi = np.searchsorted(index, [r0 * cols, r1 * cols])
            sample_y[lo:hi] = y.reshape(-1)[index[lo:hi] - r0 * cols]
    proof = _finish(proof, s, rows * cols, same)
    if proof.kind == WITHIN_BOUND and via_f16:
        proof.note = f"blocks identical to {proof.by} applied to the release rounded to f16"
    if encoding == "F32" and not same and (as_f16 or as_bf16):
        proof.kind, proof.looks_like = ROUNDED, ""
        proof.note = f"stored as f32, values the release rounded to {'f16' if as_f16 else 'bf16'}"
    return proof, sample_y, sample_x


def _blocks_match(raw: np.ndarray, x: np.ndarray, encoding: str, same: bool, via_f16: bool, prefer_f16: bool,
                  proof: TensorProof) -> tuple[bool, bool]:
    """(same, via_f16) after a chunk: whether every chunk so far is the quantizer's blocks of the release, and whether
    every one is its blocks of the release or of the release rounded to f16 (a file quantized from an F16 GGUF).
    Quantizing as little as it takes: the release first, or, where the last tensor was made from f16, f16 first
    (a chunk that matches it is taken as made from f16). Where x is f16-exact the two are the same blocks."""
    def matches(values: np.ndarray) -> bool:
        made = quantize(values, encoding)
        proof.by = made[1] if made is not None else "no quantizer for this type at hand"
        return made is not None and np.array_equal(raw, made[0].reshape(raw.shape))

    if not (same or via_f16):
        return False, False
    x16 = x.astype(np.float16).astype(np.float32)
    if np.array_equal(x16, x):
        found = matches(x)
        return same and found, via_f16 and found
    if prefer_f16 and via_f16:
        if matches(x16):
            return False, True
        return same and matches(x), False
    if same:
        if matches(x):
            return True, via_f16
        return False, via_f16 and matches(x16)
    return False, matches(x16)


def _accumulate(s: _Sums, x: np.ndarray, y: np.ndarray, encoding: str, block: int, r0: int,
                xt: np.ndarray | None, same: bool) -> None:
    """Add a chunk's figures (float64 dot products: a scale's residual of 1e-15 must not drown in rounding)."""
    x64 = x.astype(np.float64).ravel()
    xx = float(x64 @ x64)
    s.xx += xx
    if same and block == 1:  # y is x (or x rounded as proven): no difference to measure beyond the rounding
        if encoding == "F32":
            s.yy += xx
            s.xy += xx
            if xt is not None:
                t = x64 - xt.astype(np.float64).ravel()
                s.tt = (s.tt or 0.0) + float(t @ t)
            return
    y64 = y.astype(np.float64).ravel()
    d = y64 - x64
    s.dd += float(d @ d)
    s.yy += float(y64 @ y64)
    s.xy += float(x64 @ y64)
    if xt is not None:
        t = y64 - xt.astype(np.float64).ravel()
        s.tt = (s.tt or 0.0) + float(t @ t)
    s.max_abs = max(s.max_abs, float(np.abs(d).max(initial=0.0)))
    d = d.reshape(y.shape)
    if block > 1:
        err = np.abs(d).reshape(-1, block).max(axis=1)
        amax = np.abs(x64).reshape(-1, block).max(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(amax > 0, err / np.where(amax > 0, amax, 1), np.where(err > 0, np.inf, 0.0))
        s.ratio = max(s.ratio, float(ratio.max(initial=0.0)))
        limit = block_limit(encoding, amax)
        if limit is None:
            s.beyond += len(err)
            s.first_beyond = s.first_beyond or f"no error bound known for {encoding}"
        else:
            bad = ~(err <= limit)
            if bad.any() and not s.first_beyond:
                i = int(np.argmax(bad))
                per_row = x.shape[1] // block
                s.first_beyond = (f"block {i % per_row} of row {r0 + i // per_row} is off by {err[i]:.3g}, beyond "
                                  f"{encoding}'s bound {limit[i]:.3g}")
            s.beyond += int(bad.sum())


def _finish(proof: TensorProof, s: _Sums, n: int, same: bool) -> TensorProof:
    proof.max_abs = s.max_abs
    proof.nmse = s.dd / s.xx if s.xx > 0 else (0.0 if s.dd == 0 else math.inf)
    proof.rel_err = math.sqrt(proof.nmse)
    block = proof.encoding not in encodings.UNBLOCKED and proof.encoding != ZEROS
    proof.block_ratio = s.ratio if block else None
    if proof.kind == DIFFERS or proof.encoding == ZEROS:
        if proof.kind == DIFFERS:
            _recognise(proof, s)
        return proof
    if same:
        proof.kind = {"F32": IDENTICAL, "F16": ROUNDED, "BF16": ROUNDED}.get(proof.encoding, BLOCKS_IDENTICAL)
        return proof
    if block and s.beyond == 0 and proof.nmse <= noise_band(proof.encoding) and _gain_ok(s, proof.nmse, n):
        proof.kind = WITHIN_BOUND
        return proof
    proof.kind = DIFFERS
    if proof.encoding in ("F16", "BF16"):
        proof.note = f"not the release rounded to nearest even in {proof.encoding}" + \
            (" (within its rounding: rounded another way?)" if proof.nmse <= noise_band(proof.encoding) else "")
    if block:
        proof.note = s.first_beyond or (f"NMSE {proof.nmse:.2e} is beyond {proof.encoding}'s band "
                                        f"{noise_band(proof.encoding):.0e}" if proof.nmse > noise_band(proof.encoding)
                                        else f"gain {s.xy / s.xx:.5f}: not the statistics of rounding")
    _recognise(proof, s)
    return proof


def _gain_ok(s: _Sums, nmse: float, n: int) -> bool:
    """Whether <x, y> / <x, x> is what quantization makes: a slight shrink (at most the NMSE), no gain."""
    if s.xx == 0:
        return True
    gain = s.xy / s.xx - 1
    sigma = math.sqrt(nmse / n)
    return -(2 * nmse + GAIN_SIGMAS * sigma) <= gain <= GAIN_SIGMAS * sigma + 0.1 * nmse


def _recognise(proof: TensorProof, s: _Sums) -> None:
    """Name the pattern of a differing tensor where its figures show one: zeros, transposed, scaled."""
    band = max(noise_band(proof.encoding), 1e-12)
    if s.yy == 0 and s.xx > 0:
        proof.looks_like = "is all zeros"
    elif s.xx > 0 and s.tt is not None and s.tt / s.xx <= band:
        proof.looks_like = "looks like the release's tensor transposed"
    elif s.xx > 0 and s.xy > 0:
        scale = s.xy / s.xx
        residual = (s.yy - 2 * scale * s.xy + scale * scale * s.xx) / (scale * scale * s.xx)
        if residual <= band and abs(scale - 1) > 4 * math.sqrt(band):
            proof.looks_like = f"looks like the release's tensor scaled by {scale:.6g}"


def recognise_moves(proofs: list[TensorProof], samples: dict[str, tuple[np.ndarray, np.ndarray, tuple]]) -> list[str]:
    """Differing tensors that are another tensor of the release (same stored shape): each one's looks_like is set,
    and pairs stored under each other's names are returned as 'A and B look swapped'."""
    by_name = {p.name: p for p in proofs}
    moved: dict[str, str] = {}
    for p in proofs:
        if p.passed or p.looks_like or p.name not in samples:
            continue
        stored, _, shape = samples[p.name]
        band = max(noise_band(p.encoding), 1e-12)
        for other, (_, release, other_shape) in samples.items():
            if other == p.name or other_shape != shape:
                continue
            norm = float(np.sum(release * release))
            if norm > 0 and float(np.sum((stored - release) ** 2)) / norm <= band:
                moved[p.name] = other
                p.looks_like = f"looks like the release's {by_name[other].shown if other in by_name else other}"
                break
    swaps = []
    for a, b in moved.items():
        if moved.get(b) == a and a < b:
            swaps.append(f"{by_name[a].shown} and {by_name[b].shown} look swapped")
            by_name[a].looks_like = f"is swapped with {by_name[b].shown}"
            by_name[b].looks_like = f"is swapped with {by_name[a].shown}"
    return swaps


# --- metadata ------------------------------------------------------------------------------------

def check_metadata(ckpt, release_hp: HParams, release_vocab) -> list[MetaCheck]:
    """hparams, variant fields, vocabulary and merges, the head, and tensors set aside, extra or missing."""
    h: HParams = ckpt.hparams
    unknown = set(getattr(ckpt, "unknown", ()))
    checks = []
    diff = [f"{k} {getattr(h, k)} (release {getattr(release_hp, k)})" for k in HPARAM_KEYS
            if k not in unknown and getattr(h, k) != getattr(release_hp, k)]
    said = " ".join(f"{k}={getattr(h, k)}" for k in HPARAM_KEYS if k not in unknown)
    checks.append(MetaCheck("hparams", not diff, ("differ: " + ", ".join(diff)) if diff else
                            said + (f" from {ckpt.hparams_from}" if getattr(ckpt, "hparams_from", "") else "")))
    variant, wanted = h.variant(), release_hp.variant()
    vdiff = [f"{k} {variant.get(k, getattr(h, k))!r} (release {getattr(release_hp, k)!r})"
             for k in set(variant) | set(wanted) if k != "tied" and not _same_value(k, getattr(h, k), getattr(release_hp, k))]
    checks.append(MetaCheck("semantics", not vdiff, ("differ: " + ", ".join(sorted(vdiff))) if vdiff else
                            f"eps {h.eps:g}, {h.activation}, MLP width {h.n_ff}"))
    if h.tied:
        checks.append(MetaCheck("head", True, "tied to wte"))
    else:
        checks.append(MetaCheck("head", True, "untied: its own lm_head, proven against the release's wte"))
    vocab = getattr(ckpt, "vocab", None)
    checks.append(_vocab_check(vocab, release_vocab) if vocab is not None or not getattr(ckpt, "vocab_note", "")
                  else MetaCheck("vocabulary", True, ckpt.vocab_note))
    aside = list(getattr(ckpt, "ignored", []))
    masks = [n for n in aside if n.endswith(".attn.bias")]
    rest = [n for n in aside if n not in masks]
    if aside:
        checks.append(MetaCheck("set aside", True, (f"{len(masks)} attn.bias buffers (the causal mask, checked)"
                                                    + ("; " if rest else "") if masks else "") + ", ".join(rest[:6])))
    extra = list(getattr(ckpt, "extra", []))
    if extra:
        checks.append(MetaCheck("extra", False, f"{len(extra)} tensors that are no GPT-2 weight: {', '.join(extra[:4])}"))
    for problem in getattr(ckpt, "problems", []):
        checks.append(MetaCheck("tensors", False, problem))
    return checks


def _same_value(key: str, a, b) -> bool:
    """Equal, eps as the float32 every consumer computes with (ONNX and GGUF store it as one)."""
    return bool(np.float32(a) == np.float32(b)) if key == "eps" else a == b


def _vocab_check(vocab, release_vocab) -> MetaCheck:
    if vocab is None:
        return MetaCheck("vocabulary", True, "none in the file (not checked)")
    if release_vocab is None:
        return MetaCheck("vocabulary", True, "the release has none on disk (not checked)")
    base, want = list(vocab.tokens), list(release_vocab.tokens)  # GPT-2's tokens; a fine-tune's added ones apart
    added = list(getattr(vocab, "added", ()))
    if base != want:
        if len(base) != len(want):
            return MetaCheck("vocabulary", False, f"{len(base)} tokens, the release's {len(want)}")
        i = next(i for i, (a, b) in enumerate(zip(base, want)) if a != b)
        return MetaCheck("vocabulary", False, f"token {i} is {base[i][:30]!r}, the release's {want[i][:30]!r}")
    merges, want_m = list(vocab.merges), list(release_vocab.merges)
    if merges != want_m:
        if len(merges) != len(want_m):
            return MetaCheck("vocabulary", False, f"{len(merges)} merges, the release's {len(want_m)}")
        i = next(i for i, (a, b) in enumerate(zip(merges, want_m)) if a != b)
        return MetaCheck("vocabulary", False, f"merge {i} is {merges[i][:30]!r}, the release's {want_m[i][:30]!r}")
    more = ("; added tokens: " + ", ".join(f"{i} {c!r}" for i, c, *_ in added[:8])) if added else ""
    return MetaCheck("vocabulary", True, f"{len(want)} tokens and {len(want_m)} merges as the release's{more}")


# --- the whole file ------------------------------------------------------------------------------

def prove_file(ckpt, path: Path, source_kind: str, release_name: str, release_ckpt, release_hp: HParams,
               release_vocab, label: str | None = None) -> ForeignProof:
    """Every tensor of an open foreign checkpoint against an open release, then the metadata, then the verdict."""
    t0 = time.perf_counter()
    proof = ForeignProof(str(path), source_kind, release_name)
    proof.metadata = check_metadata(ckpt, release_hp, release_vocab)
    h: HParams = ckpt.hparams
    if any(getattr(h, k) != getattr(release_hp, k) for k in ("n_vocab", "n_ctx", "n_embd", "n_layer")) \
            or h.n_ff != release_hp.n_ff:
        proof.verdict_kind = "differs"
        proof.verdict = f"NOT {release_name}: the shapes differ ({_shape_words(h)}; {release_name}: {_shape_words(release_hp)})"
        proof.seconds = time.perf_counter() - t0
        return proof
    release_shapes = tensor_shapes(release_hp)
    samples: dict[str, tuple[np.ndarray, np.ndarray, tuple]] = {}
    native = {getattr(info, "offset", None): n for n, info in getattr(ckpt, "infos", {}).items()}
    prefer_f16 = False  # the last quantized tensor was the quantizer's blocks of f16(release): try that first
    order = sorted(ckpt.entries.items(), key=lambda kv: (kv[1].shard_id, kv[1].offset))
    for name, entry in order:
        rel = name if name in release_shapes else SCOPE + "wte" if name == SCOPE + HEAD_TENSOR else None
        if rel is None:
            proof.metadata.append(MetaCheck("extra", False, f"{name}: not a tensor of {release_name}"))
            continue
        x = _release_tensor(release_ckpt, rel)
        t, sample_y, sample_x = prove_tensor(name, entry, ckpt.data_paths, x, rel, prefer_f16)
        prefer_f16 = t.kind == WITHIN_BOUND and bool(t.note) or (prefer_f16 and t.encoding in encodings.UNBLOCKED)
        del x
        t.stored_name = native.get(entry.offset, "") if entry.encoding != ZEROS else ""
        proof.tensors.append(t)
        samples[name] = (sample_y, sample_x, stored_shape(entry.shape, getattr(entry, "transposed", False)))
    swaps = recognise_moves(proof.tensors, samples)
    proof.label = _label(proof.tensors)
    if label and proof.label not in ("f32", "f16", "bf16"):  # block types: the file's own name for its mix
        proof.label = label.upper()
    _verdict(proof, swaps)
    proof.seconds = time.perf_counter() - t0
    return proof


def _release_tensor(release_ckpt, name: str) -> np.ndarray:
    from .. import source_tensors

    return source_tensors.read(release_ckpt.data_paths, release_ckpt.entries[name])


def _shape_words(h: HParams) -> str:
    return f"n_layer {h.n_layer}, n_embd {h.n_embd}, n_ctx {h.n_ctx}, n_vocab {h.n_vocab}"


def _label(tensors: list[TensorProof]) -> str:
    """f32, f16, bf16, or the block types the matrices hold ("Q4_K/Q6_K")."""
    encs = sorted({t.encoding for t in tensors if t.encoding != ZEROS}, key=lambda e: (e in encodings.UNBLOCKED, e))
    blocks = [e for e in encs if e not in encodings.UNBLOCKED]
    if blocks:
        return "/".join(blocks)
    floats = [e for e in ("BF16", "F16") if e in encs]
    return floats[0].lower() if floats else "f32"


def _verdict(proof: ForeignProof, swaps: list[str]) -> None:
    name, n = proof.against, len(proof.tensors)
    bad = [t for t in proof.tensors if not t.passed]
    meta = [m for m in proof.metadata if not m.passed]
    if bad or meta or not n:
        parts = []
        if bad:
            parts.append(f"{len(bad)} of {n} tensors differ beyond any rounding" + _pattern(bad, swaps, n))
        parts += [f"{m.what} {m.detail}" for m in meta]
        if not n:
            parts.append("no tensor to prove")
        proof.verdict_kind, proof.verdict = "differs", f"NOT {name}: " + "; ".join(parts)
        return
    kinds = {t.kind for t in proof.tensors}
    blocks = [t for t in proof.tensors if t.encoding not in encodings.UNBLOCKED and t.encoding != ZEROS]
    if blocks:
        by = next((t.by for t in blocks if t.kind == BLOCKS_IDENTICAL), "llama.cpp's quantizer")
        if WITHIN_BOUND not in kinds:
            proof.verdict_kind = "quantized"
            proof.verdict = f"{name} quantized to {proof.label} by {by}: {n} tensors, blocks identical"
        else:
            within = [t for t in proof.tensors if t.kind == WITHIN_BOUND]
            types = "/".join(sorted({t.encoding for t in within}))
            worst = max(t.nmse for t in within)
            proof.verdict_kind = "within-bound"
            proof.verdict = (f"{name} quantized to {proof.label}: blocks within {types}'s bound (NMSE {_short(worst)}), "
                             f"not byte-identical to this llama.cpp")
        return
    if ROUNDED in kinds:
        proof.verdict_kind = "rounded"
        proof.verdict = f"{name} rounded to {proof.label if proof.label != 'f32' else _rounded_to(proof)}, exactly"
        return
    proof.verdict_kind, proof.verdict = "identical", f"identical to {name} (f32)"


def _short(x: float) -> str:
    """2.1e-3, not 2.1e-03."""
    return f"{x:.1e}".replace("e-0", "e-").replace("e+0", "e+")


def _rounded_to(proof: ForeignProof) -> str:
    note = next((t.note for t in proof.tensors if t.kind == ROUNDED and t.note), "")
    return "bf16" if note.endswith("bf16") else "f16"


def _pattern(bad: list[TensorProof], swaps: list[str], n: int) -> str:
    names = [t.shown for t in bad]
    if swaps:
        return f" ({'; '.join(swaps[:3])})"
    if len(bad) >= max(2, n // 2) and not all(t.looks_like for t in bad):
        return " (a different model of the same shape)"
    looks = [f"{t.shown} {t.looks_like}" for t in bad if t.looks_like]
    if looks:
        return f" ({'; '.join(looks[:3])}{'; ...' if len(looks) > 3 else ''})"
    return f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


# --- opening both sides ----------------------------------------------------------------------------

@dataclass
class _TfOpened:
    """A checkpoint in OpenAI's own layout, with what the source kinds' checkpoints carry besides."""

    entries: dict
    data_paths: list
    hparams: HParams
    vocab: object
    hparams_from: str = "hparams.json"
    ignored: list = field(default_factory=list)


def _open_tf(folder: Path) -> _TfOpened:
    from ..tfcheckpoint import Checkpoint
    from ..vocabulary import Vocab

    ckpt = Checkpoint(folder)
    hp = HParams.from_file(folder / "hparams.json")
    vocab = Vocab.from_folder(folder) if (folder / "encoder.json").is_file() else None
    return _TfOpened(ckpt.entries, ckpt.data_paths, hp, vocab)


def open_foreign(path: Path) -> tuple[str, object]:
    """(what kind of file, the file open as a source checkpoint): any source kind, or a single state dict file; or
    (a format's name, None) for an output of a format that only reads back against a release (`open_output`)."""
    from .. import converters, foreign_files, source_kinds

    kind = source_kinds.detect(path)
    try:
        if kind is not None:
            return kind.name, (kind.open(path, source_kinds.OpenOptions()) if kind.open else _open_tf(path))
        if foreign_files.is_state_dict_file(path):
            return "state dict file", foreign_files.StateDictFile(path)
    except ConversionError as e:
        raise VerificationError(f"cannot read it as GPT-2: {e}") from None
    fmt = converters.detect(path)
    if fmt is not None and fmt.read_stored is not None:
        return fmt.name, None
    raise VerificationError(f"{source_kinds.refuse(path, None, VerificationError)}, or one .safetensors or torch .bin "
                            "state dict with GPT-2's Hugging Face names")


def open_release(name: str):
    """(release, its checkpoint, hparams, vocabulary) of a release on disk, by name or path."""
    from .. import source_kinds, tfcheckpoint
    from ..release import locate

    release = locate(name, error=VerificationError)
    try:
        if release.kind == tfcheckpoint.KIND:
            opened = _open_tf(release.original)
        else:
            opened = source_kinds.get(release.kind).open(release.original, source_kinds.OpenOptions())
    except ConversionError as e:
        raise VerificationError(f"{release.name}: {e}") from None
    return release, opened, opened.hparams, opened.vocab


def open_output(path: Path, fmt_name: str, hp: HParams, vocab):
    """An output of a gpt2hub format read back against a release's hparams and vocabulary."""
    from .. import converters, foreign_files

    try:
        return foreign_files.OutputFile(path, converters.get(fmt_name), hp, vocab)
    except (ConversionError, OSError) as e:
        raise VerificationError(f"cannot read it as GPT-2: {e}") from None


def candidates(h: HParams) -> tuple[list[str], list[str]]:
    """(releases on disk, releases known but not pulled) whose shapes are the file's."""
    from .. import registry
    from ..release import pulled_names

    def fits(m) -> bool:
        return all(getattr(m.hparams, k) == getattr(h, k) for k in ("n_vocab", "n_ctx", "n_embd", "n_layer")) \
            and m.hparams.n_ff == h.n_ff

    matching = [m.name for m in registry.releases() if fits(m)]
    on_disk = set(pulled_names())
    return [n for n in matching if n in on_disk], [n for n in matching if n not in on_disk]


def verify_file(path: str | Path, against: str | None = None, *, logits: bool = True, device: str = "cpu") -> ForeignProof:
    """Prove a file or folder anyone wrote against a release on disk (`against`), or against each release on disk
    whose shapes it has; the proof that passes (else the first) is returned, the others named in its candidates.
    With `logits`, a file whose tensors pass is then run by its own consumer against the release's reference."""
    from .. import foreign_files

    path = Path(path).expanduser()
    if not path.exists():
        raise VerificationError(f"{path}: no such file or folder")
    kind, ckpt = open_foreign(path)
    try:
        names = [against] if against is not None else None
        if names is None and ckpt is None:  # read back only against a release: try each on disk
            from ..release import pulled_names

            names = pulled_names()
            if not names:
                raise VerificationError(f"{path}: no release on disk to prove it against; pull the release it was "
                                        "made from (gpt2hub pull NAME) or name one with --against")
        if names is None:
            on_disk, known = candidates(ckpt.hparams)
            if not on_disk:
                pull = f"the shapes are {known[0]}'s: gpt2hub pull {known[0]}" if known else \
                    f"no known release has its shapes ({_shape_words(ckpt.hparams)})"
                raise VerificationError(f"{path}: no release on disk to prove it against; {pull}")
            names = on_disk
        proofs = []
        for name in names:
            release, opened, hp, vocab = open_release(name)
            if ckpt is None or isinstance(ckpt, foreign_files.OutputFile):
                ckpt = open_output(path, kind, hp, vocab)
            p = prove_file(ckpt, path, kind, release.name, opened, hp, vocab, _format_dtype(path))
            if logits and p.passed:
                p.logits = check_logits(path, ckpt, opened, hp, device)
                if not p.logits.passed:
                    p.verdict_kind = "differs"
                    said = p.logits.note or (f"max |delta| {p.logits.held_max_abs:.1e} from the reference on its "
                                             f"own weights, beyond {p.logits.bound:.1e}")
                    p.verdict = f"NOT {release.name} as {p.logits.consumer} runs it: {said}"
            proofs.append(p)
            if p.passed:
                break
        best = next((p for p in proofs if p.passed), proofs[0])
        best.candidates = [p.against for p in proofs]
        return best
    finally:
        close = getattr(ckpt, "close", None) if ckpt is not None else None
        if close:
            close()


def _format_dtype(path: Path) -> str | None:
    """The dtype the file's own format says it holds (a GGUF's general.file_type: "q4_k_m"), or None."""
    from .. import converters

    fmt = converters.detect(path)
    try:
        return fmt.read_dtype(path) if fmt is not None else None
    except (ConversionError, OSError, ValueError):
        return None


def is_foreign(target: str | Path) -> bool:
    """Whether `verify TARGET` names a file or folder to prove against a release, rather than a release itself
    (a name, a TF checkpoint folder, or a release root holding original/)."""
    from .. import converters, foreign_files, source_kinds, tfcheckpoint

    path = Path(target).expanduser()
    if not path.exists() or (path.is_dir() and (path / "original").is_dir()):
        return False
    kind = source_kinds.detect(path)
    if kind is not None:
        return kind.name != tfcheckpoint.KIND
    fmt = converters.detect(path)
    return foreign_files.is_state_dict_file(path) or (fmt is not None and fmt.read_stored is not None)


# --- logits through the file's own consumer (after the tensor proofs) --------------------------------

LOGIT_TOKENS = 32  # seeded random token ids: no tokenizer needed, the same ids in every vocabulary of the shape
# llama.cpp's examples/model-conversion/check-nmse.py: NMSE = mean((test - ref)^2) / var(ref), passing below 1e-2
NMSE_BANDS_LLAMA = ((1e-6, "essentially identical"), (1e-4, "typical of a good conversion"), (1e-3, "very good"),
                    (1e-2, "passes check-nmse.py"), (1e-1, "acceptable"))
NMSE_PASS = 1e-2


@dataclass
class LogitsCheck:
    """The file run by the program people load it with, against the release's float64 reference."""

    consumer: str
    dtype: str = ""
    ran: bool = False
    passed: bool = True
    nmse: float | None = None
    band: str = ""
    kl: float | None = None
    top1: float | None = None
    top5: float | None = None  # mean overlap of the two top-5 sets
    max_abs: float | None = None
    bound: float | None = None  # 8x the noise of the consumer's arithmetic on the weights the file holds
    held_max_abs: float | None = None  # max |delta| from the float64 reference on those weights (judged by `bound`)
    note: str = ""

    def text(self) -> str:
        if not self.ran:
            return f"  logits       -    {self.consumer}: {self.note}"
        if self.nmse is None:
            return f"  logits       FAIL {self.consumer} ({self.dtype}): {self.note}"
        said = f"{self.consumer} ({self.dtype})"
        if self.held_max_abs is not None:
            said += (f": max |delta| {self.held_max_abs:.2e} from the reference on the weights it holds (bound "
                     f"{self.bound:.1e}, 8x its arithmetic's noise)")
        said += (f"; against the release: NMSE {self.nmse:.2e} ({self.band}), KL {self.kl:.2e}, top-1 "
                 f"{self.top1:.0%}, top-5 {self.top5:.0%}")
        return f"  logits       {'ok  ' if self.passed else 'FAIL'} {said}" + (f"; {self.note}" if self.note else "")


def logit_figures(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """NMSE (llama.cpp's definition), KL(reference || logits), top-1 and top-5 agreement, max |delta|."""
    from .tolerances import compare

    m = compare(reference, logits)
    logits = logits.astype(np.float64)
    var = float(np.var(reference))
    nmse = float(np.mean((logits - reference) ** 2)) / var if var > 0 else math.inf
    top5 = [len(set(np.argsort(-r)[:5]) & set(np.argsort(-g)[:5])) / 5 for r, g in zip(reference, logits)]
    return {"nmse": nmse, "kl": m["kl"], "top1": m["top1"], "top5": float(np.mean(top5)), "max_abs": m["max_abs"]}


def check_logits(path: Path, ckpt, release_ckpt, release_hp: HParams, device: str = "cpu") -> LogitsCheck:
    """The file's logits through its consumer (transformers, llama.cpp, onnxruntime: in a child process). Judged
    as `verify` judges an output: against the float64 reference on the weights the file holds (its tensors, decoded:
    proven above to be the release's, rounded or quantized), within 8x the noise of the consumer's arithmetic on
    this model. Then compared with the release's own float64 reference: NMSE (llama.cpp's bands), KL, top-1/top-5."""
    from .. import converters, source_tensors
    from .consumers import consumer_run, installed
    from .references import F64, forward_lanes
    from .tolerances import arithmetic_of, bound
    from .weights import LayerCache

    fmt = converters.detect(path)
    if fmt is None:
        return LogitsCheck("-", note="no program loads this file alone (not run)")
    if not installed(fmt.consumer):
        return LogitsCheck(fmt.consumer, note=f"{fmt.consumer} is not installed (not run)")
    dtype = fmt.read_dtype(path)
    check = LogitsCheck(fmt.consumer, dtype)
    ids = np.random.default_rng(0).integers(0, release_hp.n_vocab, min(LOGIT_TOKENS, release_hp.n_ctx)).tolist()
    _, run = consumer_run(fmt.name, fmt.consumer, path, dtype, ids, device)
    try:
        logits = run()
    except Exception as e:  # what a consumer raises on a file it cannot load is this check's FAIL
        from ..errors import one_line

        check.ran, check.passed, check.note = True, False, one_line(e)
        return check

    def held(name: str) -> np.ndarray:
        return source_tensors.read(ckpt.data_paths, ckpt.entries[name])

    arithmetic = arithmetic_of(fmt.consumer, dtype)
    lane = [F64] + ([arithmetic] if arithmetic is not None and arithmetic.dtype != np.float64 else [])
    (release_ref,), held_runs = forward_lanes([(LayerCache(release_ckpt), [F64]), (held, lane, ckpt.hparams)],
                                              release_hp, ids)
    figures = logit_figures(release_ref, logits)
    check.ran = True
    check.nmse, check.kl, check.top1, check.top5, check.max_abs = (figures[k] for k in ("nmse", "kl", "top1", "top5", "max_abs"))
    check.band = next((words for limit, words in NMSE_BANDS_LLAMA if check.nmse < limit), "beyond check-nmse.py's bands")
    scale = max(1.0, float(np.abs(held_runs[0]).max()))
    if arithmetic is None:
        check.passed, check.note = False, f"no arithmetic known for {fmt.consumer} on {dtype}"
        return check
    noise = float(np.abs(held_runs[-1] - held_runs[0]).max())
    check.bound = bound(arithmetic, noise, noise, scale)[0]
    check.held_max_abs = float(np.abs(logits.astype(np.float64) - held_runs[0]).max())
    check.passed = check.held_max_abs <= check.bound
    return check
