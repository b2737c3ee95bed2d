"""Verify a release: the parts in gpt2hub/verification/, run in order.

1. integrity of the original files (sizes, sha256 where known, every tensor's CRC32C, read in chunks);
2. every converted output read back and proven exact: each tensor the transform its source implies (f32
   bit-identical, f16/bf16 rounded to nearest even, q8_0 blocks as gguf-py's quantizer), metadata as the
   release's hparams and vocabulary;
3. per set of weights an output holds, a float64 reference streamed layer by layer, also run in each
   consumer's arithmetic to measure that arithmetic's noise on this model;
4. each output loaded by its real consumer (transformers, llama.cpp; TensorFlow for the original), one
   after another, judged against its reference within SAFETY x the measured noise;
5. tokenization parity of every tokenizer the release ships.
Every consumer (TensorFlow, gpt2hub.model, transformers, llama.cpp, tokenizers) runs in a child process of its
own (gpt2hub.isolation): its memory is returned when it ends, and a crash there is that row's ERROR.
No torch/TensorFlow/llama.cpp import happens until a check needs it.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import converters, isolation, store
from .progress import ProgressEvent, Reporter, emit
from .errors import ConsumerCrashed, ConversionError, VerificationError
from .layout import HParams
from .release import locate
from .verification.consumers import (CONSUMER_MODULES, address_space, consumer_run, gpt2hub_logits, installed,  # noqa: F401
                                     one_line)
from .verification.integrity import check_integrity
from .verification.original_graph import tensorflow_logits
from .verification.outputs import Output, converted_outputs, read_back
from .verification.references import F64, forward_lanes
from .verification.report import IntegrityRow, OutputRow, Report, Row, TokenizerRow, format_report  # noqa: F401
from .verification.tokenization import TOKENIZER_TEXT, check_tokenizers  # noqa: F401
from .verification.tolerances import arithmetic_of, compare, judge  # noqa: F401
from .verification.weights import LayerCache, Proof, held_weights, prove

# The default input: prose with punctuation, digits and a quote; long enough to exercise attention.
DEFAULT_PROMPT = (
    "In 2019, OpenAI released a language model called GPT-2 in four sizes. The smallest has 124 million "
    "parameters; the largest, 1.5 billion. \"We're not releasing the full model,\" they wrote at first, "
    "and the weights arrived in stages over nine months. Today the checkpoints still load, and"
)


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
    """Run every check on a pulled release (NAME) or a folder (DIR); FAIL rows make `.passed` False."""
    if prompt is not None and tokens is not None:
        raise VerificationError("--prompt and --tokens exclude each other")
    fmts, explicit = parse_formats(formats)
    isolation.limits()  # a consumer limit that is not a number: one line now, not an ERROR in every row

    def say(step: str) -> None:
        emit(progress, ProgressEvent.message(f"verify: {step}"))

    if importlib.util.find_spec("torch") is None:
        raise VerificationError("verify needs PyTorch: pip install 'gpt2hub[torch]'")
    from .model import resolve_device
    from .tfcheckpoint import Checkpoint

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
    ckpt = Checkpoint(release.original)
    outputs = converted_outputs(release, fmts)
    read = _read_outputs(report, outputs, explicit, hp, release.original)
    say(f"exact weights and metadata of {len(read)} outputs")
    proofs = _prove_outputs(report, ckpt, read)
    layer_cache = LayerCache(ckpt)
    groups = _consumer_groups(report, release.original, fmts, read, proofs, layer_cache, ids, device)
    _judge_groups(report, groups, hp, ids, layer_cache, say)
    say("tokenization parity")
    report.tokenization = check_tokenizers(release.original, outputs)
    report.seconds = time.perf_counter() - t0
    return report


def _read_outputs(report: Report, outputs: list[tuple[str, Path | None]], explicit: bool, hp: HParams,
                  original: Path) -> list[Output]:
    """Every converted output read back; one that cannot be is a row of its own, and its consumer still runs."""
    read: list[Output] = []
    for fmt, path in outputs:
        if path is None:
            if explicit:
                report.rows.append(Row(fmt, "-", converters.get(fmt).consumer, "-", tolerance="-", note="not converted"))
            continue
        try:
            read.append(read_back(fmt, path, hp, original))
        except NotImplementedError as e:  # a format that cannot be read back exactly: said, and its consumer runs
            report.files.append(OutputRow(fmt, "-", "weights", str(path), True, str(e)))
            read.append(Output(fmt, path, None, []))
            continue
        except Exception as e:  # an output that cannot be read back fails its checks; its consumer still runs
            report.files.append(OutputRow(fmt, "-", "weights", str(path), False, one_line(e)))
            read.append(Output(fmt, path, None, []))
    return read


def _prove_outputs(report: Report, ckpt, read: list[Output]) -> dict[int, Proof]:
    """Each read-back output's tensors proven against the checkpoint and its metadata checked: id(output) -> proof."""
    proven = [o for o in read if o.stored is not None]
    proofs = dict(zip(map(id, proven), prove(ckpt, [(o.stored.tensors, o.stored.expected) for o in proven])))
    for o in proven:
        proof = proofs[id(o)]
        report.files.append(OutputRow(o.format, o.dtype, "weights", str(o.path), proof.passed, proof.detail()))
        report.files.append(OutputRow(o.format, o.dtype, "metadata", str(o.path), not o.problems,
                                      "; ".join(o.problems) or "hparams, eps and vocabulary as the release"))
    return proofs


# The consumer rows that run on one set of weights: (those weights, [(row, how to get its logits)]).
Group = tuple[Callable, list[tuple[Row, Callable[[], np.ndarray]]]]


def _consumer_groups(report: Report, original: Path, fmts: list[str], read: list[Output], proofs: dict[int, Proof],
                     layer_cache: LayerCache, ids: list[int], device: str) -> list[Group]:
    """Every consumer row to run, grouped by the weights it runs on (the original's first, TensorFlow last of them)."""
    groups: dict[object, Group] = {}
    src = str(original)

    def add(held: tuple, row: Row, run: Callable[[], np.ndarray]) -> None:
        groups.setdefault(held[0], (held[1], []))[1].append((row, run))

    source = held_weights(layer_cache, None, None)
    if "original" in fmts:
        torch_runs: dict[str, np.ndarray] = {}

        def gpt2hub_run(which: str) -> np.ndarray:  # one model load for the one-pass and the cached rows
            if not torch_runs:
                torch_runs["full"], torch_runs["cached"] = isolation.run(gpt2hub_logits, (original, ids, device),
                                                                         name="gpt2hub", memory_gib=address_space(device))
            return torch_runs.pop(which)

        add(source, Row("original", "f32", "gpt2hub", src, note=device), lambda: gpt2hub_run("full"))
        add(source, Row("original", "f32", "gpt2hub KV cache", src, note=device), lambda: gpt2hub_run("cached"))
    for o in read:
        add(held_weights(layer_cache, o.stored, proofs.get(id(o))),
            *consumer_run(o.format, converters.get(o.format).consumer, o.path, o.dtype, ids, device))
    if "original" in fmts and installed("tensorflow"):  # last of its weights: TensorFlow keeps ~2 GB after a 1558M run
        tf_row = Row("original", "f64", "tensorflow", src)

        def tf_run() -> np.ndarray:  # OpenAI's graph (f32) if model.ckpt.meta has the forward, else a transcription (f64)
            logits, tf_row.dtype, tf_row.note = isolation.run(tensorflow_logits, (original, ids), name="tensorflow")
            return logits

        add(source, tf_row, tf_run)
    elif "original" in fmts:
        report.notes.append("TensorFlow not installed: the original graph was not run")
    return list(groups.values())


def _judge_groups(report: Report, groups: list[Group], hp: HParams, ids: list[int], layer_cache: LayerCache,
                  say: Callable[[str], None]) -> None:
    """Per group, the float64 reference and its noise in each consumer's arithmetic; then each consumer, judged."""
    lanes = []
    for weights, members in groups:
        wanted = [arithmetic_of(r.consumer.split(" (")[0], r.dtype) for r, _ in members]
        lanes.append((weights, list({a.name: a for a in [F64, *wanted] if a is not None}.values())))
    say(f"float64 reference on {len(lanes)} set(s) of weights, and its noise in "
        + ", ".join(sorted({a.name for _, arithmetics in lanes for a in arithmetics[1:]})))
    references = forward_lanes(lanes, hp, ids)
    layer_cache.items.clear()
    for (_, members), (_, arithmetics), runs in zip(groups, lanes, references):
        reference = runs[0]
        noise = {a.name: float(np.abs(r - reference).max()) for a, r in zip(arithmetics, runs)}
        for row, run in members:
            say(f"{row.format} {row.dtype} through {row.consumer}")
            try:
                report.rows.append(judge(row, reference, run(), noise))
            except Exception as e:  # what a consumer raises on a bad file is that file's FAIL row; a crash, ERROR
                row.tolerance, row.note, row.crashed = "-", one_line(e), isinstance(e, ConsumerCrashed)
                report.rows.append(row)
            gc.collect()
        runs.clear()

