"""A tiny GPT-2 actually trained on text (seconds of CPU), written in OpenAI's layout by the TF-free writer.

Its weights have the structure training gives (not i.i.d. noise), so verify's tolerances are also measured on
them, and its samples read like the text it learnt, which is what `gpt2hub demo` shows. Training is seeded
and runs on the CPU in float32 with a fixed number of steps, so a given seed gives the same release.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..layout import HParams, tensor_shapes
from .regimes import regime_value
from .release import build_release
from .vocab import BPE_TRAINING_TEXT, generated_vocab

STEPS = 400
BATCH = 8
LEARNING_RATE = 3e-3


def train(h: HParams, tokens: list[int], *, steps: int = STEPS, seed: int = 0) -> dict[str, np.ndarray]:
    """TF variable name -> trained float32 value: gpt2hub's model, GPT-2's initialisation, AdamW on next-token loss."""
    import torch
    import torch.nn.functional as F

    from ..converters.hf import reference_names
    from ..model import GPTConfig, from_tensors

    names = reference_names(h.n_layer)  # TF name -> parameter name
    shapes = tensor_shapes(h)
    init = {names[n]: torch.from_numpy(regime_value(n, s, "gpt2", h.n_layer, seed)).reshape(
        s[1:] if len(s) == 3 else s) for n, s in shapes.items()}
    model = from_tensors(GPTConfig.from_hparams(h), init, "init").requires_grad_(True).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    data = torch.tensor(tokens)
    gen = torch.Generator().manual_seed(seed)
    span = min(h.n_ctx, len(tokens) - 1)
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - span, (BATCH,), generator=gen)
        x = torch.stack([data[s:s + span] for s in starts])
        y = torch.stack([data[s + 1:s + 1 + span] for s in starts])
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = dict(model.named_parameters())
    return {n: params[names[n]].detach().numpy().reshape(s).astype(np.float32) for n, s in shapes.items()}


def build_trained_release(folder: Path | str, *, n_ctx: int = 128, n_embd: int = 64, n_head: int = 4, n_layer: int = 2,
                          steps: int = STEPS, seed: int = 0, text: str = BPE_TRAINING_TEXT) -> Path:
    """Write a release whose weights were trained on `text` (needs torch) with the small BPE learnt from it."""
    from ..tokenizer import encoding

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder, merges = generated_vocab()
    (folder / "encoder.json").write_text(encoder)
    (folder / "vocab.bpe").write_text(merges)
    tokens = encoding(folder).encode(text)
    h = HParams(n_vocab=len(json.loads(encoder)), n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer)
    trained = train(h, tokens, steps=steps, seed=seed)
    return build_release(folder, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer, vocab=folder,
                         values=lambda name, shape: trained[name])


# --- the demo's trained weights, trained once and shipped (training takes ~20 s of CPU; minutes on a busy machine) ---

DEMO_WEIGHTS = Path(__file__).with_name("trained_demo.npz")
DEMO_HPARAMS = dict(n_ctx=128, n_embd=64, n_head=4, n_layer=2)


def write_demo_weights(path: Path = DEMO_WEIGHTS) -> Path:
    """Train the demo's model and store its vocabulary and weights (float32, compressed) in one .npz."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_trained_release(Path(tmp) / "trained", **DEMO_HPARAMS)
        from ..tfcheckpoint import Checkpoint

        ckpt = Checkpoint(folder)
        arrays = {name: np.array(ckpt.tensor(name)) for name in ckpt.entries}
        np.savez_compressed(path, **{"vocab/encoder.json": np.array((folder / "encoder.json").read_text()),
                                     "vocab/vocab.bpe": np.array((folder / "vocab.bpe").read_text()), **arrays})
    return path


def build_demo_release(folder: Path | str, path: Path = DEMO_WEIGHTS) -> Path:
    """The demo's release from the shipped trained weights: no torch, no training, the same bytes every time."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(path) as data:
        (folder / "encoder.json").write_text(str(data["vocab/encoder.json"]))
        (folder / "vocab.bpe").write_text(str(data["vocab/vocab.bpe"]))
        weights = {name: data[name] for name in data.files if not name.startswith("vocab/")}
    return build_release(folder, **DEMO_HPARAMS, vocab=folder, values=lambda name, shape: weights[name].reshape(shape))


if __name__ == "__main__":
    print(write_demo_weights())
