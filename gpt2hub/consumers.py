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


def ggml_quantize(rows: np.ndarray, qtype: int) -> np.ndarray:
    """ggml's own quantizer (`ggml_quantize_chunk` in llama-cpp-python's libggml-base, no imatrix): float32
    rows (n, k) -> the type's block bytes (n, bytes per row), the reference a GGUF's blocks are checked against."""
    import ctypes
    import os

    import gguf

    try:
        import llama_cpp
    except ImportError:
        raise VerificationError("ggml's quantizer comes with llama-cpp-python: pip install 'gpt2hub[llama]'") from None
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    quantize = lib.ggml_quantize_chunk
    quantize.restype = ctypes.c_size_t
    quantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                         ctypes.c_int64, ctypes.c_void_p]
    src = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, rows.shape[-1])
    out = np.empty(gguf.quants.quant_shape_to_byte_shape(src.shape, gguf.GGMLQuantizationType(qtype)), np.uint8)
    n = quantize(int(qtype), src.ctypes.data, out.ctypes.data, 0, src.shape[0], src.shape[1], None)
    if n != out.nbytes:
        raise VerificationError(f"ggml_quantize_chunk wrote {n} bytes for {out.nbytes} expected")
    return out


def onnxruntime_logits(folder: Path | str, tokens: Sequence[int]) -> np.ndarray:
    """onnxruntime's logits (len(tokens), n_vocab) for a folder's model.onnx, fed as optimum feeds a first step."""
    try:
        import onnxruntime
    except ImportError:
        raise VerificationError("running ONNX needs onnxruntime: pip install 'gpt2hub[onnx]'") from None
    path = Path(folder) / "model.onnx"
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a bad model
        raise VerificationError(f"{path}: onnxruntime cannot load it ({one_line_of(e)})") from None
    ids = np.array([list(tokens)], np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):  # the first step: a past of length 0
            feed[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    return session.run(["logits"], feed)[0][0]


def one_line_of(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
