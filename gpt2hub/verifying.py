"""Verify a release: the parts in gpt2hub/verification/, run in order.

1. integrity of the original files (sizes, sha256 where known, every tensor's CRC32C, read in chunks; an imported
   checkpoint of another kind: opened as its kind, its hparams and tensor layout as its manifest records);
2. every converted output read back and proven exact: each tensor the transform its source implies (f32
   bit-identical, f16/bf16 rounded to nearest even, q8_0 blocks as gguf-py's quantizer), metadata as the
   release's hparams and vocabulary (the original read as its kind reads it: an HF folder, ckpt.pt, .bin, .gguf);
3. per set of weights an output holds, a float64 reference streamed layer by layer, also run in each
   consumer's arithmetic to measure that arithmetic's noise on this model;
4. each output loaded by its real consumer (transformers, llama.cpp; TensorFlow for an original in OpenAI's layout), one
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
from .errors import ConsumerCrashed, Gpt2hubError, VerificationError
from .layout import HParams
from .original import open_options, open_original
from .release import Release, locate
from .tfcheckpoint import KIND
from .vocabulary import Vocab
from .verification.consumers import (CONSUMER_MODULES, address_space, consumer_run, gpt2hub_logits, installed,  # noqa: F401
                                     one_line)
from .verification.integrity import check_integrity
from .verification.original_graph import tensorflow_logits
from .verification.outputs import Output, converted_outputs, read_back
from .verification.references import F64, forward_lanes
from .verification.report import IntegrityRow, OutputRow, Report, Row, TokenizerRow, format_report  # noqa: F401
from .verification.tokenization import TOKENIZER_TEXT, check_tokenizers  # noqa: F401
from .verification.tolerances import approximate, arithmetic_of, compare, judge  # noqa: F401
from .verification.weights import LayerCache, Proof, held_weights, prove
from .verification.foreign import ForeignProof, verify_file
from .verification.remote import RemoteProof, verify_remote
from .hub_pull import is_hub

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


def input_tokens(original: Path, n_ctx: int, n_vocab: int, prompt: str | None, n_tokens: int | None,
                 vocab=None) -> list[int]:
    """The prompt's tokens (by the folder's encoder.json + vocab.bpe, or `vocab`: the original's own vocabulary),
    or n_tokens seeded random ids; at most n_ctx."""
    if n_tokens is not None:
        if not 1 <= n_tokens <= n_ctx:
            raise VerificationError(f"--tokens {n_tokens}: must be between 1 and n_ctx ({n_ctx})")
        return np.random.default_rng(0).integers(0, n_vocab, n_tokens).tolist()
    from .tokenizer import encoding, vocab_encoding

    enc = vocab_encoding(vocab) if vocab is not None else encoding(original)
    tokens = enc.encode(DEFAULT_PROMPT if prompt is None else prompt, disallowed_special=())
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
    # the integrity rows report the damage
    release = locate(target, manifest, error=VerificationError, complete=False, kinds=_kinds(target))
    t0 = time.perf_counter()
    opened = None
    try:
        if release.kind == KIND:
            hp = HParams.from_file(release.original / "hparams.json")
        else:  # an imported checkpoint: proven against, and the reference read from, the original as its kind reads it
            opened = open_original(release)
            hp = opened.hparams
    except Gpt2hubError as e:
        if release.kind == KIND or release.manifest is None:
            raise VerificationError(str(e)) from None
        report = Report(release.name, str(release.original), device, [])  # the integrity rows say what is wrong
        report.integrity = check_integrity(release)
        report.seconds = time.perf_counter() - t0
        return report
    try:
        vocab = opened.vocab if opened is not None else None
        ids = input_tokens(release.original, hp.n_ctx, hp.n_vocab, prompt, tokens, vocab)
        report = Report(release.name, str(release.original), device, ids)
        report.notes += [f"original ({release.kind}): {n}" for n in (opened.notes if opened is not None else [])]

        say("integrity of the original files")
        report.integrity = check_integrity(release)
        if any(c.name == "checkpoint" and not c.passed for c in report.integrity):  # nothing to run
            report.seconds = time.perf_counter() - t0
            return report
        ckpt = opened.ckpt if opened is not None else Checkpoint(release.original)
        outputs = converted_outputs(release, fmts)
        read = _read_outputs(report, outputs, explicit, hp, vocab or release.original)
        say(f"exact weights and metadata of {len(read)} outputs")
        proofs = _prove_outputs(report, ckpt, read)
        layer_cache = LayerCache(ckpt)
        groups = _consumer_groups(report, release, fmts, read, proofs, layer_cache, ids, device)
        _judge_groups(report, groups, hp, ids, layer_cache, say)
        say("tokenization parity")
        report.tokenization = check_tokenizers(release.original, outputs, vocab=vocab)
    finally:
        if opened is not None:
            opened.close()
    report.seconds = time.perf_counter() - t0
    return report


def _kinds(target: str | os.PathLike | None) -> tuple[str, ...] | None:
    """Every source kind for a release in the store (by name, or a path into the store); OpenAI's layout for a
    folder elsewhere (a checkpoint of another kind is proven with `verify PATH --against NAME`)."""
    if target is None:
        return None
    path = Path(target).expanduser()
    if not (path.exists() or os.sep in str(target)):
        return None
    return None if path.absolute().is_relative_to(store.home().absolute()) else (KIND,)


def _read_outputs(report: Report, outputs: list[tuple[str, Path | None]], explicit: bool, hp: HParams,
                  original: Path | Vocab) -> list[Output]:
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
                                      "; ".join(o.problems) or "hparams, eps and vocabulary as the release"
                                      + "".join(f"; {k} approximated, as recorded" for k in o.stored.approximated)))
    return proofs


# The consumer rows that run on one set of weights: (those weights, [(row, how to get its logits)], the model they
# compute where an output approximates a field of the release's (None: the release's own)).
Group = tuple[Callable, list[tuple[Row, Callable[[], np.ndarray]]], HParams | None]


def _consumer_groups(report: Report, release: Release, fmts: list[str], read: list[Output], proofs: dict[int, Proof],
                     layer_cache: LayerCache, ids: list[int], device: str) -> list[Group]:
    """Every consumer row to run, grouped by the weights it runs on (the original's first, TensorFlow last of them)."""
    groups: dict[object, Group] = {}
    original = release.original
    src = str(original)
    # gpt2hub.model reads an imported original as its kind does (OpenAI's layout: as any folder it loads)
    as_kind = (original, ids, device) if release.kind == KIND else \
        (original, ids, device, release.kind, open_options(release))

    def add(held: tuple, row: Row, run: Callable[[], np.ndarray], computes: HParams | None = None) -> None:
        groups.setdefault((held[0], computes), (held[1], [], computes))[1].append((row, run))

    source = held_weights(layer_cache, None, None)
    if "original" in fmts:
        torch_runs: dict[str, np.ndarray] = {}

        def gpt2hub_run(which: str) -> np.ndarray:  # one model load for the one-pass and the cached rows
            if not torch_runs:
                torch_runs["full"], torch_runs["cached"] = isolation.run(gpt2hub_logits, as_kind,
                                                                         name="gpt2hub", memory_gib=address_space(device))
            return torch_runs.pop(which)

        add(source, Row("original", "f32", "gpt2hub", src, note=device), lambda: gpt2hub_run("full"))
        add(source, Row("original", "f32", "gpt2hub KV cache", src, note=device), lambda: gpt2hub_run("cached"))
    for o in read:
        add(held_weights(layer_cache, o.stored, proofs.get(id(o))),
            *consumer_run(o.format, converters.get(o.format).consumer, o.path, o.dtype, ids, device),
            o.computes)
    if "original" in fmts and release.kind != KIND:  # OpenAI's graph runs on OpenAI's layout only
        report.notes.append(f"an imported {release.kind} checkpoint: TensorFlow (OpenAI's graph) runs on OpenAI's "
                            f"layout only, so not run; `gpt2hub convert {release.name} --to tf` writes it")
    elif "original" in fmts and installed("tensorflow"):  # last of its weights: TensorFlow keeps ~2 GB after a 1558M run
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
    if any(computes is not None for _, _, computes in groups) and \
            not any(w is layer_cache and computes is None for w, _, computes in groups):
        groups.append((layer_cache, [], None))  # the source's exact model: what an approximation is measured against
    exact = next((i for i, (w, _, computes) in enumerate(groups) if w is layer_cache and computes is None), None)
    lanes = []
    for weights, members, computes in groups:
        wanted = [arithmetic_of(r.consumer.split(" (")[0], r.dtype) for r, _ in members]
        lanes.append((weights, list({a.name: a for a in [F64, *wanted] if a is not None}.values()), computes or hp))
    say(f"float64 reference on {len(lanes)} set(s) of weights, and its noise in "
        + ", ".join(sorted({a.name for _, arithmetics, _ in lanes for a in arithmetics[1:]})))
    references = forward_lanes(lanes, hp, ids)
    layer_cache.items.clear()
    exact_reference = references[exact][0] if exact is not None else None
    for (_, members, computes), (_, arithmetics, _), runs in zip(groups, lanes, references):
        reference = runs[0]
        noise = {a.name: float(np.abs(r - reference).max()) for a, r in zip(arithmetics, runs)}
        for row, run in members:
            say(f"{row.format} {row.dtype} through {row.consumer}")
            try:
                logits = run()
                report.rows.append(judge(row, reference, logits, noise))
                if computes is not None:  # judged as the model it computes; the gap to the release's shown
                    approximate(row, exact_reference, logits, hp, computes, reference)
            except Exception as e:  # what a consumer raises on a bad file is that file's FAIL row; a crash, ERROR
                row.tolerance, row.note, row.crashed = "-", one_line(e), isinstance(e, ConsumerCrashed)
                report.rows.append(row)
            gc.collect()
        runs.clear()


def verify_against(path: str | os.PathLike, against: str | None = None, *, logits: bool = True,
                   device: str = "cpu", progress: Reporter | None = None) -> ForeignProof | RemoteProof:
    """Prove a file or folder anyone wrote (any source kind, or one .safetensors/.bin state dict; or hf://ORG/REPO,
    fetched through the store's cache) tensor by tensor against a release on disk (`against`; None: every release
    on disk with its shapes), ending in a verdict; then, with `logits`, run it through its own consumer against the
    release's float64 reference."""
    if isinstance(path, str) and is_hub(path):
        return verify_remote(path, against, logits=logits, device=device, progress=progress)
    return verify_file(path, against, logits=logits, device=device)
