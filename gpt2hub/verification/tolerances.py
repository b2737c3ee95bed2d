"""Judging logits: how far a consumer may be from the float64 reference, from the arithmetic it uses.

No fixed table of numbers: each consumer is mapped to the arithmetic it computes in (its float type and
where it narrows activations), the reference is run in that arithmetic on the same weights, and its
spread from float64 is the noise that arithmetic makes on this model. A consumer passes when its own
spread is within SAFETY times that noise. Float rounding grows with depth, width and activation size,
so the bound grows with it, and stays tight where the model is tame.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConversionError
from ..layout import HParams
from .references import F32, F64, Arithmetic
from .report import Row

SAFETY = 8  # another implementation of the same arithmetic rounds in other places: allow 8x the measured noise
FLOOR_ULPS = 256  # float64 rows: their noise cannot be measured against float64, so 256 ulps of the largest logit

GELU_F16 = "f16"  # ggml computes GELU through a table of f16 values (GGML_GELU_FP16)

# (consumer, dtype of the weights) -> the arithmetic it computes in. "gpt2hub" dequantizes any format to float32.
ARITHMETIC: dict[tuple[str, str], Arithmetic] = {
    ("tensorflow", "f64"): F64,
    ("tensorflow", "f32"): F32,
    ("transformers", "f32"): F32,
    ("onnxruntime", "f32"): F32,
    ("onnxruntime", "f16"): F32,  # the f16 graph casts its weights up and computes in float32
    ("transformers", "f16"): Arithmetic("f16 activations", activations="f16"),
    ("transformers", "bf16"): Arithmetic("bf16 activations", activations="bf16"),
    ("llama.cpp", "f32"): Arithmetic("f32, GELU table f16", gelu=GELU_F16),
    ("llama.cpp", "f16"): Arithmetic("f16 matmul inputs", matmul_inputs="f16", gelu=GELU_F16),
    ("llama.cpp", "bf16"): Arithmetic("bf16 matmul inputs", matmul_inputs="bf16", gelu=GELU_F16),
    ("llama.cpp", "q8_0"): Arithmetic("q8_0 matmul inputs", matmul_inputs="q8_0", gelu=GELU_F16),
}


def arithmetic_of(consumer: str, dtype: str) -> Arithmetic | None:
    """The arithmetic a consumer computes in on weights of `dtype`; None if unknown (the row FAILs)."""
    if consumer.startswith("gpt2hub"):
        return F32
    if consumer == "llama.cpp" and (consumer, dtype) not in ARITHMETIC:  # the ladder below q8_0: 8-bit matmul inputs
        return ARITHMETIC[(consumer, "q8_0")]
    return ARITHMETIC.get((consumer, dtype))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """max and mean |delta|, top-1 agreement and mean KL(reference || logits) over positions."""
    if logits.shape != reference.shape:
        raise ConversionError(f"logits have shape {list(logits.shape)}, the reference {list(reference.shape)}")
    logits = logits.astype(np.float64)
    delta = np.abs(logits - reference)
    lp, lq = _log_softmax(reference), _log_softmax(logits)
    kl = float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))
    top1 = float(np.mean(reference.argmax(-1) == logits.argmax(-1)))
    if not np.all(np.isfinite(logits)):
        return {"max_abs": float("inf"), "mean_abs": float("inf"), "top1": top1, "kl": float("inf")}
    return {"max_abs": float(delta.max()), "mean_abs": float(delta.mean()), "top1": top1, "kl": max(kl, 0.0)}


def bound(arithmetic: Arithmetic, noise: float, noise_f32: float, scale: float) -> tuple[float, str]:
    """(max |delta| allowed, how it was derived) for a consumer in `arithmetic` on this model."""
    if arithmetic.dtype == np.float64:
        b = max(FLOOR_ULPS * arithmetic.unit_roundoff * scale, SAFETY * noise_f32 * 2.0 ** -29)
        return b, f"max<={b:.1e} ({FLOOR_ULPS} ulp)"
    return SAFETY * noise, f"max<={SAFETY * noise:.1e} ({SAFETY}x noise)"


def judge(row: Row, reference: np.ndarray, logits: np.ndarray, noise: dict[str, float]) -> Row:
    """Fill a row's metrics and verdict; `noise` maps arithmetic names to the reference's measured spread."""
    m = compare(reference, logits)
    row.max_abs, row.mean_abs, row.top1, row.kl = m["max_abs"], m["mean_abs"], m["top1"], m["kl"]
    arithmetic = arithmetic_of(row.consumer.split(" (")[0], row.dtype)
    if arithmetic is None or (arithmetic.dtype != np.float64 and arithmetic.name not in noise):
        row.tolerance, row.passed = "none known", False
        row.note = (row.note + "; " if row.note else "") + f"no arithmetic known for {row.consumer} on {row.dtype}"
        return row
    row.noise = noise.get(arithmetic.name, 0.0)
    row.bound, row.tolerance = bound(arithmetic, row.noise, noise.get(F32.name, 0.0), max(1.0, float(np.abs(reference).max())))
    row.passed = m["max_abs"] <= row.bound
    return row


def approximate(row: Row, exact: np.ndarray | None, logits: np.ndarray, release: HParams, computes: HParams,
                reference: np.ndarray | None = None) -> Row:
    """Label a row whose output computes another model than the release's (--allow-approximate-activation): it was
    judged against that model's float64 `reference`; the note adds the measured gap of its logits to the release's
    exact model, and the part of it the approximation alone makes (the two float64 references apart)."""
    row.approximate = True
    fields = ", ".join(f"{k} {getattr(release, k)} as {getattr(computes, k)}" for k in release.variant()
                       if getattr(release, k) != getattr(computes, k))
    said = f"approximate: {fields}"
    if exact is not None:
        gap = compare(exact, logits)
        row.gap_max_abs, row.gap_top1 = gap["max_abs"], gap["top1"]
        said += f"; gap to the exact model max|Δ| {gap['max_abs']:.2e}, top-1 {gap['top1']:.3f}, KL {gap['kl']:.2e}"
        if reference is not None:
            said += f" (the approximation alone: max|Δ| {float(np.abs(reference - exact).max()):.2e})"
    row.note = f"{row.note}; {said}" if row.note else said
    return row
