"""`gpt2hub demo`: a small GPT-2 release built offline, served on loopback, then pull, convert, verify, sample."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import converters, offline, settings
from .errors import Gpt2hubError
from .progress import ProgressEvent, Reporter, emit
from .testing.trained import build_demo_release
from .testing.server import serve

DEMO_NAME = "gpt2hub-demo"


@dataclass
class Step:
    name: str
    ok: bool | None = None  # None: skipped
    detail: str = ""
    seconds: float = 0.0


@dataclass
class DemoReport:
    steps: list[Step] = field(default_factory=list)
    next_steps: str = ""  # with a kept store: how to point gpt2hub at it, and a few commands to try

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)


# Each conversion the demo makes: (format, dtype, the package it needs).
CONVERSIONS = tuple((f.name, dtype, f.requires) for f in converters.formats() for dtype in f.demo_dtypes)


def run_demo(workdir: Path | str | None = None, *, device: str = "cpu", progress: Reporter | None = None) -> DemoReport:
    """Build, serve, pull, convert, verify and sample a tiny release; each step's line an `output` event, none skipped silently."""
    report = DemoReport()
    keep = workdir is not None
    if keep:
        report.next_steps = next_steps(workdir)
    work = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="gpt2hub-demo-"))
    work.mkdir(parents=True, exist_ok=True)

    def step(name: str, action: Callable[[], str], needs: str | None = None) -> bool:
        if needs and importlib.util.find_spec(needs) is None:
            report.steps.append(Step(name, None, f"skipped: needs {needs} (pip install 'gpt2hub[all]')"))
            emit(progress, ProgressEvent.output(f"[skip] {name}: needs {needs} (pip install 'gpt2hub[all]')\n"))
            return False
        started = time.perf_counter()
        try:
            detail = action()
            ok = True
        except Gpt2hubError as e:
            detail, ok = str(e), False
        s = Step(name, ok, detail, time.perf_counter() - started)
        report.steps.append(s)
        emit(progress, ProgressEvent.output(f"[{'ok' if ok else 'FAIL'}] {name} ({s.seconds:.1f} s): {detail}\n"))
        return ok

    try:
        # The demo's own store (a kept one usable with GPT2HUB_HOME alone), put back after.
        with settings.overridden({settings.HOME: str(work / "home"), settings.MANIFESTS: ""}):
            _steps(work, step, device)
        return report
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _steps(work: Path, step: Callable[..., bool], device: str) -> None:
    """The demo's steps in order, each through `step`; a failed build or pull stops the rest."""
    import gpt2hub
    from . import registry

    served = work / "served"
    folder = served / DEMO_NAME
    manifest_path = manifest_in(work / "home")  # where every command run with GPT2HUB_HOME=<work>/home finds it

    def build() -> str:
        build_demo_release(folder)  # a tiny GPT-2 trained on a page of text, so its sample reads like text
        m = registry.create_manifest(folder, DEMO_NAME)
        registry.save_user_manifest(m)
        return (f"{m.parameters:,} trained parameters, {len(m.tensors)} tensors, TF bundle written without "
                f"TensorFlow in {folder}")

    if not step("build a release in OpenAI's layout", build):
        return
    if offline.enabled():  # no connection at all, not even to loopback: pull from the folder it would serve
        def pull() -> str:
            path = gpt2hub.pull(DEMO_NAME, manifest=manifest_path, sources=[str(served)]).path
            return f"{folder} -> {path} (sizes and sha256 checked)"

        if not step(f"pull from a folder (offline, {offline.ENV}=1)", pull):
            return
    else:
        with serve(served) as base:
            def pull() -> str:
                path = gpt2hub.pull(DEMO_NAME, manifest=manifest_path, sources=[base]).path
                return f"{base}/{DEMO_NAME}/ -> {path} (sizes and sha256 checked)"

            if not step("pull over HTTP from loopback", pull):
                return
    for fmt, dtype, needs in CONVERSIONS:
        def convert(fmt: str = fmt, dtype: str = dtype) -> str:
            # force: a demo kept in the same folder before converted these; they are the demo's own to replace
            return str(gpt2hub.convert(DEMO_NAME, to=fmt, dtype=dtype, manifest=manifest_path, force=True).path)

        step(f"convert to {fmt} {dtype}", convert, needs)

    step("verify every format through its consumer", lambda: _verify(manifest_path, device), "torch")

    def sample() -> str:
        samples = gpt2hub.sample(DEMO_NAME, prompt="The model", length=8, seed=1, manifest=manifest_path, device=device)
        return repr(samples.texts[0])

    step("sample 8 tokens", sample, "torch")


def manifest_in(home: Path) -> Path:
    """The demo release's manifest in a store's home: <home>/manifests/gpt2hub-demo.json."""
    return home / "manifests" / f"{DEMO_NAME}.json"


def next_steps(workdir: Path | str) -> str:
    """What to try on a store the demo kept: the line that points commands at it, then a few commands."""
    home = Path(workdir).resolve() / "home"
    return "\n".join(["the demo's store is kept; point gpt2hub at it with:",
                       f"  export {settings.HOME}={shlex.quote(str(home))}",
                       "then try:",
                       *(f"  gpt2hub {command}" for command in TRY)])


# What `demo --keep` suggests, each a command README shows with its output.
TRY = ("list", f"du {DEMO_NAME}", f"verify {DEMO_NAME} --formats original,safetensors",
       f'sample {DEMO_NAME} --prompt "The quick" --length 8 --seed 1')


def _verify(manifest_path: Path, device: str) -> str:
    """The demo's verify step: a one-line summary, or a Gpt2hubError naming what failed."""
    import gpt2hub

    result = gpt2hub.verify(DEMO_NAME, manifest=manifest_path, device=device)
    failed = [f"{r.format} {r.dtype} ({r.consumer})" for r in result.rows if not r.passed]
    failed += [c.name for c in result.integrity if not c.passed]
    failed += [f"{Path(f.source).name} {f.what}" for f in result.files if not f.passed]
    failed += [t.tokenizer for t in result.tokenization if not t.passed]
    if not result.passed:
        raise Gpt2hubError(f"verify failed: {', '.join(failed)}")
    consumers = sorted({r.consumer for r in result.rows})
    return (f"{len(result.integrity)} integrity checks, {len(result.files)} exact output checks, {len(result.rows)} logit rows "
            f"({', '.join(consumers)}), {len(result.tokenization)} tokenizers: all PASS")
