"""The programs people load each output with, one function each: paths and token ids in, numpy logits out
(TensorFlow, the original checkpoint's own, is in original_graph.py).

Nothing here keeps state between calls (llama.cpp's log goes to a callback only while a call runs), so
each call can run in a child process and give all its memory back when it returns.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ConversionError, VerificationError, one_line
from ..llamacpp import with_llama
from .report import Row

CONSUMER_MODULES = {"transformers": "transformers", "llama.cpp": "llama_cpp", "tensorflow": "tensorflow", "gpt2hub": "torch",
                    "onnxruntime": "onnxruntime"}
TORCH_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64"}


def installed(consumer: str) -> bool:
    return importlib.util.find_spec(CONSUMER_MODULES[consumer]) is not None


def consumer_run(fmt: str, consumer: str, path: Path, dtype: str, tokens: Sequence[int], device: str) -> tuple[Row, Callable[[], np.ndarray]]:
    """The row an output's consumer fills, and how to get its logits: the program in a child process of its own
    (gpt2hub.isolation), so its memory is returned when it ends and a crash is that row's ERROR; gpt2hub.model
    where the program is missing, or for a format no other program loads."""
    from .. import isolation

    memory = address_space(device)
    if not installed(consumer) or consumer == "gpt2hub":
        name = consumer if consumer == "gpt2hub" else f"gpt2hub ({consumer} not installed)"
        return Row(fmt, dtype, name, str(path), note=device), \
            lambda: isolation.run(gpt2hub_logits, (path, tokens, device), name="gpt2hub", memory_gib=memory)[0]
    if consumer == "llama.cpp":
        return Row(fmt, dtype, consumer, str(path), note="cpu,f32-KV-cache"), \
            lambda: isolation.run(llama_logits, (path, tokens), name="llama.cpp")
    if consumer == "tensorflow":  # a TF checkpoint folder: run as the original is (original_graph.py)
        row = Row(fmt, dtype, consumer, str(path))

        def tensorflow_run() -> np.ndarray:  # the row says what ran: OpenAI's graph (f32) or the transcription (f64)
            from .original_graph import tensorflow_logits

            logits, row.dtype, row.note = isolation.run(tensorflow_logits, (path, tokens), name=consumer)
            return logits

        return row, tensorflow_run
    if consumer == "onnxruntime":
        return Row(fmt, dtype, consumer, str(path), note="cpu"), \
            lambda: isolation.run(onnxruntime_logits, (path, tokens), name=consumer)
    return Row(fmt, dtype, consumer, str(path), note=device), \
        lambda: isolation.run(transformers_logits, (path, tokens, device), name=consumer, memory_gib=memory)[0]


def address_space(device: str) -> float | None:
    """The address-space limit of a torch child on `device`: the default ($GPT2HUB_CONSUMER_MEMORY) on the CPU;
    none on a GPU, whose driver reserves tens of GB of address space it never touches (the time limit holds)."""
    return None if device == "cpu" else 0


# --- PyTorch: gpt2hub.model and transformers -----------------------------------------------------

def _numpy(logits) -> np.ndarray:
    """(1, T, V) torch logits -> (T, V) numpy on the CPU, in their own precision."""
    import torch

    t = logits.detach().cpu()
    return (t if t.dtype == torch.float64 else t.float()).numpy()[0]


def gpt2hub_logits(path: Path, tokens: Sequence[int], device: str, kind: str | None = None,
                   options=None) -> tuple[np.ndarray, np.ndarray]:
    """gpt2hub.model in float32 on `device` from any format, or from a checkpoint read as source `kind` (with
    source_kinds.OpenOptions `options`): (one pass, KV cache in two passes), (T, V) each."""
    import torch

    from ..model import from_source, load

    model = load(path, device, torch.float32) if kind is None else from_source(path, kind, device, torch.float32, options)
    idx = torch.tensor([list(tokens)], device=device)
    with torch.inference_mode():
        full, _ = model(idx)
        cut = max(1, len(tokens) // 2)
        first, past = model(idx[:, :cut])
        rest, _ = model(idx[:, cut:], past) if cut < len(tokens) else (first[:, :0], None)
    return _numpy(full), _numpy(torch.cat((first, rest), dim=1))


def transformers_logits(folder: Path, tokens: Sequence[int], device: str) -> tuple[np.ndarray, str]:
    """transformers' GPT2LMHeadModel.from_pretrained on an HF folder: (logits, the dtype it computed in)."""
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from ..converters import hf

    hf.read_config(Path(folder))  # hparams within HParams' caps before transformers builds a model of that size
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = GPT2LMHeadModel.from_pretrained(folder, dtype="auto").to(device).eval()
    except Exception as e:  # transformers raises many kinds for a bad folder
        raise ConversionError(f"{folder}: transformers cannot load it ({one_line(e)})") from None
    dtype = TORCH_DTYPES[str(model.dtype).removeprefix("torch.")]
    with torch.inference_mode():
        logits = model(torch.tensor([list(tokens)], device=device)).logits
    return _numpy(logits), dtype


# --- onnxruntime -----------------------------------------------------------

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
        raise VerificationError(f"{path}: onnxruntime cannot load it ({one_line(e)})") from None
    ids = np.array([list(tokens)], np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):  # the first step: a past of length 0
            feed[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    return session.run(["logits"], feed)[0][0]


# --- llama.cpp ------------------------------------------------------------------------------------

def llama_logits(path: Path, tokens: Sequence[int]) -> np.ndarray:
    """llama.cpp's logits (len(tokens), n_vocab) for one sequence, as llama-cpp-python's eval computes them."""
    def run(llm) -> np.ndarray:
        llm.reset()
        llm.eval(list(tokens))
        return np.array(llm.scores[: llm.n_tokens], dtype=np.float32)

    return with_llama(path, run)
