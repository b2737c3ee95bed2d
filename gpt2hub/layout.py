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
HPARAM_MAX = {"n_vocab": 1 << 22, "n_ctx": 1 << 20, "n_embd": 1 << 16, "n_head": 1 << 12, "n_layer": 1024}

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
SCOPE = "model/"


@dataclass(frozen=True)
class HParams:
    """The five numbers of a GPT-2 `hparams.json`."""

    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int

    def __post_init__(self) -> None:
        for key in HPARAM_KEYS:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConversionError(f"hparams: {key} must be a positive integer, got {str(value)[:40]!r}")
            if value > HPARAM_MAX[key]:
                raise ConversionError(f"hparams: {key} {value:,} is beyond gpt2hub's limit of {HPARAM_MAX[key]:,}")
        if self.n_embd % self.n_head:
            raise ConversionError(f"hparams: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")

    @classmethod
    def from_dict(cls, data: Mapping[str, object], source: str = "hparams") -> "HParams":
        missing = [k for k in HPARAM_KEYS if k not in data]
        if missing:
            raise ConversionError(f"{source}: missing {', '.join(missing)}")
        try:
            return cls(**{k: data[k] for k in HPARAM_KEYS})  # type: ignore[arg-type]
        except ConversionError as e:  # name the file the bad value came from
            raise ConversionError(f"{source}: {str(e).removeprefix('hparams: ')}") from None

    @classmethod
    def from_file(cls, path: Path) -> "HParams":
        data = load_json(path, ConversionError)
        if not isinstance(data, dict):
            raise ConversionError(f"{path}: expected a JSON object")
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def to_json(self) -> str:
        """The text of `hparams.json`, formatted byte for byte as OpenAI's."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def parameters(self) -> int:
        return sum(_numel(shape) for shape in tensor_shapes(self).values())


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _dim(symbol: str, h: HParams) -> int:
    sizes = {"1": 1, "E": h.n_embd, "3E": 3 * h.n_embd, "4E": 4 * h.n_embd, "V": h.n_vocab, "C": h.n_ctx}
    return sizes[symbol]


def tensor_shapes(h: HParams) -> dict[str, tuple[int, ...]]:
    """Every model variable's TF name and shape, in bytewise-sorted name order (the order on disk)."""
    shapes = {SCOPE + name: tuple(_dim(s, h) for s in dims) for name, dims in GLOBAL_TENSORS.items()}
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
    if rest in GLOBAL_TENSORS:
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
