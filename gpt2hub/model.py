"""A reference GPT-2 in PyTorch with the semantics of openai/gpt-2 src/model.py, and its loaders.

tanh GELU; LayerNorm with biased variance and eps 1e-5; attention scaled by 1/sqrt(head_dim) under a
causal mask counted from the lower-right corner (a query sees the whole cache); tied output head; a
KV cache (`past`). A GPT-2-family model's variant fields (gpt2hub.layout.HParams) are followed: exact
(erf) GELU, an MLP n_inner wide, another eps, an untied head (`lm_head`), and layer i's attention
scores further divided by i + 1 (HF's scale_attn_by_inverse_layer_idx). Weights keep the checkpoints' Conv1D (in, out) layout and HF's GPT2Model names,
so the TF checkpoint and HF files load without transposes; only GGUF stores them (out, in).
Read top to bottom: LayerNorm -> Conv1D -> Embedding -> Attention -> MLP -> Block -> GPT -> loaders.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CheckpointError, ConversionError, Gpt2hubError
from .layout import GELU_EXACT, GELU_TANH, HParams, check_shapes

# gpt2hub.layout's activations, and HF configs' `activation_function` names -> F.gelu's `approximate`.
# GPT-2 is gelu_tanh ("gelu_new"); gelu_exact ("gelu") is the erf form.
ACTIVATIONS = {GELU_TANH: "tanh", GELU_EXACT: "none",
               "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none", "gelu_python": "none"}

# Names and layouts are the converters' (gpt2hub.converters.hf is the reference: parameters are named as
# in HF's GPT2Model); other formats read themselves back into those names (Format.read_weights).


@dataclass(frozen=True)
class GPTConfig:
    """hparams.json's five numbers and the variant fields of gpt2hub.layout.HParams, as a format declares them
    (the activation by gpt2hub's or HF's name)."""

    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    eps: float = 1e-5
    activation: str = GELU_TANH
    n_inner: int | None = None
    tied: bool = True
    attn_scale_by_layer: bool = False

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConversionError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        self.hparams()  # every field checked (and bounded) as HParams checks a manifest's

    @classmethod
    def from_hparams(cls, h: HParams) -> "GPTConfig":
        return cls(h.n_vocab, h.n_ctx, h.n_embd, h.n_head, h.n_layer, h.eps, h.activation, h.n_inner, h.tied,
                   h.attn_scale_by_layer)

    def hparams(self) -> HParams:
        """The model as gpt2hub.layout describes it."""
        activation = GELU_TANH if ACTIVATIONS[self.activation] == "tanh" else GELU_EXACT
        return HParams(self.n_vocab, self.n_ctx, self.n_embd, self.n_head, self.n_layer, self.n_inner, self.eps,
                       activation, self.tied, self.attn_scale_by_layer)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_ff(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd


# --- the model ------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """openai `norm`: (x - mean) * rsqrt(biased variance + eps) * g + b over the last axis."""

    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class Conv1D(nn.Module):
    """openai `conv1d`: x @ w + b with w stored (in, out)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight)  # (B*T, out)
        return y.view(*x.shape[:-1], -1)


class Embedding(nn.Module):
    """A lookup table, created empty: its rows always come from a checkpoint.

    nn.Embedding would fill it with torch.nn.init.normal_ first, wasted work that on the meta device
    imports torch._dynamo and triton, which crashes (SIGSEGV) in a process that ran TensorFlow.
    """

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, dim))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight)


def causal_mask(t: int, s: int, device: torch.device) -> torch.Tensor:
    """openai `attention_mask(nd=t, ns=s)`: query i sees key j iff j <= i + (s - t)."""
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)  # (T, Tp+T)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.n_head = cfg.n_head
        # softmax(q k^T / sqrt(hs)); HF's scale_attn_by_inverse_layer_idx also divides layer i's scores by i + 1
        self.scale = 1 / math.sqrt(cfg.head_dim) / (layer + 1 if cfg.attn_scale_by_layer else 1)
        self.c_attn = Conv1D(cfg.n_embd, 3 * cfg.n_embd)  # q | k | v, contiguous thirds
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)  # (B, nh, Tp+T, hs)
            v = torch.cat((past[1], v), dim=2)  # (B, nh, Tp+T, hs)
        # softmax(q k^T / sqrt(hs), masked) v. A masked score of -inf (SDPA) or openai's -1e10 both
        # become exactly 0 after exp, so the result is the same.
        if T == 1:
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # one query sees every key
        elif past is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, k.size(2), x.device), scale=self.scale)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads merged
        return self.c_proj(y), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = Conv1D(cfg.n_embd, cfg.n_ff)
        self.c_proj = Conv1D(cfg.n_ff, cfg.n_embd)
        self.approximate = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # approximate="tanh" is 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), openai's gelu; "none" the erf form
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))  # (B, T, n_ff) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.eps)
        self.attn = Attention(cfg, layer)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, past=None):
        a, present = self.attn(self.ln_1(x), past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


Past = list[tuple[torch.Tensor, torch.Tensor]]
"""The KV cache: per layer (k, v), each (B, nh, T, hs). openai stacks it as [B, L, 2, nh, T, hs]."""


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = Embedding(cfg.n_vocab, cfg.n_embd)
        self.wpe = Embedding(cfg.n_ctx, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = LayerNorm(cfg.n_embd, cfg.eps)
        self.lm_head = None if cfg.tied else Embedding(cfg.n_vocab, cfg.n_embd)  # an untied head: (V, C)

    def forward(self, idx: torch.Tensor, past: Past | None = None, last_only: bool = False) -> tuple[torch.Tensor, Past]:
        """Logits (B, T, n_vocab) (or (B, 1, n_vocab) with last_only) and the extended cache."""
        B, T = idx.shape
        start = 0 if past is None else past[0][0].size(2)
        if start + T > self.config.n_ctx:
            raise Gpt2hubError(f"{start + T} positions exceed the model's context of {self.config.n_ctx}")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        presents: Past = []
        for i, block in enumerate(self.h):
            x, present = block(x, None if past is None else past[i])
            presents.append(present)
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        head = self.wte if self.lm_head is None else self.lm_head
        return F.linear(x, head.weight), presents  # (B, T, n_vocab)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.weight.dtype


# --- devices ----------------------------------------------------------------------------------


def resolve_device(name: str | torch.device = "cpu") -> torch.device:
    """A torch device by name, or a one-line error when it is not there."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise Gpt2hubError(f"--device {name}: not a device name (use cpu or cuda)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise Gpt2hubError(f"--device {name}: PyTorch {torch.__version__} here has no CUDA device; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise Gpt2hubError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        # Exact fp32 matmuls: TF32 would put ~1e-3 errors into every logit.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    elif device.type != "cpu":
        raise Gpt2hubError(f"--device {name}: only cpu and cuda are supported")
    return device


# --- loaders ----------------------------------------------------------------------------------


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    # Read-only memory maps: torch warns that writes would fail. We never write to them.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def from_tensors(cfg: GPTConfig, tensors: Mapping[str, torch.Tensor], source: str,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GPT:
    """A GPT whose parameters are `tensors` (GPT2Model names, Conv1D layout), moved to device/dtype.

    fp32 CPU tensors are used as they are (no copy: a memory-mapped checkpoint stays mapped).
    """
    with torch.device("meta"):
        model = GPT(cfg)
    expected = {n: p.shape for n, p in model.named_parameters()}
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise ConversionError(f"{source}: {len(missing)} tensors missing, e.g. {missing[0]}")
    extra = sorted(n for n in tensors if n not in expected)
    if extra:
        raise ConversionError(f"{source}: {len(extra)} unexpected tensors, e.g. {extra[0]}")
    state = {}
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise ConversionError(f"{source}: {name} has shape {list(t.shape)}, config implies {list(shape)}")
        state[name] = t.to(device=device, dtype=dtype)
    model.load_state_dict(state, assign=True)
    return model.eval().requires_grad_(False)


def tf_names(n_layer: int, tied: bool = True) -> dict[str, str]:
    """TF variable name -> parameter name: model/h3/attn/c_attn/w -> h.3.attn.c_attn.weight (model/lm_head ->
    lm_head.weight for an untied head)."""
    from gpt2hub.converters import hf

    return hf.reference_names(n_layer, tied)


def from_checkpoint(folder: Path | str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GPT:
    """The model straight from OpenAI's TF checkpoint folder (hparams.json + model.ckpt.*), zero-copy."""
    from .tfcheckpoint import Checkpoint

    folder = Path(folder)
    h = HParams.from_file(folder / "hparams.json")
    ckpt = Checkpoint(folder)
    try:
        check_shapes(h, ckpt.shapes(), str(ckpt.index_path))
    except ConversionError as e:
        raise CheckpointError(str(e)) from None
    cfg = GPTConfig.from_hparams(h)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in GPT(cfg).named_parameters()}
    tensors = {param: _from_numpy(ckpt.tensor(tf)).view(shapes[param])  # [1, in, out] -> (in, out)
               for tf, param in tf_names(h.n_layer, h.tied).items()}
    return from_tensors(cfg, tensors, str(folder), device, dtype)


def from_source(path: Path | str, kind: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                options=None) -> GPT:
    """The model from a checkpoint of any source kind (gpt2hub.source_kinds: an HF folder, ...) as convert reads
    it: every field of its hparams followed, each tensor decoded to float32 in OpenAI's layout (`options`:
    source_kinds.OpenOptions, e.g. where GPT-2's vocabulary is for a source that carries none)."""
    from . import source_kinds, source_tensors

    path = Path(path)
    opener = source_kinds.get(kind).open
    if opener is None:  # OpenAI's layout
        return from_checkpoint(path, device, dtype)
    ckpt = opener(path, options or source_kinds.OpenOptions())
    try:
        h = ckpt.hparams
        tensors = {param: torch.from_numpy(source_tensors.read(ckpt.data_paths, ckpt.entries[tf]))
                   for tf, param in tf_names(h.n_layer, h.tied).items()}
    finally:
        ckpt.close()
    return from_tensors(GPTConfig.from_hparams(h), tensors, str(path), device, dtype)


def load(path: Path | str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GPT:
    """The model from any format gpt2hub reads: a TF checkpoint folder or any output of a registered format."""
    from gpt2hub import converters

    path = Path(path)
    if (path / "model.ckpt.index").is_file():
        return from_checkpoint(path, device, dtype)
    fmt = converters.detect(path)
    if fmt is None:
        from . import source_kinds

        kind = source_kinds.detect(path)
        if kind is not None:  # a checkpoint no format writes (a nanoGPT ckpt.pt, ...), read as convert reads it
            return from_source(path, kind.name, device, dtype)
        kinds = list(dict.fromkeys(["a TF checkpoint folder", *(f.looks_like for f in converters.formats())]))
        raise ConversionError(f"{path}: not {', '.join(kinds[:-1])} or {kinds[-1]}")
    weights = fmt.read_weights(path)
    tensors = {n: t if isinstance(t, torch.Tensor) else _from_numpy(np.asarray(t)) for n, t in weights.tensors.items()}
    return from_tensors(GPTConfig(**weights.config), tensors, str(path), device, dtype)
