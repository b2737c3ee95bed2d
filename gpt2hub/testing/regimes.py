"""Releases whose weights are drawn in a named regime, written without TensorFlow, for verify's tests and benchmarks.

- "gpt2": GPT-2's initialisation: weights and wte N(0, 0.02), wpe N(0, 0.01), residual projections
  (attn/c_proj/w, mlp/c_proj/w) scaled by 1/sqrt(2 n_layer), biases 0, LayerNorm gains 1 and biases 0.
- "harsh": everything N(0, 0.1) (LayerNorm gains 1 + N(0, 0.1)): large activations, logits and rounding noise.
Each tensor is seeded by (seed, its name) alone.

CLI (benchmarks):  python -m gpt2hub.testing.regimes DIR --shape 1558M --regime harsh [--vocab real|generated]
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np

from .release import REAL_FIXTURES, SHAPES, build_release

REGIMES = ("gpt2", "harsh")


def regime_value(name: str, shape: tuple[int, ...], regime: str, n_layer: int, seed: int = 0) -> np.ndarray:
    """The float32 value of one variable in a regime."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    leaf = name.rsplit("/", 1)[1]
    is_ln = "/ln_" in name
    if regime == "gpt2":
        if leaf == "g":
            return np.ones(shape, np.float32)
        if leaf == "b":
            return np.zeros(shape, np.float32)
        std = 0.01 if leaf == "wpe" else 0.02
        if name.endswith("c_proj/w"):
            std /= math.sqrt(2 * n_layer)
    elif regime == "harsh":
        std = 0.1
    else:
        raise ValueError(f"regime {regime!r}: expected one of {REGIMES}")
    a = rng.standard_normal(shape, dtype=np.float32)
    a *= np.float32(std)
    if is_ln and leaf == "g":
        a += np.float32(1)
    return a


def write_regime_release(folder: Path | str, *, n_layer: int, n_embd: int, n_head: int, n_ctx: int,
                         regime: str, seed: int = 0, vocab: str = "generated") -> Path:
    """A release in OpenAI's layout (TF-free writer) with weights in `regime`; vocab "real" or "generated"."""
    return build_release(folder, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer,
                         vocab=REAL_FIXTURES if vocab == "real" else None,
                         values=lambda name, shape: regime_value(name, shape, regime, n_layer, seed))


def main(argv: list[str] | None = None) -> None:
    import argparse
    import time

    p = argparse.ArgumentParser(prog="python -m gpt2hub.testing.regimes", description=__doc__.split("\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--regime", choices=REGIMES, default="gpt2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", choices=("real", "generated"), default="real")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = write_regime_release(a.dir, **SHAPES[a.shape], regime=a.regime, seed=a.seed, vocab=a.vocab)
    print(f"{out}: {a.shape} release, {a.regime} regime, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
