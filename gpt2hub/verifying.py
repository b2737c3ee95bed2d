"""Verify a release: file integrity, reference logits, every converted format through its real consumer.

1. integrity of the original files (sizes, sha256 where known, every tensor's CRC32C);
2. reference logits: gpt2hub.model in float64 on the CPU, straight from the TF checkpoint;
3. a second, independent reference where TensorFlow is installed: openai/gpt-2 src/model.py's graph,
   written with today's tf ops, run by TensorFlow on the variables TensorFlow itself reads;
4. each converted output loaded by the program people load it with (transformers, llama.cpp);
   gpt2hub.model only where that program is not installed, and the row says so. TensorFlow and
   every consumer run in a child process (gpt2hub.isolation): one that crashes is an ERROR row;
5. one row per output: max/mean |delta logit|, top-1 agreement and KL divergence against the
   reference, judged by the tolerance of its (dtype, consumer) from TOLERANCES;
6. tokenization parity: tiktoken on encoder.json/vocab.bpe vs tokenizer.json vs llama.cpp's GGUF vocab.
No torch/TensorFlow/llama.cpp import happens until a check needs it.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import converters, isolation, store
from .errors import ChecksumError, CheckpointError, ConsumerCrashed, ConversionError, Gpt2hubError, VerificationError
from .layout import HParams, is_model_tensor
from .registry import sha256_file
from .progress import ProgressEvent, Reporter, emit
from .release import Release, locate

# The default input: prose with punctuation, digits and a quote; long enough to exercise attention.
DEFAULT_PROMPT = (
    "In 2019, OpenAI released a language model called GPT-2 in four sizes. The smallest has 124 million "
    "parameters; the largest, 1.5 billion. \"We're not releasing the full model,\" they wrote at first, "
    "and the weights arrived in stages over nine months. Today the checkpoints still load, and"
)

# Tokenization parity text: whitespace runs, contractions, digits, non-Latin scripts, emoji.
TOKENIZER_TEXT = (
    "Hello world!  Two  spaces,   three,\ttab,\n\nnewlines\r\n and trailing   \n"
    "It's, I'm, we'll, they're, I'd, you've, don't; IT'S LOUD. 'quoted' \"double\"\n"
    "Digits: 0 7 42 1234567890 3.14159 1,000,000 2026-11-23 0x1F\n"
    "Ünïcödé café naïve résumé; Ελληνικά; Русский текст; עברית; العربية; हिन्दी; 日本語のテキスト; 中文; 한국어\n"
    "Emoji: 🙂 👍🏽 👨‍👩‍👧‍👦 🇺🇳 ✨🚀  — en–dash … «guillemets» ¿qué? ¡sí!\n"
    "    indented code(x) {return x**2;}  // end   "
)

CONSUMER_MODULES = {"transformers": "transformers", "llama.cpp": "llama_cpp", "tensorflow": "tensorflow", "gpt2hub": "torch",
                    "onnxruntime": "onnxruntime"}


@dataclass(frozen=True)
class Tolerance:
    """A row passes when max|delta| <= max_abs * scale, KL <= kl and top-1 agreement >= top1.

    scale = max(1, max|reference logit|): fp32 rounding and quantization errors grow with the
    logits' magnitude (GPT-2's real logits sit near -100; random test weights near 0.5).
    """

    max_abs: float
    kl: float | None = None
    top1: float | None = None
    why: str = ""

    def describe(self, scale: float) -> str:
        parts = [f"max<={self.max_abs * scale:.1e}"]
        if self.kl is not None:
            parts.append(f"KL<={self.kl:.0e}")
        if self.top1 is not None:
            parts.append(f"top1>={self.top1:g}")
        return " ".join(parts)


# (dtype, consumer) -> tolerance. max_abs is in units of the scale above. Set ~10x (KL: >=100x) above
# the worst value measured on generated releases (tiny and 124M shape, random weights, gpt2hub's
# converters, this 2-core x86-64 CPU), shown as "seen"; the f32 rows are the sharp test of a conversion,
# the half-precision and 8-bit rows a sanity bound judged mainly by KL. "gpt2hub" = our model as the
# fallback consumer (weights dequantized, float32 maths).
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("f64", "tensorflow"): Tolerance(1e-9, 1e-12, 1.0, "seen 3.8e-15: same maths in float64"),
    ("f64", "gpt2hub KV cache"): Tolerance(1e-9, 1e-12, 1.0, "seen 2.9e-15: cached and full passes"),
    ("f32", "gpt2hub"): Tolerance(1e-5, 1e-7, None, "seen 7.1e-7, KL 8e-14: float32 rounding"),
    ("f32", "transformers"): Tolerance(1e-5, 1e-7, None, "seen 7.4e-7, KL 8e-14: float32 rounding"),
    ("f16", "transformers"): Tolerance(2e-2, 1e-3, None, "seen 1.5e-3, KL 4e-7: fp16 weights and maths"),
    ("bf16", "transformers"): Tolerance(1e-1, 5e-3, None, "seen 1.3e-2, KL 2.6e-5: bf16 weights and maths"),
    ("f32", "llama.cpp"): Tolerance(5e-3, 1e-4, None, "seen 4.6e-4, KL 3e-8: GELU through an fp16 table"),
    ("f16", "llama.cpp"): Tolerance(2e-2, 1e-3, None, "seen 9.0e-4, KL 1.5e-7: fp16 weights, fp16 matmul inputs"),
    ("bf16", "llama.cpp"): Tolerance(1e-1, 5e-3, None, "seen 7.4e-3, KL 8e-6: bf16 weights, bf16 matmul inputs"),
    ("q8_0", "llama.cpp"): Tolerance(2e-1, 1e-2, None, "seen 2.3e-2, KL 9.6e-5: 8-bit weights, 8-bit matmul inputs"),
    ("f16", "gpt2hub"): Tolerance(1e-2, 1e-3, None, "seen 8.5e-4, KL 1.3e-7: fp16 weights, f32 maths"),
    ("bf16", "gpt2hub"): Tolerance(1e-1, 5e-3, None, "seen 6.8e-3, KL 8e-6: bf16 weights, f32 maths"),
    ("q8_0", "gpt2hub"): Tolerance(2e-1, 1e-2, None, "seen 1.7e-2, KL 5.7e-5: 8-bit weights, f32 maths"),
    ("f32", "onnxruntime"): Tolerance(1e-5, 1e-7, None, "seen 4.3e-7: float32 rounding"),
    ("f16", "onnxruntime"): Tolerance(1e-2, 1e-3, None, "fp16 weights, f32 maths (as gpt2hub's f16 row)"),
}
# The GGUF quantization ladder below q8_0: the worst (max|delta|, KL) seen on generated releases (tiny,
# n_embd 256 where K-quants apply, and the 124M shape) through llama.cpp and through the gpt2hub fallback
# (equal within 5%: the same dequantized weights); tolerances are 10x both, a sanity bound judged mainly by KL.
LADDER_SEEN = {
    "q6_k": (7.8e-2, 6.4e-4), "q5_k_m": (1.3e-1, 1.8e-3), "q5_k_s": (1.4e-1, 2.1e-3), "q5_1": (1.5e-1, 2.8e-3),
    "q5_0": (1.6e-1, 3.7e-3), "q4_k_m": (2.4e-1, 6.2e-3), "q4_k_s": (2.3e-1, 7.0e-3), "q4_1": (2.8e-1, 1.1e-2),
    "q4_0": (3.1e-1, 1.4e-2), "q3_k_l": (3.3e-1, 1.1e-2), "q3_k_m": (3.5e-1, 1.3e-2), "q3_k_s": (5.0e-1, 3.6e-2),
    "q2_k": (6.8e-1, 5.9e-2),
}
TOLERANCES.update({(dtype, consumer): Tolerance(10 * seen_max, 10 * seen_kl, None, f"seen {seen_max:.1e}, KL {seen_kl:.1e}")
                   for dtype, (seen_max, seen_kl) in LADDER_SEEN.items() for consumer in ("llama.cpp", "gpt2hub")})


@dataclass
class Check:
    """One integrity fact about the original files."""

    name: str
    passed: bool
    detail: str


@dataclass
class Row:
    """One output compared with the reference logits."""

    format: str
    dtype: str
    consumer: str
    source: str
    max_abs: float | None = None
    mean_abs: float | None = None
    top1: float | None = None
    kl: float | None = None
    tolerance: str = ""
    passed: bool = False
    note: str = ""
    crashed: bool = False  # the consumer's process died (note says how): status ERROR

    @property
    def status(self) -> str:
        return "ERROR" if self.crashed else "PASS" if self.passed else "FAIL"


@dataclass
class TokenizerRow:
    """One tokenizer's ids for TOKENIZER_TEXT, compared with tiktoken's."""

    tokenizer: str
    source: str
    n_tokens: int | None
    passed: bool
    detail: str = ""
    crashed: bool = False  # the tokenizer's process died (detail says how): status ERROR

    @property
    def status(self) -> str:
        return "ERROR" if self.crashed else "PASS" if self.passed else "FAIL"


@dataclass
class Report:
    release: str
    original: str
    device: str
    tokens: list[int]
    integrity: list[Check] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    tokenization: list[TokenizerRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.integrity) and all(r.passed for r in self.rows) \
            and all(t.passed for t in self.tokenization)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        for key, items in (("rows", self.rows), ("tokenization", self.tokenization)):
            for out, item in zip(d[key], items):
                out["status"] = item.status
        return d

    def to_text(self) -> str:
        """The report as text tables, as `gpt2hub verify` prints it."""
        return format_report(self)


# --- where things are -------------------------------------------------------------------------


def converted_outputs(release: Release, formats: Sequence[str]) -> list[tuple[str, Path | None]]:
    """(format, path) for each requested converted format, one per file of a file format; (format, None) if absent."""
    out: list[tuple[str, Path | None]] = []
    for fmt in formats:
        if fmt == "original":
            continue
        found = [p for p in release.output_paths(fmt) if converters.get(fmt).is_output(p)]
        out.extend((fmt, p) for p in found) if found else out.append((fmt, None))
    return out


def parse_formats(formats: Sequence[str] | str | None) -> tuple[list[str], bool]:
    """(formats, explicit): all formats when None; a one-line error for an unknown name."""
    if formats is None:
        return list(store.FORMATS), False
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f.strip()]
    formats = [f.strip() for f in formats]
    for f in formats:
        if f not in store.FORMATS:
            raise VerificationError(f"unknown format {f!r}; formats: {', '.join(store.FORMATS)}")
    return formats, True


# --- 1. integrity -----------------------------------------------------------------------------


def check_integrity(release: Release) -> list[Check]:
    """Sizes and sha256 from the manifest (where known), hparams, and every tensor's CRC32C."""
    from .tfcheckpoint import Checkpoint

    checks: list[Check] = []
    folder = release.original
    if release.manifest is None:
        checks.append(Check("manifest", True, "none for a folder: sizes and sha256 not checked (use --manifest)"))
    else:
        record = store.read_verified(release.name) if release.in_store else None
        pulled = record.files if record is not None else {}
        whose_sha = {"published": "manifest (verified: published sha256)",
                     "measured": "manifest (verified: the sha256 measured from your own files)",
                     "shared": "manifest (verified: sha256 of 124M's identical published file)",
                     "mirror": "manifest (not verified: the mirror's own sha256 only)",
                     "expected": "manifest (not verified: an expected sha256)"}
        for rec in release.manifest.files:
            path = folder / rec.name
            if not path.is_file():
                checks.append(Check(rec.name, False, "missing"))
                continue
            size = path.stat().st_size
            if rec.size is not None and size != rec.size:
                checks.append(Check(rec.name, False, f"size {size:,}, manifest says {rec.size:,}"
                                    + (" (an expected size, not yet confirmed by anyone)" if rec.status == "expected" else "")))
                continue
            # sha256: the manifest's, else the one pull measured (catches damage since the pull), saying what
            # pull checked that one against.
            info = pulled.get(rec.name)
            known, whose = rec.sha256, whose_sha.get(rec.status, rec.status)
            if (known is None or rec.status in ("expected", "mirror")) and info is not None and info.sha256 \
                    and info.size == size:
                known, whose = info.sha256, f"pull's record (pull checked it: {info.check.label})"
            if known:
                digest = sha256_file(path)
                ok = digest == known
                checks.append(Check(rec.name, ok, f"sha256 matches {whose}" if ok else f"sha256 {digest} != {whose} {known}"))
            else:
                checks.append(Check(rec.name, True, f"size {size:,}" + (" matches (size only: not verified)"
                                                                        if rec.size is not None else "; no sha256 known")))
    try:
        hparams = HParams.from_file(folder / "hparams.json")
        ckpt = Checkpoint(folder)
    except Gpt2hubError as e:
        return checks + [Check("checkpoint", False, str(e))]
    if release.manifest is not None and hparams != release.manifest.hparams:
        checks.append(Check("hparams.json", False, f"{hparams.to_dict()} != manifest {release.manifest.hparams.to_dict()}"))
    bad, n = [], 0
    for name in ckpt.entries:
        if not is_model_tensor(name):
            continue
        n += 1
        try:
            ckpt.verify(name)
        except ChecksumError:
            bad.append(name)
    detail = f"all {n} tensors match the index" if not bad else f"{len(bad)} of {n} tensors fail, e.g. {bad[0]}"
    checks.append(Check("CRC32C", not bad, detail))
    return checks


# --- 2. the reference, 3. the original graph on TensorFlow -----------------------------------


def _to_numpy(logits) -> np.ndarray:
    """(1, T, V) torch logits -> (T, V) float64 numpy."""
    import torch

    return logits.detach().to("cpu", dtype=torch.float64).numpy()[0]


def reference_logits(original: Path, tokens: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(logits in one pass, logits through the KV cache in two), float64 on the CPU, (T, n_vocab) each."""
    import torch

    from .model import from_checkpoint

    model = from_checkpoint(original, "cpu", torch.float64)
    idx = torch.tensor([list(tokens)])
    with torch.inference_mode():
        full, _ = model(idx)
        cut = max(1, len(tokens) // 2)
        first, past = model(idx[:, :cut])
        rest, _ = model(idx[:, cut:], past) if cut < len(tokens) else (first[:, :0], None)
    return _to_numpy(full), _to_numpy(torch.cat((first, rest), dim=1))


def _import_tensorflow():
    """Import TensorFlow with its C++ start-up lines (absl, oneDNN banners) kept off the terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf


def tf_original_graph(original: Path, tokens: Sequence[int], dtype: str = "float64") -> np.ndarray:
    """openai/gpt-2 src/model.py, op for op, on today's TensorFlow (eager), fed the checkpoint's
    variables as TensorFlow reads them. Returns (T, n_vocab) logits."""
    tf = _import_tensorflow()

    hp = HParams.from_file(original / "hparams.json")
    try:
        reader = tf.train.load_checkpoint(str(original / "model.ckpt"))
    except tf.errors.OpError as e:
        raise CheckpointError(f"TensorFlow cannot open {original / 'model.ckpt'}: {e.message.splitlines()[0]}") from None

    def var(name: str):  # cast one variable at its use, so only float32 copies stay resident
        try:
            return tf.cast(reader.get_tensor("model/" + name), dtype)
        except tf.errors.OpError as e:
            raise CheckpointError(f"TensorFlow cannot read model/{name}: {e.message.splitlines()[0]}") from None

    def shape_list(x):
        static, dynamic = x.shape.as_list(), tf.shape(x)
        return [dynamic[i] if s is None else s for i, s in enumerate(static)]

    def norm(x, scope, epsilon=1e-5):
        g, b = var(scope + "/g"), var(scope + "/b")
        u = tf.reduce_mean(x, axis=-1, keepdims=True)
        s = tf.reduce_mean(tf.square(x - u), axis=-1, keepdims=True)
        return (x - u) * tf.math.rsqrt(s + epsilon) * g + b

    def split_states(x, n):
        *start, m = shape_list(x)
        return tf.reshape(x, start + [n, m // n])

    def merge_states(x):
        *start, a, b = shape_list(x)
        return tf.reshape(x, start + [a * b])

    def conv1d(x, scope, nf):
        *start, nx = shape_list(x)
        w, b = var(scope + "/w"), var(scope + "/b")
        return tf.reshape(tf.matmul(tf.reshape(x, [-1, nx]), tf.reshape(w, [-1, nf])) + b, start + [nf])

    def attention_mask(nd, ns):
        i = tf.range(nd)[:, None]
        j = tf.range(ns)
        return tf.cast(i >= j - ns + nd, dtype)

    def attn(x, scope, n_state, past):
        def split_heads(x):
            return tf.transpose(split_states(x, hp.n_head), [0, 2, 1, 3])

        def mask_attn_weights(w):
            _, _, nd, ns = shape_list(w)
            b = tf.reshape(attention_mask(nd, ns), [1, 1, nd, ns])
            return w * b - tf.cast(1e10, dtype) * (1 - b)

        def multihead_attn(q, k, v):
            w = tf.matmul(q, k, transpose_b=True)
            w = w * tf.math.rsqrt(tf.cast(shape_list(v)[-1], dtype))
            w = tf.nn.softmax(mask_attn_weights(w), axis=-1)
            return tf.matmul(w, v)

        c = conv1d(x, scope + "/c_attn", n_state * 3)
        q, k, v = map(split_heads, tf.split(c, 3, axis=2))
        present = tf.stack([k, v], axis=1)
        if past is not None:
            pk, pv = tf.unstack(past, axis=1)
            k, v = tf.concat([pk, k], axis=-2), tf.concat([pv, v], axis=-2)
        a = merge_states(tf.transpose(multihead_attn(q, k, v), [0, 2, 1, 3]))
        return conv1d(a, scope + "/c_proj", n_state), present

    def gelu(x):
        return 0.5 * x * (1 + tf.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * tf.pow(x, 3))))

    def mlp(x, scope, n_state):
        return conv1d(gelu(conv1d(x, scope + "/c_fc", n_state)), scope + "/c_proj", shape_list(x)[-1])

    def block(x, scope, past):
        a, present = attn(norm(x, scope + "/ln_1"), scope + "/attn", x.shape[-1], past)
        x = x + a
        x = x + mlp(norm(x, scope + "/ln_2"), scope + "/mlp", x.shape[-1] * 4)
        return x, present

    X = tf.constant([list(tokens)], dtype=tf.int32)
    batch, sequence = shape_list(X)
    wte, wpe = var("wte"), var("wpe")
    h = tf.gather(wte, X) + tf.gather(wpe, tf.range(sequence)[None, :])
    for layer in range(hp.n_layer):
        h, _ = block(h, f"h{layer}", None)
    h = norm(h, "ln_f")
    logits = tf.matmul(tf.reshape(h, [batch * sequence, hp.n_embd]), wte, transpose_b=True)
    return tf.reshape(logits, [sequence, hp.n_vocab]).numpy().astype(np.float64)


# --- 4. the consumers -------------------------------------------------------------------------


def installed(consumer: str) -> bool:
    return importlib.util.find_spec(CONSUMER_MODULES[consumer]) is not None


def transformers_logits(folder: Path, tokens: Sequence[int], device: str) -> tuple[np.ndarray, str]:
    """transformers' GPT2LMHeadModel.from_pretrained on an HF folder: (logits, dtype name)."""
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = GPT2LMHeadModel.from_pretrained(folder, dtype="auto").to(device).eval()
    except Exception as e:  # transformers raises many kinds for a bad folder
        raise ConversionError(f"{folder}: transformers cannot load it ({one_line(e)})") from None
    dtype = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}[model.dtype]
    with torch.inference_mode():
        logits = model(torch.tensor([list(tokens)], device=device)).logits
    return _to_numpy(logits), dtype


_LLAMA_LOG: list[str] = []  # llama.cpp's recent log lines, kept for error messages instead of printed
_LLAMA_LOG_CALLBACK = None


def _capture_llama_log() -> None:
    import ctypes

    import llama_cpp

    global _LLAMA_LOG_CALLBACK
    if _LLAMA_LOG_CALLBACK is None:
        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data) -> None:
            _LLAMA_LOG.append(text.decode("utf-8", "replace").strip())
            del _LLAMA_LOG[:-20]

        _LLAMA_LOG_CALLBACK = callback
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def open_llama(path: Path, n_ctx: int = 0):
    """gpt2hub.consumers.load_llama (CPU, f32 KV cache, every position's logits), its log kept for errors."""
    from .consumers import load_llama

    _capture_llama_log()
    try:
        return load_llama(path, n_ctx=n_ctx)
    except VerificationError as e:
        why = next((line for line in reversed(_LLAMA_LOG) if "error" in line.lower() or "fail" in line.lower()), None)
        raise VerificationError(f"{e}: {why}" if why else str(e)) from None


def llama_logits(path: Path, tokens: Sequence[int]) -> np.ndarray:
    """llama.cpp's logits for every position, as llama-cpp-python's eval computes them."""
    from .consumers import llama_logits as logits

    _capture_llama_log()
    return logits(path, tokens).astype(np.float64)


def onnxruntime_logits(path: Path, tokens: Sequence[int]) -> np.ndarray:
    """onnxruntime's logits for every position of a first (cache-less) step, on the CPU."""
    from .consumers import onnxruntime_logits as logits

    return logits(path, tokens).astype(np.float64)


def gpt2hub_logits(path: Path, tokens: Sequence[int], device: str) -> np.ndarray:
    """gpt2hub.model in float32 on `device`, from any format."""
    import torch

    from .model import load

    model = load(path, device, torch.float32)
    with torch.inference_mode():
        return _to_numpy(model(torch.tensor([list(tokens)], device=device))[0])


# consumer -> (format, path, tokens, device) -> (logits, dtype, note)
CONSUMER_LOGITS = {
    # transformers and llama.cpp run in a child process each (a crash there is that row's ERROR)
    "transformers": lambda form, path, tokens, device: (
        *isolation.run(transformers_logits, (path, tokens, device), name="transformers"), device),
    "llama.cpp": lambda form, path, tokens, device: (
        isolation.run(llama_logits, (path, tokens), name="llama.cpp"), form.read_dtype(path), "cpu, f32 KV cache"),
    # a format no other program loads: gpt2hub.model through the format's read_weights
    "gpt2hub": lambda form, path, tokens, device: (gpt2hub_logits(path, tokens, device), form.read_dtype(path), device),
    "onnxruntime": lambda form, path, tokens, device: (onnxruntime_logits(path, tokens), form.read_dtype(path), "cpu"),
}


# --- 5. comparing -----------------------------------------------------------------------------


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """max and mean |delta|, top-1 agreement and mean KL(reference || logits) over positions."""
    if logits.shape != reference.shape:
        raise ConversionError(f"logits have shape {list(logits.shape)}, the reference {list(reference.shape)}")
    delta = np.abs(logits - reference)
    lp, lq = _log_softmax(reference), _log_softmax(logits.astype(np.float64))
    kl = float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))
    top1 = float(np.mean(reference.argmax(-1) == logits.argmax(-1)))
    if not np.all(np.isfinite(logits)):
        return {"max_abs": float("inf"), "mean_abs": float("inf"), "top1": top1, "kl": float("inf")}
    return {"max_abs": float(delta.max()), "mean_abs": float(delta.mean()), "top1": top1, "kl": max(kl, 0.0)}


def judge(row: Row, reference: np.ndarray, logits: np.ndarray) -> Row:
    """Fill a row's metrics and verdict from its (dtype, consumer) tolerance."""
    m = compare(reference, logits)
    row.max_abs, row.mean_abs, row.top1, row.kl = m["max_abs"], m["mean_abs"], m["top1"], m["kl"]
    key = (row.dtype, row.consumer.split(" (")[0])
    tol = TOLERANCES.get(key)
    if tol is None:
        row.tolerance, row.passed = "none known", False
        row.note = (row.note + "; " if row.note else "") + f"no tolerance for {key}"
        return row
    scale = max(1.0, float(np.abs(reference).max()))
    row.tolerance = tol.describe(scale)
    row.passed = (m["max_abs"] <= tol.max_abs * scale
                  and (tol.kl is None or m["kl"] <= tol.kl)
                  and (tol.top1 is None or m["top1"] >= tol.top1))
    return row


# --- 6. tokenization ----------------------------------------------------------------------------


def one_line(e: BaseException) -> str:
    """An exception as one line: gpt2hub's own message, else its type and first line."""
    if isinstance(e, Gpt2hubError):
        return str(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _first_difference(a: Sequence[int], b: Sequence[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"differs at token {i} ({list(a[i:i + 3])} vs tiktoken {list(b[i:i + 3])})"


def check_tokenizers(original: Path, outputs: Sequence[tuple[str, Path | None]], text: str = TOKENIZER_TEXT) -> list[TokenizerRow]:
    """tiktoken's ids for `text`, and whether every other tokenizer of the release gives the same."""
    from .tokenizer import encoding

    enc = encoding(original)
    ref = enc.encode(text)
    rows = [TokenizerRow("tiktoken", str(original), len(ref), enc.decode(ref) == text,
                         "decode(encode(text)) == text" if enc.decode(ref) == text else "does not round-trip")]
    for fmt, path in outputs:
        reader = converters.get(fmt).tokenizer
        source = reader.file(path) if reader is not None and path is not None else None
        if source is None or importlib.util.find_spec(reader.requires) is None:
            continue
        name = reader.name
        try:
            ids = isolation.run(reader.ids, (source, text), name=name)
        except Exception as e:  # a tokenizer that cannot load is that file's FAIL row; one that crashes, ERROR
            rows.append(TokenizerRow(name, str(source), None, False, one_line(e), isinstance(e, ConsumerCrashed)))
            continue
        rows.append(TokenizerRow(name, str(source), len(ids), ids == ref, "same ids" if ids == ref else _first_difference(ids, ref)))
    return rows


# --- the run ------------------------------------------------------------------------------------


def input_tokens(original: Path, n_ctx: int, n_vocab: int, prompt: str | None, n_tokens: int | None) -> list[int]:
    """The prompt's tokens, or n_tokens seeded random ids; at most n_ctx."""
    if n_tokens is not None:
        if not 1 <= n_tokens <= n_ctx:
            raise VerificationError(f"--tokens {n_tokens}: must be between 1 and n_ctx ({n_ctx})")
        return np.random.default_rng(0).integers(0, n_vocab, n_tokens).tolist()
    from .tokenizer import encoding

    tokens = encoding(original).encode(DEFAULT_PROMPT if prompt is None else prompt, disallowed_special=())
    if not tokens:
        raise VerificationError("--prompt: the text has no tokens")
    return tokens[:n_ctx]


def verify(target: str | os.PathLike | None = None, *, formats: Sequence[str] | str | None = None, device: str = "cpu",
           prompt: str | None = None, tokens: int | None = None, manifest: Path | str | None = None,
           progress: Reporter | None = None) -> Report:
    """Run every check on a pulled release (NAME) or a folder (DIR); FAIL rows make `.passed` False (see gpt2hub.verify)."""
    if prompt is not None and tokens is not None:
        raise VerificationError("--prompt and --tokens exclude each other")
    fmts, explicit = parse_formats(formats)
    def say(step: str) -> None:
        emit(progress, ProgressEvent.message(f"verify: {step}"))

    if importlib.util.find_spec("torch") is None:
        raise VerificationError("verify needs PyTorch: pip install 'gpt2hub[torch]'")
    from .model import resolve_device

    device = str(resolve_device(device))
    release = locate(target, manifest, error=VerificationError, complete=False)  # integrity rows report the damage
    t0 = time.perf_counter()
    try:
        hp = HParams.from_file(release.original / "hparams.json")
    except ConversionError as e:
        raise VerificationError(str(e)) from None
    ids = input_tokens(release.original, hp.n_ctx, hp.n_vocab, prompt, tokens)
    report = Report(release.name, str(release.original), device, ids)

    say("integrity of the original files")
    report.integrity = check_integrity(release)
    if any(c.name == "checkpoint" and not c.passed for c in report.integrity):  # nothing to run
        report.seconds = time.perf_counter() - t0
        return report

    say("reference logits (float64, CPU)")
    reference, cached = reference_logits(release.original, ids)
    src = str(release.original)
    if "original" in fmts:
        report.rows.append(judge(Row("original", "f64", "gpt2hub KV cache", src), reference, cached))
        if installed("tensorflow"):
            say("the original graph on TensorFlow")
            try:
                logits = isolation.run(tf_original_graph, (release.original, ids), name="tensorflow")
                report.rows.append(judge(Row("original", "f64", "tensorflow", src), reference, logits))
            except Exception as e:  # TensorFlow refusing the checkpoint is a FAIL row, crashing an ERROR row
                report.rows.append(Row("original", "f64", "tensorflow", src, tolerance="-", note=one_line(e),
                                       crashed=isinstance(e, ConsumerCrashed)))
        else:
            report.notes.append("TensorFlow not installed: the second reference (the original graph) was skipped")
        say(f"gpt2hub float32 on {device}")
        report.rows.append(judge(Row("original", "f32", "gpt2hub", src, note=device), reference,
                                 gpt2hub_logits(release.original, ids, device)))
        gc.collect()

    outputs = converted_outputs(release, fmts)
    for fmt, path in outputs:
        form = converters.get(fmt)
        consumer = form.consumer
        if path is None:
            if explicit:
                report.rows.append(Row(fmt, "-", consumer, "-", tolerance="-", note="not converted"))
            continue
        say(f"{fmt}: {path.name} through {consumer if installed(consumer) else 'gpt2hub'}")
        try:
            if not installed(consumer):
                row = Row(fmt, form.read_dtype(path), f"gpt2hub ({consumer} not installed)", str(path))
                logits = gpt2hub_logits(path, ids, device)
            else:
                logits, dtype, note = CONSUMER_LOGITS[consumer](form, path, ids, device)
                row = Row(fmt, dtype, consumer, str(path), note=note)
            report.rows.append(judge(row, reference, logits))
        except Exception as e:  # what a consumer raises on a bad file is that file's FAIL row; a crash, ERROR
            report.rows.append(Row(fmt, "-", consumer, str(path), tolerance="-", note=one_line(e),
                                   crashed=isinstance(e, ConsumerCrashed)))
        gc.collect()

    say("tokenization parity")
    report.tokenization = check_tokenizers(release.original, outputs)
    report.seconds = time.perf_counter() - t0
    return report


def format_report(report: Report) -> str:
    """The report as text tables, as `gpt2hub verify` prints it."""
    def table(rows: list[list[str]]) -> list[str]:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]

    def num(x: float | None, fmt: str = ".2e") -> str:
        return "-" if x is None else format(x, fmt)

    lines = [f"{report.release}: {report.original}", f"input: {len(report.tokens)} tokens; device {report.device}", ""]
    lines += table([["CHECK", "STATUS", "DETAIL"]] + [[c.name, "PASS" if c.passed else "FAIL", c.detail] for c in report.integrity])
    lines.append("")
    rows = [["FORMAT", "DTYPE", "CONSUMER", "MAX|Δ|", "MEAN|Δ|", "TOP-1", "KL", "TOLERANCE", "STATUS", "NOTE"]]
    for r in report.rows:
        one_file = r.format in converters.names() and not converters.get(r.format).writes_folder
        rows.append([f"{r.format}:{Path(r.source).name}" if one_file else r.format, r.dtype, r.consumer,
                     num(r.max_abs), num(r.mean_abs), num(r.top1, ".3f"), num(r.kl), r.tolerance, r.status, r.note])
    lines += table(rows)
    if report.tokenization:
        lines.append("")
        lines += table([["TOKENIZER", "TOKENS", "STATUS", "DETAIL", "SOURCE"]] +
                       [[t.tokenizer, str(t.n_tokens), t.status, t.detail, t.source] for t in report.tokenization])
    lines += [""] + [f"note: {n}" for n in report.notes]
    failed = sum(not c.passed for c in report.integrity) + sum(not r.passed for r in report.rows) \
        + sum(not t.passed for t in report.tokenization)
    lines.append(f"{'PASS' if report.passed else f'FAIL ({failed} failed)'} in {report.seconds:.1f} s")
    return "\n".join(lines)
