"""The converted outputs of a release, found and read back through the format registry (converters/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import converters
from ..layout import HParams
from ..release import Release
from ..stored import StoredOutput
from ..vocabulary import Vocab

EPS = 1e-5  # openai/gpt-2 src/model.py norm()


@dataclass
class Output:
    """One converted output: its format, where it is, and (if it could be read back) what it stores."""

    format: str
    path: Path
    stored: StoredOutput | None
    problems: list[str]  # metadata that differs from the release

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


def read_back(fmt: str, path: Path, hparams: HParams, original: Path) -> Output:
    """An output's stored tensors and what they must be, and its metadata compared with the release."""
    form = converters.get(fmt)
    if form.read_stored is None:
        raise NotImplementedError(f"not proven: the {fmt} format declares no exact read-back (Format.read_stored)")
    stored = form.read_stored(path, hparams, Vocab.in_folder(original))  # the vocabulary read only where compared
    want = {"n_vocab": hparams.n_vocab, "n_ctx": hparams.n_ctx, "n_embd": hparams.n_embd, "n_head": hparams.n_head,
            "n_layer": hparams.n_layer, "eps": EPS}
    problems = []
    for key, value in want.items():
        got = stored.config.get(key)
        same = got == value if key != "eps" else got is not None and np.float32(got) == np.float32(value)  # f32 in GGUF
        if not same:
            problems.append(f"{key} is {got}, the release has {value}")
    activation = stored.config.get("activation", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        problems.append(f"activation {activation!r} is not GPT-2's tanh GELU")
    return Output(fmt, path, stored, problems + stored.problems)
