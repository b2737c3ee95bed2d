"""GPT-2 hyperparameters and the tensor layout of OpenAI's TF checkpoints, as data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .errors import ConversionError, load_json

HPARAM_KEYS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
# Far above any GPT-2 (1558M: 48 layers, 1600 wide, 1024 context, 50257 tokens), low enough that a
# hostile hparams.json or manifest cannot make gpt2hub enumerate billions of tensors.
HPARAM_MAX = {"n_vocab": 1 << 22, "n_ctx": 1 << 20, "n_embd": 1 << 16, "n_head": 1 << 12, "n_layer": 1024,
              "n_inner": 1 << 18}
# How a GPT-2-family model may differ from OpenAI's GPT-2, with GPT-2's values: every source's config field that
# changes the model maps to one of these, so it is carried into every target that can express it, or refused there.
GELU_TANH, GELU_EXACT = "gelu_tanh", "gelu_exact"  # GPT-2's tanh approximation; the erf form (nanoGPT, HF "gelu")
ACTIVATIONS = (GELU_TANH, GELU_EXACT)
VARIANT_DEFAULTS: dict[str, object] = {
    "n_inner": None,  # the MLP's width; None: 4 * n_embd
    "eps": 1e-5,  # LayerNorm's epsilon (HF layer_norm_epsilon)
    "activation": GELU_TANH,
    "tied": True,  # the head is wte; False: its own tensor model/lm_head [n_vocab, n_embd]
    "attn_scale_by_layer": False,  # HF scale_attn_by_inverse_layer_idx: layer i's scores also divided by i + 1
}

# Per-layer variables of openai/gpt-2 src/model.py, with shapes in terms of E = n_embd.
# Conv1D weights keep their leading 1: [1, in, out].
BLOCK_TENSORS: dict[str, tuple[str, ...]] = {
    "ln_1/g": ("E",),
    "ln_1/b": ("E",),
    "attn/c_attn/w": ("1", "E", "3E"),
    "attn/c_attn/b": ("3E",),
    "attn/c_proj/w": ("1", "E", "E"),
    "attn/c_proj/b": ("E",),
    "ln_2/g": ("E",),
    "ln_2/b": ("E",),
    "mlp/c_fc/w": ("1", "E", "4E"),
    "mlp/c_fc/b": ("4E",),
    "mlp/c_proj/w": ("1", "4E", "E"),
    "mlp/c_proj/b": ("E",),
}
GLOBAL_TENSORS: dict[str, tuple[str, ...]] = {
    "wte": ("V", "E"),
    "wpe": ("C", "E"),
    "ln_f/g": ("E",),
    "ln_f/b": ("E",),
}
HEAD_TENSOR = "lm_head"  # an untied head, in no OpenAI checkpoint: gpt2hub's name for HF's lm_head.weight
SCOPE = "model/"


@dataclass(frozen=True)
class HParams:
    """The five numbers of a GPT-2 `hparams.json`, and how a GPT-2-family model differs from GPT-2 (VARIANT_DEFAULTS)."""

    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    n_inner: int | None = None
    eps: float = 1e-5
    activation: str = GELU_TANH
    tied: bool = True
    attn_scale_by_layer: bool = False

    def __post_init__(self) -> None:
        for key in HPARAM_KEYS + (("n_inner",) if self.n_inner is not None else ()):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConversionError(f"hparams: {key} must be a positive integer, got {str(value)[:40]!r}")
            if value > HPARAM_MAX[key]:
                raise ConversionError(f"hparams: {key} {value:,} is beyond gpt2hub's limit of {HPARAM_MAX[key]:,}")
        if self.n_embd % self.n_head:
            raise ConversionError(f"hparams: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 0.1:
            raise ConversionError(f"hparams: eps must be a number in (0, 0.1], got {str(eps)[:40]!r}")
        if self.activation not in ACTIVATIONS:
            raise ConversionError(f"hparams: activation {str(self.activation)[:40]!r} is not one of {', '.join(ACTIVATIONS)}")
        for key in ("tied", "attn_scale_by_layer"):
            if not isinstance(getattr(self, key), bool):
                raise ConversionError(f"hparams: {key} must be true or false, got {str(getattr(self, key))[:40]!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, object], source: str = "hparams") -> "HParams":
        """The five numbers (required) and any variant fields present (GPT-2's values where absent)."""
        missing = [k for k in HPARAM_KEYS if k not in data]
        if missing:
            raise ConversionError(f"{source}: missing {', '.join(missing)}")
        try:
            return cls(**{k: data[k] for k in HPARAM_KEYS + tuple(VARIANT_DEFAULTS) if k in data})  # type: ignore[arg-type]
        except ConversionError as e:  # name the file the bad value came from
            raise ConversionError(f"{source}: {str(e).removeprefix('hparams: ')}") from None

    @classmethod
    def from_file(cls, path: Path) -> "HParams":
        data = load_json(path, ConversionError)
        if not isinstance(data, dict):
            raise ConversionError(f"{path}: expected a JSON object")
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict:
        """The five numbers, then each variant field that differs from GPT-2's value."""
        return {k: v for k, v in asdict(self).items() if k in HPARAM_KEYS} | self.variant()

    def variant(self) -> dict:
        """The fields in which this model differs from OpenAI's GPT-2 ({} for GPT-2 itself)."""
        return {k: getattr(self, k) for k, default in VARIANT_DEFAULTS.items() if getattr(self, k) != default}

    def base(self) -> "HParams":
        """The five numbers alone, every variant field at GPT-2's value."""
        return HParams(**{k: getattr(self, k) for k in HPARAM_KEYS})

    def to_json(self) -> str:
        """The text of `hparams.json`, formatted byte for byte as OpenAI's."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_ff(self) -> int:
        """The MLP's width: n_inner, or GPT-2's 4 * n_embd."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def parameters(self) -> int:
        return sum(_numel(shape) for shape in tensor_shapes(self).values())


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _dim(symbol: str, h: HParams) -> int:
    sizes = {"1": 1, "E": h.n_embd, "3E": 3 * h.n_embd, "4E": h.n_ff, "V": h.n_vocab, "C": h.n_ctx}
    return sizes[symbol]


def tensor_shapes(h: HParams) -> dict[str, tuple[int, ...]]:
    """Every model variable's TF name and shape, in bytewise-sorted name order (the order on disk); an untied
    head adds model/lm_head. ("4E" is the MLP's width, n_ff.)"""
    shapes = {SCOPE + name: tuple(_dim(s, h) for s in dims) for name, dims in GLOBAL_TENSORS.items()}
    if not h.tied:
        shapes[SCOPE + HEAD_TENSOR] = (h.n_vocab, h.n_embd)
    for i in range(h.n_layer):
        for name, dims in BLOCK_TENSORS.items():
            shapes[f"{SCOPE}h{i}/{name}"] = tuple(_dim(s, h) for s in dims)
    return dict(sorted(shapes.items(), key=lambda kv: kv[0].encode()))


def tensor_layout(h: HParams) -> list[dict]:
    """The packed float32 layout of the data file: name, shape, dtype, offset, size."""
    rows, offset = [], 0
    for name, shape in tensor_shapes(h).items():
        size = 4 * _numel(shape)
        rows.append({"name": name, "shape": list(shape), "dtype": "float32", "offset": offset, "size": size})
        offset += size
    return rows


def is_model_tensor(name: str) -> bool:
    """True for a GPT-2 model weight; False for optimizer slots, step counters and the like."""
    if not name.startswith(SCOPE):
        return False
    rest = name[len(SCOPE):]
    if rest in GLOBAL_TENSORS or rest == HEAD_TENSOR:
        return True
    head, _, tail = rest.partition("/")
    return head[:1] == "h" and head[1:].isdigit() and tail in BLOCK_TENSORS


def infer_hparams(shapes: Mapping[str, tuple[int, ...]], n_head: int | None = None) -> HParams:
    """Recover hparams from tensor shapes; n_head is not in any shape, so it defaults to n_embd // 64."""
    try:
        n_vocab, n_embd = shapes[SCOPE + "wte"]
        n_ctx, _ = shapes[SCOPE + "wpe"]
    except (KeyError, ValueError):
        raise ConversionError("cannot infer hparams: no model/wte and model/wpe matrices in the checkpoint") from None
    layers = {name[len(SCOPE):].split("/")[0] for name in shapes if is_model_tensor(name) and name[len(SCOPE)] == "h"}
    n_layer = len(layers)
    if n_head is None:
        # Every GPT-2 size uses 64-dimensional heads (768/12, 1024/16, 1280/20, 1600/25).
        n_head = max(1, n_embd // 64)
    return HParams(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer)


def check_shapes(h: HParams, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise a one-line error if the checkpoint's model tensors disagree with hparams."""
    expected = tensor_shapes(h)
    missing = [n for n in expected if n not in shapes]
    if missing:
        raise ConversionError(f"{source}: {len(missing)} model tensors missing, e.g. {missing[0]} (hparams say n_layer={h.n_layer})")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ConversionError(f"{source}: {name} has shape {list(shapes[name])}, hparams imply {list(shape)}")
    extra = sorted(n for n in shapes if is_model_tensor(n) and n not in expected)
    if extra:
        raise ConversionError(f"{source}: {len(extra)} model tensors beyond hparams, e.g. {extra[0]} (hparams say n_layer={h.n_layer})")
