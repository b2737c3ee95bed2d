"""The reference: openai/gpt-2 src/model.py in numpy, streamed layer by layer from the checkpoint.

Weights come one layer at a time from a `WeightFn` (the checkpoint read with read(2), or the weights an
output holds, decoded), so the float64 forward never holds more than one layer in float64 and memory is
the same at 124M and 1558M. The same pass can run in other arithmetics (`Arithmetic`): float32, or float32
with activations rounded where a consumer rounds them (transformers in f16/bf16, ggml's matmul inputs and
GELU table); the spread of those runs from float64 is the noise measured on this model that tolerances
are scaled by. Every variant field of the model's HParams is followed (eps, the exact erf GELU, an n_inner-wide
MLP, an untied head model/lm_head, layer i's attention scores divided by i + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..layout import BLOCK_TENSORS, GELU_EXACT, HEAD_TENSOR, SCOPE, HParams

WeightFn = Callable[[str], np.ndarray]  # TF variable name -> float32 array in the checkpoint layout (squeezed)
HEAD_ROWS = 4096  # rows of wte per step of the output head


@dataclass(frozen=True)
class Arithmetic:
    """How a forward pass rounds: its float type, and where it narrows activations further."""

    name: str
    dtype: type = np.float32
    activations: str | None = None  # every activation stored in this type (transformers in f16/bf16)
    matmul_inputs: str | None = None  # the activation operand of weight matmuls (ggml's vec_dot_type)
    gelu: str | None = None  # GELU through a table indexed and valued in this type (ggml's GELU_FP16)

    @property
    def unit_roundoff(self) -> float:
        return 2.0 ** -53 if self.dtype == np.float64 else 2.0 ** -24


F64 = Arithmetic("f64", np.float64)
F32 = Arithmetic("f32")


def round_to(x: np.ndarray, kind: str | None) -> np.ndarray:
    """x rounded to f16, bf16 or Q8_0 blocks of 32 (as ggml quantizes activations), kept in x's dtype."""
    if kind is None:
        return x
    if kind == "f16":
        return x.astype(np.float16).astype(x.dtype)
    if kind == "bf16":
        u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        return u.astype(np.uint32).view(np.float32).astype(x.dtype)
    if kind == "q8_0":
        if x.shape[-1] % 32:
            return x
        b = x.reshape(-1, 32)
        d = np.abs(b).max(axis=1, keepdims=True) / 127
        q = np.round(b / np.where(d == 0, 1, d))
        return (d.astype(np.float16).astype(x.dtype) * q).reshape(x.shape)
    raise ValueError(f"unknown rounding {kind!r}")


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    u = x.mean(axis=-1, keepdims=True)
    d = x - u
    s = (d * d).mean(axis=-1, keepdims=True)
    return d / np.sqrt(s + x.dtype.type(eps)) * g + b


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in x's own precision (numpy has none; torch's is the C library's, correctly rounded to a few ulp)."""
    import torch

    return torch.special.erf(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _gelu(x: np.ndarray, table: str | None, exact: bool = False) -> np.ndarray:
    """openai gelu (tanh), or the exact erf form; through a table as ggml computes it: f16 in, f16 out, |x| >= 10
    passed or zeroed."""
    xr = round_to(x, table)
    if exact:
        y = 0.5 * xr * (1 + _erf(xr * xr.dtype.type(1 / math.sqrt(2))))
    else:
        y = 0.5 * xr * (1 + np.tanh(math.sqrt(2 / math.pi) * (xr + 0.044715 * xr * xr * xr)))
    if table is None:
        return y
    return np.where(x >= 10, x, np.where(x <= -10, 0, round_to(y, table))).astype(x.dtype)


def _block(x: np.ndarray, w: dict[str, np.ndarray], h: HParams, layer: int, a: Arithmetic) -> np.ndarray:
    def c(k: str) -> np.ndarray:
        return w[k].astype(a.dtype, copy=False)

    def act(y: np.ndarray) -> np.ndarray:
        return round_to(y, a.activations)

    def conv1d(y: np.ndarray, scope: str) -> np.ndarray:  # openai conv1d: y @ w + b, w (in, out)
        return act(round_to(y, a.matmul_inputs) @ c(scope + "/w") + c(scope + "/b"))

    T, C = x.shape
    n_head, hd = h.n_head, C // h.n_head
    scale = 1 / math.sqrt(hd) / (layer + 1 if h.attn_scale_by_layer else 1)
    qkv = conv1d(act(_layer_norm(x, c("ln_1/g"), c("ln_1/b"), h.eps)), "attn/c_attn")  # (T, 3C)
    q, k, v = (t.reshape(T, n_head, hd).transpose(1, 0, 2) for t in np.split(qkv, 3, axis=1))  # (nh, T, hs)
    att = act(q @ k.transpose(0, 2, 1) * scale)  # (nh, T, T)
    att = np.where(np.tri(T, dtype=bool), att, -np.inf)  # causal: query i sees keys j <= i
    att = np.exp(att - att.max(axis=-1, keepdims=True))
    att = act(att / att.sum(axis=-1, keepdims=True))
    y = act(att @ v).transpose(1, 0, 2).reshape(T, C)  # heads merged: (T, C)
    x = act(x + conv1d(y, "attn/c_proj"))
    u = conv1d(act(_layer_norm(x, c("ln_2/g"), c("ln_2/b"), h.eps)), "mlp/c_fc")  # (T, n_ff)
    u = act(_gelu(u, a.gelu, h.activation == GELU_EXACT))
    return act(x + conv1d(u, "mlp/c_proj"))


def forward(weights: WeightFn, h: HParams, tokens: Sequence[int], arithmetics: Sequence[Arithmetic] = (F64,)) -> list[np.ndarray]:
    """Logits (T, n_vocab) in each arithmetic, from one pass over the weights (each layer read once)."""
    return forward_lanes([(weights, arithmetics)], h, tokens)[0]


def forward_lanes(lanes: Sequence[tuple[WeightFn, Sequence[Arithmetic]] | tuple[WeightFn, Sequence[Arithmetic], HParams]],
                  h: HParams, tokens: Sequence[int]) -> list[list[np.ndarray]]:
    """forward() for several sets of weights in one pass over the layers, so weights derived from the same
    source layer (the checkpoint, its f16 rounding, ...) are read from disk once for all of them. A lane may
    name the model it computes (a third item: an output that approximates a field computes another model
    than `h`); the shapes are h's in every lane."""
    ids = np.asarray(tokens)
    models = [lane[2] if len(lane) > 2 else h for lane in lanes]
    lanes = [(lane[0], lane[1]) for lane in lanes]
    heads = []  # a tied head is wte, kept from the first read (each tensor is read once)
    xs: list[list[np.ndarray]] = []
    for (weights, arithmetics), model in zip(lanes, models):
        wte, wpe = weights(SCOPE + "wte"), weights(SCOPE + "wpe")
        heads.append(wte if model.tied else None)
        xs.append([round_to(wte[ids].astype(a.dtype) + wpe[: len(ids)].astype(a.dtype), a.activations) for a in arithmetics])
        del wte, wpe
    for i in range(h.n_layer):
        for lane, (weights, arithmetics) in enumerate(lanes):
            w = {k: weights(f"{SCOPE}h{i}/{k}") for k in BLOCK_TENSORS}
            xs[lane] = [_block(x, w, models[lane], i, a) for x, a in zip(xs[lane], arithmetics)]
            del w
    out = []
    for (weights, arithmetics), model, head, lane_xs in zip(lanes, models, heads, xs):
        g, b = weights(SCOPE + "ln_f/g"), weights(SCOPE + "ln_f/b")
        head = weights(SCOPE + HEAD_TENSOR) if head is None else head  # (V, C)
        logits_per = []
        for x, a in zip(lane_xs, arithmetics):
            x = _layer_norm(x, g.astype(a.dtype), b.astype(a.dtype), model.eps)
            x = round_to(round_to(x, a.activations), a.matmul_inputs)
            logits = np.empty((len(ids), h.n_vocab), a.dtype)
            for r in range(0, h.n_vocab, HEAD_ROWS):  # x @ head^T, the head cast a slice at a time
                logits[:, r:r + HEAD_ROWS] = x @ head[r:r + HEAD_ROWS].astype(a.dtype).T
            logits_per.append(round_to(logits, a.activations))
        out.append(logits_per)
    return out
