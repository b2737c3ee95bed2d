"""Sample text: openai/gpt-2's generate_unconditional_samples.py and interactive_conditional_samples.py
on today's stack (gpt2hub.model with a KV cache, tiktoken), streamed, stopping at <|endoftext|>.

Sampling follows openai/gpt-2 src/sample.py: logits / temperature, then top-k, then top-p (keeping
only tokens whose inclusive cumulative probability is <= p, at least one), then a draw. The logits are
shifted by their maximum before the division (the same softmax, but no value above 0, so no temperature
can overflow them), and a temperature below float32's smallest normal number is greedy: that is the
limit sampling tends to, and dividing by it would round to a division by zero. The draw uses a
torch.Generator seeded with `seed`, so a seed gives the same text on the same device and PyTorch.
"""

from __future__ import annotations

import codecs
import math
import numbers
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import Gpt2hubError
from .progress import ProgressEvent, Reporter, emit

MASKED = -1e10  # openai's value for a removed logit
HEADER_WIDTH = 40
GREEDY_BELOW = 1.1754943508222875e-38  # float32's smallest normal number: a smaller temperature samples as argmax
SEEDS = 1 << 64  # torch.Generator.manual_seed takes 0..2**64-1; sample i uses (seed + i) mod 2**64


def top_k_logits(logits, k: int):
    """Logits below the k-th largest become -1e10 (ties at the k-th survive); k=0 keeps all."""
    import torch

    if k == 0:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return torch.where(logits < kth, torch.full_like(logits, MASKED), logits)


def top_p_logits(logits, p: float):
    """openai's nucleus: keep tokens whose inclusive cumulative probability is <= p, and at least one."""
    import torch

    if p >= 1.0:
        return logits
    sorted_logits = torch.sort(logits, dim=-1, descending=True).values  # (B, V)
    cumulative = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    last = ((cumulative <= p).sum(dim=-1, keepdim=True) - 1).clamp(min=0)  # (B, 1)
    min_values = sorted_logits.gather(-1, last)
    return torch.where(logits < min_values, torch.full_like(logits, MASKED), logits)


@dataclass(frozen=True)
class Settings:
    """How to choose each next token. temperature 0 (or below GREEDY_BELOW) means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        for name, value, kind in (("temperature", self.temperature, numbers.Real), ("top-k", self.top_k, numbers.Integral),
                                  ("top-p", self.top_p, numbers.Real)):
            if not isinstance(value, kind) or isinstance(value, bool):
                raise Gpt2hubError(f"--{name} {value!r}: not {'an integer' if kind is numbers.Integral else 'a number'}")
        if not math.isfinite(self.temperature):
            raise Gpt2hubError(f"--temperature {self.temperature}: must be a finite number >= 0 (0 means greedy)")
        if self.temperature < 0:
            raise Gpt2hubError(f"--temperature {self.temperature}: must be >= 0")
        if self.top_k < 0:
            raise Gpt2hubError(f"--top-k {self.top_k}: must be >= 0 (0 means no limit)")
        if not 0.0 < self.top_p <= 1.0:
            raise Gpt2hubError(f"--top-p {self.top_p}: must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def check(self, n_vocab: int) -> None:
        """Raise Gpt2hubError where top-k asks for more tokens than the vocabulary has."""
        if self.top_k > n_vocab:
            raise Gpt2hubError(f"--top-k {self.top_k}: must be 0..{n_vocab} (the vocabulary's size; 0 means no limit)")


def check_seed(seed: int | None) -> None:
    """Raise Gpt2hubError unless `seed` is None or an integer torch can take (0..2**64-1)."""
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < SEEDS):
        raise Gpt2hubError(f"--seed {seed!r}: must be an integer in 0..{SEEDS - 1}")


def generate(model, context: Sequence[int], length: int, settings: Settings = Settings(), generator=None,
             stop: int | None = None) -> Iterator[int]:
    """Yield up to `length` new tokens after `context`, one model step each with the KV cache.

    Stops before yielding `stop` (GPT-2's <|endoftext|>).
    """
    import torch

    if not context:
        raise Gpt2hubError("generation needs at least one context token")
    if len(context) + length > model.config.n_ctx:
        raise Gpt2hubError(f"--length {length}: {len(context)} context tokens + {length} exceed n_ctx ({model.config.n_ctx})")
    settings.check(model.config.n_vocab)
    idx = torch.tensor([list(context)], device=model.device)  # (1, T)
    past = None
    with torch.inference_mode():
        for _ in range(length):
            logits, past = model(idx, past, last_only=True)
            logits = logits[:, -1, :].float()  # (1, V)
            if not bool(torch.isfinite(logits).all()):
                raise Gpt2hubError("the model gave logits that are not finite (inf or nan): its weights are damaged")
            if settings.greedy:
                idx = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
            else:
                logits = (logits - logits.max(dim=-1, keepdim=True).values) / settings.temperature  # <= 0: cannot overflow
                logits = top_p_logits(top_k_logits(logits, settings.top_k), settings.top_p)
                idx = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)  # (1, 1)
            token = int(idx)
            if token == stop:
                return
            yield token


class Sampler:
    """A release's model and tokenizer, loaded once, for any number of samples."""

    def __init__(self, target: str | os.PathLike | None = None, device: str = "cpu", manifest: Path | str | None = None):
        import torch

        from .model import from_source, resolve_device
        from .original import open_options, tokenizer_source
        from .tokenizer import vocab_encoding
        from .release import locate

        self.device = resolve_device(device)
        self.release = locate(target, manifest, kinds=None)
        self.encoding = vocab_encoding(tokenizer_source(self.release))  # the source's own, added tokens included
        # every field of the release's hparams followed (exact GELU, n_inner, eps, an untied head, ...), whatever its kind
        self.model = from_source(self.release.original, self.release.kind, self.device, torch.float32,
                                 open_options(self.release))
        self.n_ctx = self.model.config.n_ctx

    def context(self, prompt: str | None) -> list[int]:
        """The prompt's tokens, or [<|endoftext|>] for an unconditional sample."""
        if prompt is None:
            return [self.encoding.eot_token]
        tokens = self.encoding.encode(prompt, disallowed_special=())
        if not tokens:
            raise Gpt2hubError("--prompt: the text has no tokens")
        return tokens

    def plan(self, prompt: str | None, length: int | None) -> tuple[list[int], int]:
        """(context tokens, tokens to generate): the defaults of openai's scripts, within n_ctx."""
        context = self.context(prompt)
        room = self.n_ctx - len(context)
        if length is None:
            length = room if prompt is None else min(self.n_ctx // 2, room)
        if length < 1 or length > room:
            raise Gpt2hubError(f"--length {length}: must be 1..{room} ({len(context)} context tokens, n_ctx {self.n_ctx})")
        return context, length

    def sample(self, prompt: str | None, length: int | None = None, settings: Settings = Settings(),
               seed: int | None = None, progress: Reporter | None = None) -> str:
        """One sample's text (without the prompt), streamed to `progress` as `output` events as it is generated."""
        import torch

        context, length = self.plan(prompt, length)
        settings.check(self.model.config.n_vocab)
        check_seed(seed)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(secrets.randbits(63) if seed is None else seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a token may end mid-character
        pieces = []
        for token in generate(self.model, context, length, settings, generator, stop=self.encoding.eot_token):
            piece = decoder.decode(self.encoding.decode_single_token_bytes(token))
            pieces.append(piece)
            if piece:
                emit(progress, ProgressEvent.output(piece))
        tail = decoder.decode(b"", final=True)
        if tail:
            emit(progress, ProgressEvent.output(tail))
        return "".join(pieces) + tail


def sample_header(i: int) -> str:
    return "=" * HEADER_WIDTH + f" SAMPLE {i} " + "=" * HEADER_WIDTH


@dataclass
class Samples:
    """What a sampling run generated: the release, and each sample's text (without its prompt)."""

    release: str
    path: Path  # the original folder the model was read from
    texts: list[str] = field(default_factory=list)
    prompts: list[str | None] = field(default_factory=list)  # the prompt of each text; None: unconditional

    def to_dict(self) -> dict:
        return {"release": self.release, "path": str(self.path), "texts": self.texts, "prompts": self.prompts}


def generate_samples(sampler: Sampler, prompt: str | None, nsamples: int = 1, length: int | None = None, settings: Settings = Settings(),
        seed: int | None = None, progress: Reporter | None = None) -> list[str]:
    """nsamples samples (0: until interrupted); sample i uses (seed + i) mod 2**64, so a seed fixes every sample."""
    if nsamples < 0:
        raise Gpt2hubError(f"--nsamples {nsamples}: must be >= 0 (0 means until interrupted)")
    check_seed(seed)
    settings.check(sampler.model.config.n_vocab)
    sampler.plan(prompt, length)  # a bad length, seed or top-k fails before any output
    texts, i = [], 0
    while nsamples == 0 or i < nsamples:
        emit(progress, ProgressEvent.output(sample_header(i + 1) + "\n"))
        texts.append(sampler.sample(prompt, length, settings, None if seed is None else (seed + i) % SEEDS, progress))
        emit(progress, ProgressEvent.output("\n"))
        i += 1
    emit(progress, ProgressEvent.output("=" * (2 * HEADER_WIDTH + len(" SAMPLE 1 ")) + "\n"))
    return texts


def interactive(sampler: Sampler, nsamples: int = 1, length: int | None = None, settings: Settings = Settings(),
                seed: int | None = None, read: Callable[[str], str] = input, progress: Reporter | None = None) -> Samples:
    """openai's interactive loop: read a prompt, write nsamples continuations, until end of input."""
    result = Samples(sampler.release.name, sampler.release.original)
    while True:
        try:
            text = read("Model prompt >>> ")
        except EOFError:
            return result
        if not text.strip():
            emit(progress, ProgressEvent.output("Prompt should not be empty!\n"))
            continue
        texts = generate_samples(sampler, text, nsamples or 1, length, settings, seed, progress)
        result.texts += texts
        result.prompts += [text] * len(texts)


def sample(target: str | os.PathLike | None = None, *, prompt: str | None = None, nsamples: int = 1, length: int | None = None,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None, device: str = "cpu",
           manifest: Path | str | None = None, progress: Reporter | None = None) -> Samples:
    """Samples from a release: continuing `prompt`, or unconditional (from <|endoftext|>) when it is None."""
    settings = Settings(temperature, top_k, top_p)
    check_seed(seed)  # bad arguments fail before the model is loaded
    sampler = Sampler(target, device, manifest)
    texts = generate_samples(sampler, prompt, nsamples, length, settings, seed, progress)
    return Samples(sampler.release.name, sampler.release.original, texts, [prompt] * len(texts))


def sample_interactive(target: str | os.PathLike | None = None, *, read: Callable[[str], str] = input, nsamples: int = 1,
                       length: int | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       seed: int | None = None, device: str = "cpu", manifest: Path | str | None = None,
                       progress: Reporter | None = None) -> Samples:
    """openai's interactive_conditional_samples: prompts from `read` until end of input (see gpt2hub.sample_interactive)."""
    settings = Settings(temperature, top_k, top_p)
    check_seed(seed)
    return interactive(Sampler(target, device, manifest), nsamples, length, settings, seed, read, progress)
