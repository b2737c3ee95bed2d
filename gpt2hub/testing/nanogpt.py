"""nanoGPT checkpoints written as karpathy/nanoGPT's train.py writes them, for the tests and benchmarks of the
nanoGPT source.

The model follows nanoGPT's model.py layout (facts: ../shared/research/sources.md §2), written here from those facts:
LayerNorm with an optional bias, CausalSelfAttention (c_attn, c_proj nn.Linear), MLP (c_fc, nn.GELU() — the exact
erf form —, c_proj), Block, GPT with lm_head tied to wte. `write_ckpt` trains it one AdamW step and torch.saves
train.py's dict (model, optimizer, model_args, iter_num, best_val_loss, config), torch.compile's `_orig_mod.`
prefix included on request. `forward64` is the float64 forward of the same module, the tests' reference.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    """nanoGPT's GPTConfig (model_args), in train.py's key order."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 64
    bias: bool = False  # train.py's default
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64
    dropout: float = 0.0


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, mask_buffer: bool):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd = config.n_head, config.n_embd
        if mask_buffer:  # nanoGPT registers the causal mask when torch has no flash attention (before 2.0)
            bs = config.block_size
            self.register_buffer("bias", torch.tril(torch.ones(bs, bs)).view(1, 1, bs, bs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
        att = F.softmax(att.masked_fill(~causal, float("-inf")), dim=-1)
        y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # approximate='none': the erf form, not GPT-2's tanh
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, mask_buffer: bool):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, mask_buffer)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, mask_buffer: bool = False, tied: bool = True):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, mask_buffer) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if tied:  # nanoGPT's weight tying: one Parameter under both names
            self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits at every position (nanoGPT's inference keeps the last only): (B, T) -> (B, T, vocab_size)."""
        pos = torch.arange(idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def random_model(config: GPTConfig, *, seed: int = 0, mask_buffer: bool = False, tied: bool = True) -> GPT:
    """A GPT whose every parameter is random (biases and LayerNorm parameters too, so a misplaced tensor shows)."""
    torch.manual_seed(seed)
    model = GPT(config, mask_buffer=mask_buffer, tied=tied)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.02)
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.add_(1.0)
    return model


def train_config(config: GPTConfig, compiled: bool) -> dict:
    """train.py's `config` entry: its settings (a representative subset, as plain values)."""
    return {"out_dir": "out", "eval_interval": 2000, "log_interval": 1, "eval_iters": 200, "eval_only": False,
            "always_save_checkpoint": True, "init_from": "scratch", "wandb_log": False, "dataset": "openwebtext",
            "gradient_accumulation_steps": 40, "batch_size": 12, "block_size": config.block_size,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd, "dropout": config.dropout,
            "bias": config.bias, "learning_rate": 6e-4, "max_iters": 600000, "weight_decay": 0.1, "beta1": 0.9,
            "beta2": 0.95, "grad_clip": 1.0, "decay_lr": True, "warmup_iters": 2000, "lr_decay_iters": 600000,
            "min_lr": 6e-5, "backend": "nccl", "device": "cpu", "dtype": "float32", "compile": compiled}


def write_ckpt(path: Path, config: GPTConfig, *, seed: int = 0, compiled: bool = False, mask_buffer: bool = False,
               tied: bool = True) -> GPT:
    """Train a random GPT one AdamW step (nanoGPT's configure_optimizers groups) and torch.save train.py's dict
    to `path`; returns the model as saved."""
    model = random_model(config, seed=seed, mask_buffer=mask_buffer, tied=tied)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    tokens = min(config.vocab_size, 50257)  # GPT-2's tokens, never the padding rows
    x = torch.randint(0, tokens, (2, config.block_size), generator=g)
    y = torch.randint(0, tokens, (2, config.block_size), generator=g)
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    raw_model = torch.compile(model) if compiled else model  # OptimizedModule: keys under `_orig_mod.`
    checkpoint = {
        "model": raw_model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_args": asdict(config),
        "iter_num": 1,
        "best_val_loss": loss.detach(),
        "config": train_config(config, compiled),
    }
    torch.save(checkpoint, path)
    return model


def forward64(model: GPT, ids: list[int]) -> np.ndarray:
    """The model's logits in float64, (len(ids), vocab_size): the tests' reference, computed by the module itself."""
    double = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return double(torch.tensor([ids]))[0].numpy()


def write_shaped_ckpt(path: Path, *, n_layer: int, n_head: int, n_embd: int, block_size: int = 1024,
                      vocab_size: int = 50304, bias: bool = False, scratch: Path, seed: int = 0) -> None:
    """train.py's dict (model, model_args, iter_num, best_val_loss, config; no optimizer state) at a real shape,
    std-0.02 weights generated in chunks into per-tensor files that torch.save reads through a map, so memory
    stays bounded at the 1558M shape. The state dict has nanoGPT's names, shapes and tied head."""
    config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                       vocab_size=vocab_size)
    rng = np.random.default_rng(seed)
    scratch.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = OrderedDict()  # as state_dict() returns it
    for name, shape in _shapes(config).items():
        if name == "lm_head.weight":
            state[name] = state["transformer.wte.weight"]  # tied: one storage, saved once
            continue
        file = scratch / f"{len(state)}.f32"
        numel = math.prod(shape)
        values = np.memmap(file, dtype=np.float32, mode="w+", shape=(numel,))
        step = 1 << 22
        for r in range(0, numel, step):
            n = min(step, numel - r)
            chunk = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                chunk += np.float32(1.0)
            values[r:r + n] = chunk
        values.flush()
        del values
        state[name] = torch.from_file(str(file), shared=False, size=numel, dtype=torch.float32).view(shape)
    torch.save({"model": state, "model_args": asdict(config), "iter_num": 0, "best_val_loss": torch.tensor(10.0),
                "config": train_config(config, False)}, path)
    for file in scratch.glob("*.f32"):
        file.unlink()


def _shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """nanoGPT's state_dict names and shapes for `config`, in its order (from a meta-device model: no memory)."""
    with torch.device("meta"):
        model = GPT(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}
