"""A release's weights saved as users get HF GPT-2 folders: transformers' GPT2LMHeadModel and save_pretrained."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..layout import HParams


def save_as_hf(release: Path, folder: Path, dtype: str = "float32") -> Path:
    """The TF release at `release` loaded into transformers' GPT2LMHeadModel, saved by save_pretrained in `dtype`
    into `folder`, with GPT-2's tokenizer files as the Hub's GPT-2 repos carry them (vocab.json, merges.txt)."""
    import torch
    import transformers

    from ..converters.hf import reference_names
    from ..tfcheckpoint import Checkpoint

    h = HParams.from_file(release / "hparams.json")
    config = transformers.GPT2Config(n_layer=h.n_layer, n_embd=h.n_embd, n_head=h.n_head, n_positions=h.n_ctx,
                                     vocab_size=h.n_vocab)
    model = transformers.GPT2LMHeadModel(config)
    params = dict(model.named_parameters())
    with Checkpoint(release) as ckpt, torch.no_grad():
        for tf, name in reference_names(h.n_layer).items():
            value = ckpt.tensor(tf)
            params["transformer." + name].copy_(torch.from_numpy(np.array(value[0] if value.ndim == 3 else value)))
    model.to(getattr(torch, dtype)).save_pretrained(folder)
    shutil.copyfile(release / "encoder.json", folder / "vocab.json")
    shutil.copyfile(release / "vocab.bpe", folder / "merges.txt")
    return folder
