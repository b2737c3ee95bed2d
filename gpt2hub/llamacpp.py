"""llama.cpp (llama-cpp-python) on a GGUF file, in this process: loaded on the CPU with its log collected for
errors, and closed after one use. verify's llama.cpp consumer and the GGUF format's tokenizer both start here.

Nothing here keeps state between calls (llama.cpp's log goes to a callback only while a call runs), so each
call can run in a child process (gpt2hub.isolation) and give all its memory back when it returns.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from typing import Callable, Iterator

from .errors import VerificationError


@contextlib.contextmanager
def _llama_session() -> Iterator[list[str]]:
    """While a call runs: llama.cpp's log lines collected (for error messages) instead of printed, and
    llama_model_default_params() returning use_extra_bufts = False.

    llama.cpp 0.3.36 repacks weights into "extra" CPU buffer types (AMX, on CPUs that have it), and that
    path crashes on Q8_0 GPT-2 weights. Llama() takes no argument for it: it builds its model params from
    llama_model_default_params(), looked up on the module at call time. Both are put back on exit. Only ever
    entered in a consumer's child process (gpt2hub.isolation), never in the user's.
    """
    import llama_cpp
    import llama_cpp._logger as llama_logger
    import llama_cpp.llama_cpp as lib

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data) -> None:
        lines.append(text.decode("utf-8", "replace").strip())
        del lines[:-20]

    default_params = lib.llama_model_default_params

    def params():
        p = default_params()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    lib.llama_model_default_params = params
    try:
        yield lines
    finally:
        lib.llama_model_default_params = default_params
        llama_cpp.llama_log_set(llama_logger.llama_log_callback, ctypes.c_void_p(0))


def with_llama(path: Path, use: Callable, n_ctx: int = 0, vocab_only: bool = False):
    """use(llama_cpp.Llama) for a GGUF file (CPU, F32 KV cache, logits of every position), closed after."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise VerificationError("reading GGUF with llama.cpp needs llama-cpp-python: pip install 'gpt2hub[llama]'") from None
    path = Path(path)
    if not path.is_file():
        raise VerificationError(f"{path}: no such file")
    with _llama_session() as log:
        try:
            # type_k/type_v 0 = GGML_TYPE_F32: an F16 KV cache would add its own rounding to the logits.
            llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_gpu_layers=0, type_k=0, type_v=0,
                        vocab_only=vocab_only, verbose=False)
        except ValueError as e:
            why = next((line for line in reversed(log) if "error" in line.lower() or "fail" in line.lower()), None)
            raise VerificationError(f"{path}: llama.cpp cannot load it ({e})" + (f": {why}" if why else "")) from None
        try:
            return use(llm)
        finally:
            llm.close()


def llama_tokenize(path: Path, text: str) -> list[int]:
    """llama.cpp's token ids for `text` from a GGUF file's own vocabulary (no BOS, no special tokens)."""
    return with_llama(path, lambda llm: llm.tokenize(text.encode("utf-8"), add_bos=False, special=False), n_ctx=64,
                      vocab_only=True)
