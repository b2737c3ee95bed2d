"""Write complete GPT-2 release folders in OpenAI's exact layout, for tests and benchmarks.

A release folder holds the seven files OpenAI publishes per model size:

    checkpoint  encoder.json  hparams.json  model.ckpt.data-00000-of-00001
    model.ckpt.index  model.ckpt.meta  vocab.bpe

The checkpoint is written by TensorFlow itself (tf.compat.v1 graph, RefVariables, Saver V2), with
the variables named and shaped as openai/gpt-2 `src/model.py` creates them. Values are random but
"trained-looking" (small weights, LayerNorm gains near 1), seeded per variable, so a given
(seed, variable name, shape) always gets the same values.

Vocabulary: `vocab="auto"` copies OpenAI's real encoder.json / vocab.bpe from ../shared/fixtures
when that folder exists, else generates a small genuine byte-level BPE (`vocab="generated"`).

Without TensorFlow, `build_release` writes the same layout with the project's own TF bundle writer (the demo uses it).

CLI (benchmarks):  python -m gpt2hub.testing.release DIR --shape 124M [--seed N] [--vocab auto|real|generated]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from ..layout import HParams, tensor_shapes
from ..registry import OPENAI_FILES
from ..tfwriter import write_checkpoint
from ..tokenizer import ENDOFTEXT
from . import strict
from .vocab import generated_vocab

# ../shared beside the checkout (this file is <checkout>/gpt2hub/testing/release.py); GPT2HUB_SHARED overrides.
_SHARED = Path(os.environ.get("GPT2HUB_SHARED") or Path(__file__).resolve().parents[3] / "shared")
_REAL = _SHARED / "fixtures" / "openai-124M-real"

REAL_FIXTURES: Path | None = _REAL if (_REAL / "encoder.json").is_file() else None
"""OpenAI's real 124M files (six of seven, plus the data file's first 3 MiB), or None."""

SHAPES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, n_ctx=64),
    "124M": dict(n_layer=12, n_embd=768, n_head=12, n_ctx=1024),
    "1558M": dict(n_layer=48, n_embd=1600, n_head=25, n_ctx=1024),
}

RELEASE_FILES = OPENAI_FILES  # the seven file names of every OpenAI release folder
# OpenAI's `checkpoint` file, 77 bytes. TF's Saver(save_relative_paths=True) writes exactly this.
CHECKPOINT_TEXT = b'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'

# A MetaGraphDef holding only meta_info_def.meta_graph_version: readers never need the graph.
META_GRAPH = b"\x0a\x0e\x0a\x0cgpt2hub-demo"

# (scale, offset) of "trained-looking" random values, by the last part of the variable's name:
# LayerNorm gains near 1, small biases, small weights.
INIT: dict[str, tuple[float, float]] = {
    "g": (0.1, 1.0),
    "b": (0.01, 0.0),
    "wpe": (0.01, 0.0),
    "wte": (0.02, 0.0),
    "w": (0.02, 0.0),
}
LAYERNORM_BIAS_SCALE = 0.05


def random_value(name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A float32 value for variable `name`, seeded by (seed, name) alone, so any tensor can be recomputed."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    a = rng.standard_normal(shape, dtype=np.float32)
    leaf = name.rsplit("/", 1)[1]
    scale, offset = INIT[leaf]
    if leaf == "b" and "/ln_" in name:
        scale = LAYERNORM_BIAS_SCALE
    a *= np.float32(scale)
    a += np.float32(offset)
    return a


def build_release(folder: Path | str, *, n_ctx: int = 128, n_embd: int = 64, n_head: int = 4, n_layer: int = 2,
                  seed: int = 0, vocab: Path | None = None, values: Callable[[str, tuple[int, ...]], np.ndarray] | None = None) -> Path:
    """Write a release in OpenAI's layout with random weights, without TensorFlow.

    `vocab` is a folder holding encoder.json and vocab.bpe; without it a small byte-level BPE is trained.
    `values(name, shape)` gives each variable's value (default: random_value with `seed`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if vocab is not None:
        encoder, merges = (Path(vocab) / "encoder.json").read_text(), (Path(vocab) / "vocab.bpe").read_text()
    else:
        encoder, merges = generated_vocab()
    (folder / "encoder.json").write_text(encoder)
    (folder / "vocab.bpe").write_text(merges)
    n_vocab = len(re.findall(r'":\s*\d+', encoder))  # one "token": id pair per entry
    h = HParams(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer)
    values = values or (lambda name, shape: random_value(name, shape, seed))
    write_checkpoint(folder / "model.ckpt", ((n, values(n, s)) for n, s in tensor_shapes(h).items()))
    (folder / "hparams.json").write_text(h.to_json())
    (folder / "checkpoint").write_bytes(CHECKPOINT_TEXT)
    (folder / "model.ckpt.meta").write_bytes(META_GRAPH)
    return folder


# --------------------------------------------------------------------------------------------
# Variables


def tf_variable_shapes(*, n_layer: int, n_embd: int, n_vocab: int, n_ctx: int) -> dict[str, tuple[int, ...]]:
    """TF variable name -> shape, in the order openai/gpt-2 src/model.py creates them."""
    shapes: dict[str, tuple[int, ...]] = {
        "model/wpe": (n_ctx, n_embd),
        "model/wte": (n_vocab, n_embd),
    }
    for i in range(n_layer):
        h = f"model/h{i}"
        shapes.update(
            {
                f"{h}/ln_1/g": (n_embd,),
                f"{h}/ln_1/b": (n_embd,),
                f"{h}/attn/c_attn/w": (1, n_embd, 3 * n_embd),  # conv1d weight: [1, in, out]
                f"{h}/attn/c_attn/b": (3 * n_embd,),
                f"{h}/attn/c_proj/w": (1, n_embd, n_embd),
                f"{h}/attn/c_proj/b": (n_embd,),
                f"{h}/ln_2/g": (n_embd,),
                f"{h}/ln_2/b": (n_embd,),
                f"{h}/mlp/c_fc/w": (1, n_embd, 4 * n_embd),
                f"{h}/mlp/c_fc/b": (4 * n_embd,),
                f"{h}/mlp/c_proj/w": (1, 4 * n_embd, n_embd),
                f"{h}/mlp/c_proj/b": (n_embd,),
            }
        )
    shapes["model/ln_f/g"] = (n_embd,)
    shapes["model/ln_f/b"] = (n_embd,)
    return shapes


def _write_checkpoint(out: Path, shapes: dict[str, tuple[int, ...]], seed: int, forward_heads: int = 0) -> None:
    """Create the variables in a private tf.compat.v1 graph, fill them one at a time, Saver.save.

    forward_heads: n_head, to put the model's forward in the graph too (0: variables only).
    Each variable gets a cheap zeros initializer; its value is fed into the initializer's input,
    so only one numpy array exists at a time besides the variables (peak ~ model size + largest
    tensor), which keeps the 1558M shape (6.2 GB) well inside 24 GB.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        variables = []
        with v1.variable_scope("model"):
            for name, shape in shapes.items():
                variables.append(
                    v1.get_variable(
                        name.removeprefix("model/"),
                        shape,
                        dtype=tf.float32,
                        initializer=v1.zeros_initializer(),
                        use_resource=False,  # TF 1.x RefVariable (VariableV2), as in OpenAI's graph
                    )
                )
        if forward_heads:  # the forward too, as OpenAI's own model.ckpt.meta holds it: int32 [1, n_ctx] -> logits
            from gpt2hub.layout import HParams
            from gpt2hub.verification.original_graph import openai_model

            n_vocab, n_embd = shapes["model/wte"]
            n_ctx = shapes["model/wpe"][0]
            n_layer = sum(name.endswith("/ln_1/g") for name in shapes)
            hp = HParams(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_head=forward_heads, n_layer=n_layer)
            by_name = {name.removeprefix("model/"): var for name, var in zip(shapes, variables)}
            X = v1.placeholder(tf.int32, [1, n_ctx])
            with tf.name_scope("model/"):  # "model/", not a fresh "model_1" scope, as OpenAI's ops are named
                openai_model(tf, hp, X, by_name.__getitem__, tf.float32)
        saver = v1.train.Saver(save_relative_paths=True)
        with v1.Session(graph=graph) as sess:
            for var, (name, shape) in zip(variables, shapes.items()):
                value = random_value(name, shape, seed)
                sess.run(var.initializer, feed_dict={var.initializer.inputs[1]: value})
                del value
            saver.save(sess, str(out / "model.ckpt"), write_meta_graph=True)
    # TF already writes OpenAI's relative form with save_relative_paths=True; pin the bytes anyway.
    (out / "checkpoint").write_bytes(CHECKPOINT_TEXT)


# --------------------------------------------------------------------------------------------
# hparams.json


def format_hparams(*, n_vocab: int, n_ctx: int, n_embd: int, n_head: int, n_layer: int) -> str:
    """hparams.json text exactly as OpenAI's (key order, 2-space indent, trailing newline)."""
    h = {"n_vocab": n_vocab, "n_ctx": n_ctx, "n_embd": n_embd, "n_head": n_head, "n_layer": n_layer}
    return json.dumps(h, indent=2) + "\n"


# --------------------------------------------------------------------------------------------
# Byte-level BPE


def tiktoken_encoding(release_dir: str | os.PathLike[str]):
    """A tiktoken.Encoding for a release folder's encoder.json + vocab.bpe (GPT-2 regex)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    d = Path(release_dir)
    ranks = data_gym_to_mergeable_bpe_ranks(str(d / "vocab.bpe"), str(d / "encoder.json"))
    eot = json.loads((d / "encoder.json").read_text(encoding="utf-8"))[ENDOFTEXT]
    return tiktoken.Encoding(
        name=f"gpt2-release-{d.name}",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: eot},
    )


# --------------------------------------------------------------------------------------------
# The release


def write_release(
    dir: str | os.PathLike[str],
    *,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_ctx: int,
    n_vocab: int | None = None,
    seed: int = 0,
    vocab: str = "auto",
    graph: bool = False,
) -> Path:
    """Write a complete GPT-2 release (the seven OpenAI files) into `dir`; return it as a Path.

    vocab: "auto" (real OpenAI files if REAL_FIXTURES, else generated with a warning, an error in CI),
    "real" or "generated".
    graph: model.ckpt.meta also holds the forward (placeholder -> logits), as OpenAI's meta graphs do.
    n_vocab: None means the vocabulary's size (50257 for the real one, 557 for the generated one);
    with the generated vocabulary it sets the number of merges (n_vocab - 257).
    """
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} is not a multiple of n_head={n_head}")
    if vocab == "auto":
        if REAL_FIXTURES is None:
            if strict():
                raise FileNotFoundError(f"{_REAL}: OpenAI's real vocabulary is missing, and CI needs it "
                                        "(vocab='generated' asks for the small generated one)")
            warnings.warn(f"{_REAL} not found: the release gets a small generated vocabulary, not GPT-2's 50,257 tokens")
        vocab = "real" if REAL_FIXTURES is not None else "generated"
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    if vocab == "real":
        if REAL_FIXTURES is None:
            raise FileNotFoundError(f"{_REAL}: real GPT-2 fixtures not found")
        encoder_text = (REAL_FIXTURES / "encoder.json").read_text(encoding="utf-8")
        real_n_vocab = len(json.loads(encoder_text))
        if n_vocab not in (None, real_n_vocab):
            raise ValueError(f"n_vocab={n_vocab} does not match the real vocabulary ({real_n_vocab} tokens)")
        for name in ("encoder.json", "vocab.bpe"):
            shutil.copyfile(REAL_FIXTURES / name, out / name)
        n_vocab = real_n_vocab
    elif vocab == "generated":
        encoder_text, bpe_text = generated_vocab(n_vocab)
        (out / "encoder.json").write_text(encoder_text, encoding="utf-8")
        (out / "vocab.bpe").write_text(bpe_text, encoding="utf-8")
        n_vocab = len(json.loads(encoder_text))
    else:
        raise ValueError(f"vocab={vocab!r}: expected 'auto', 'real' or 'generated'")

    (out / "hparams.json").write_text(
        format_hparams(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer),
        encoding="utf-8",
    )
    shapes = tf_variable_shapes(n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab, n_ctx=n_ctx)
    _write_checkpoint(out, shapes, seed, n_head if graph else 0)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse
    import time

    p = argparse.ArgumentParser(prog="python -m gpt2hub.testing.release", description=__doc__.split("\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", choices=("auto", "real", "generated"), default="auto")
    p.add_argument("--n-vocab", type=int, default=None)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = write_release(a.dir, **SHAPES[a.shape], n_vocab=a.n_vocab, seed=a.seed, vocab=a.vocab)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"{out}: {a.shape} release, {size:,} bytes, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
