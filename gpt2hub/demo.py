"""`gpt2hub demo`: a small GPT-2 release built offline, served on loopback, then pull, convert, verify, sample."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import converters
from .errors import Gpt2hubError
from .layout import HParams, tensor_shapes
from .tfcheckpoint import write_checkpoint
from .tokenizer import generated_vocab

DEMO_NAME = "gpt2hub-demo"
DEMO_HPARAMS = dict(n_ctx=128, n_embd=64, n_head=4, n_layer=2)
CHECKPOINT_TEXT = 'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'
# A MetaGraphDef holding only meta_info_def.meta_graph_version: readers never need the graph.
META_GRAPH = b"\x0a\x0e\x0a\x0cgpt2hub-demo"

# (scale, offset) of "trained-looking" random values, by the last part of the variable's name:
# LayerNorm gains near 1, small biases, small weights.
INIT: dict[str, tuple[float, float]] = {
    "g": (0.1, 1.0),
    "b": (0.01, 0.0),
    "wpe": (0.01, 0.0),
    "wte": (0.02, 0.0),
    "w": (0.02, 0.0),
}
LAYERNORM_BIAS_SCALE = 0.05


def random_value(name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A float32 value for variable `name`, seeded by (seed, name) alone, so any tensor can be recomputed."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    a = rng.standard_normal(shape, dtype=np.float32)
    leaf = name.rsplit("/", 1)[1]
    scale, offset = INIT[leaf]
    if leaf == "b" and "/ln_" in name:
        scale = LAYERNORM_BIAS_SCALE
    a *= np.float32(scale)
    a += np.float32(offset)
    return a


def build_release(folder: Path | str, *, n_ctx: int = 128, n_embd: int = 64, n_head: int = 4, n_layer: int = 2,
                  seed: int = 0, vocab: Path | None = None) -> Path:
    """Write a release in OpenAI's layout with random weights, without TensorFlow.

    `vocab` is a folder holding encoder.json and vocab.bpe; without it a small byte-level BPE is trained.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if vocab is not None:
        encoder, merges = (Path(vocab) / "encoder.json").read_text(), (Path(vocab) / "vocab.bpe").read_text()
    else:
        encoder, merges = generated_vocab()
    (folder / "encoder.json").write_text(encoder)
    (folder / "vocab.bpe").write_text(merges)
    n_vocab = len(re.findall(r'":\s*\d+', encoder))  # one "token": id pair per entry
    h = HParams(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer)
    write_checkpoint(folder / "model.ckpt", ((n, random_value(n, s, seed)) for n, s in tensor_shapes(h).items()))
    (folder / "hparams.json").write_text(h.to_json())
    (folder / "checkpoint").write_text(CHECKPOINT_TEXT)
    (folder / "model.ckpt.meta").write_bytes(META_GRAPH)
    return folder


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves files under the server's root with single byte ranges, as a blob store does."""

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        root: Path = self.server.root  # type: ignore[attr-defined]
        path = (root / self.path.lstrip("/").split("?")[0]).resolve()
        if root not in path.parents or not path.is_file():
            body = b"<?xml version=\"1.0\"?><Error><Code>BlobNotFound</Code></Error>"
            self.send_response(404)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if head:
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                self.wfile.write(chunk)
                left -= len(chunk)


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve `root` over HTTP on 127.0.0.1 (a free port) and yield its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.root = Path(root).resolve()  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Step:
    name: str
    ok: bool | None = None  # None: skipped
    detail: str = ""
    seconds: float = 0.0


@dataclass
class DemoReport:
    steps: list[Step] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)


# Each conversion the demo makes: (format, dtype, the package it needs).
CONVERSIONS = tuple((f.name, dtype, f.requires) for f in converters.formats() for dtype in f.demo_dtypes)


def run_demo(workdir: Path | str | None = None, *, device: str = "cpu",
             say: Callable[[str], None] = print) -> DemoReport:
    """Build, serve, pull, convert, verify and sample a tiny release; every step reported, none skipped silently."""
    import gpt2hub
    from . import registry

    report = DemoReport()
    keep = workdir is not None
    work = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="gpt2hub-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    saved_home = os.environ.get("GPT2HUB_HOME")
    os.environ["GPT2HUB_HOME"] = str(work / "home")

    def step(name: str, action: Callable[[], str], needs: str | None = None) -> bool:
        if needs and importlib.util.find_spec(needs) is None:
            report.steps.append(Step(name, None, f"skipped: needs {needs} (pip install 'gpt2hub[all]')"))
            say(f"[skip] {name}: needs {needs} (pip install 'gpt2hub[all]')")
            return False
        started = time.perf_counter()
        try:
            detail = action()
            ok = True
        except Gpt2hubError as e:
            detail, ok = str(e), False
        s = Step(name, ok, detail, time.perf_counter() - started)
        report.steps.append(s)
        say(f"[{'ok' if ok else 'FAIL'}] {name} ({s.seconds:.1f} s): {detail}")
        return ok

    try:
        served = work / "served"
        folder = served / DEMO_NAME
        manifest_path = work / f"{DEMO_NAME}.json"

        def build() -> str:
            build_release(folder, **DEMO_HPARAMS)
            m = registry.create_manifest(folder, DEMO_NAME)
            registry.write_manifest(m, manifest_path)
            return f"{m.parameters:,} parameters, {len(m.tensors)} tensors, TF bundle written without TensorFlow in {folder}"

        if not step("build a release in OpenAI's layout", build):
            return report
        with serve(served) as base:
            def pull() -> str:
                path = gpt2hub.pull(DEMO_NAME, manifest=manifest_path, sources=[base], quiet=True)
                return f"{base}/{DEMO_NAME}/ -> {path} (sizes and sha256 checked)"

            if not step("pull over HTTP from loopback", pull):
                return report
        for fmt, dtype, needs in CONVERSIONS:
            def convert(fmt: str = fmt, dtype: str = dtype) -> str:
                out = gpt2hub.convert(DEMO_NAME, to=fmt, dtype=dtype, manifest=manifest_path, quiet=True)
                return str(out)

            step(f"convert to {fmt} {dtype}", convert, needs)

        def verify() -> str:
            result = gpt2hub.verify(DEMO_NAME, manifest=manifest_path, device=device)
            failed = [f"{r.format} {r.dtype} ({r.consumer})" for r in result.rows if not r.passed]
            failed += [c.name for c in result.integrity if not c.passed]
            failed += [t.tokenizer for t in result.tokenization if not t.passed]
            if not result.passed:
                raise Gpt2hubError(f"verify failed: {', '.join(failed)}")
            consumers = sorted({r.consumer for r in result.rows})
            return (f"{len(result.integrity)} integrity checks, {len(result.rows)} logit rows "
                    f"({', '.join(consumers)}), {len(result.tokenization)} tokenizers: all PASS")

        step("verify every format through its consumer", verify, "torch")

        def sample() -> str:
            texts = gpt2hub.sample(DEMO_NAME, prompt="The model", length=8, seed=1, manifest=manifest_path,
                                   device=device, write=lambda s: None)
            return repr(texts[0])

        step("sample 8 tokens", sample, "torch")
        return report
    finally:
        if saved_home is None:
            os.environ.pop("GPT2HUB_HOME", None)
        else:
            os.environ["GPT2HUB_HOME"] = saved_home
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
