"""Open converted files with the programs people run them in (llama.cpp through llama-cpp-python)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import VerificationError


@contextlib.contextmanager
def _without_extra_buffer_types() -> Iterator[None]:
    """Make llama_model_default_params() return use_extra_bufts = False while a model loads.

    llama.cpp 0.3.36 repacks weights into "extra" CPU buffer types (AMX on this kind of CPU), and
    that path crashes on Q8_0 GPT-2 weights. Llama() takes no argument for it: it builds its model
    params from llama_model_default_params(), looked up on the module at call time, so this swaps
    that one function for the duration of the load.
    """
    import llama_cpp.llama_cpp as lib

    default_params = lib.llama_model_default_params

    def params():
        p = default_params()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default_params


def load_llama(path: Path | str, n_ctx: int = 0, logits_all: bool = True):
    """A llama_cpp.Llama for a GGUF file: CPU, F32 KV cache, logits kept for every position."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise VerificationError("reading GGUF with llama.cpp needs llama-cpp-python: pip install 'gpt2hub[llama]'") from None
    path = Path(path)
    if not path.is_file():
        raise VerificationError(f"{path}: no such file")
    with _without_extra_buffer_types():
        try:
            # type_k/type_v 0 = GGML_TYPE_F32: an F16 KV cache would add its own rounding to the logits.
            return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, n_gpu_layers=0,
                         type_k=0, type_v=0, verbose=False)
        except ValueError as e:
            raise VerificationError(f"{path}: llama.cpp cannot load it ({e})") from None


def llama_logits(path: Path | str, tokens: Sequence[int], n_ctx: int = 0) -> np.ndarray:
    """llama.cpp's logits (len(tokens), n_vocab) for one sequence of token ids."""
    llm = load_llama(path, n_ctx=n_ctx)
    try:
        llm.reset()
        llm.eval(list(tokens))
        return np.array(llm.scores[: llm.n_tokens], dtype=np.float32)
    finally:
        llm.close()
