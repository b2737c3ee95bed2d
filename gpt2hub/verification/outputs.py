"""The converted outputs of a release, found and read back through the format registry (converters/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import converters
from ..errors import Gpt2hubError
from ..layout import GELU_TANH, HParams
from ..release import Release
from ..stored import StoredOutput
from ..vocabulary import Vocab


@dataclass
class Output:
    """One converted output: its format, where it is, and (if it could be read back) what it stores."""

    format: str
    path: Path
    stored: StoredOutput | None
    problems: list[str]  # metadata that differs from the release
    # The model its consumer computes where the output records approximated fields (--allow-approximate-activation):
    # the release's, those fields at GPT-2's value; None: the release's own
    computes: HParams | None = None

    @property
    def dtype(self) -> str:
        if self.stored is not None:
            return self.stored.dtype
        try:
            return converters.get(self.format).read_dtype(self.path)
        except Exception:  # an output too broken to say: its rows say why
            return "-"


def converted_outputs(release: Release, formats: Sequence[str]) -> list[tuple[str, Path | None]]:
    """(format, path) for each requested converted format, one per file of a file format; (format, None) if absent."""
    out: list[tuple[str, Path | None]] = []
    for fmt in formats:
        if fmt == "original":
            continue
        found = [p for p in release.output_paths(fmt) if converters.get(fmt).is_output(p)]
        out.extend((fmt, p) for p in found) if found else out.append((fmt, None))
    return out


def read_back(fmt: str, path: Path, hparams: HParams, original: Path | Vocab) -> Output:
    """An output's stored tensors and what they must be, and its metadata compared with the release (`original`:
    the release's vocabulary, or an OpenAI-layout folder holding it)."""
    form = converters.get(fmt)
    if form.read_stored is None:
        raise NotImplementedError(f"not proven: the {fmt} format declares no exact read-back (Format.read_stored)")
    vocab = original if isinstance(original, Vocab) else Vocab.in_folder(original)  # read only where compared
    stored = form.read_stored(path, hparams, vocab)
    computes = converters.computed_hparams(hparams, stored.approximated) if stored.approximated else None
    return Output(fmt, path, stored, config_problems(stored, hparams) + stored.problems, computes)


def config_problems(stored: StoredOutput, hparams: HParams) -> list[str]:
    """Each field the output declares otherwise than the release's hparams (an approximated field: as recorded)."""
    from ..converters.hf import ACTIVATION_OF

    config = dict(stored.config)
    activation = config.get("activation", GELU_TANH)
    if activation not in ACTIVATION_OF:
        return [f"activation {str(activation)[:40]!r} is not one of {', '.join(ACTIVATION_OF)}"]
    config["activation"] = ACTIVATION_OF[activation]
    try:  # the output's declaration, every field checked and named as gpt2hub.layout names it
        declared = HParams(**{k: config[k] for k in HParams.__dataclass_fields__ if k in config})
    except (Gpt2hubError, TypeError) as e:
        return [f"config: {str(e).removeprefix('hparams: ')}"]
    want = converters.computed_hparams(hparams, stored.approximated)
    problems = []
    for key in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer", "eps", "activation", "attn_scale_by_layer"):
        got, value = getattr(declared, key), getattr(want, key)
        same = got == value if key != "eps" else np.float32(got) == np.float32(value)  # f32 in GGUF
        if not same:
            if key == "eps":  # as float32, as GGUF and ONNX store it: 1e-06, not 9.999999974752427e-07
                got, value = str(np.float32(got)), str(np.float32(value))
            problems.append(f"{key} is {got}, the release has {value}")
    if declared.n_ff != want.n_ff:
        problems.append(f"n_inner is {declared.n_ff}, the release has {want.n_ff}")
    if declared.tied and not want.tied:  # a tied release may be written with the head copied (--untie): proven
        problems.append("the head is tied to wte, the release has its own (model/lm_head)")
    return problems
