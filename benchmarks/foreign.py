"""Benchmark `gpt2hub verify FILE --against NAME --weights-only` on files others write, against `sha256sum` of them.

    python benchmarks/foreign.py --shape 124M|1558M [--work DIR] [--repeat 1] [--files safetensors,q4_k_m]

A release-shaped set of weights (GPT-2's initialisation, std 0.02: gpt2hub.testing.regimes, written a tensor at a
time) is written in OpenAI's layout with GPT-2's real vocabulary; from it, the files people download:
  safetensors  one f32 model.safetensors under Hugging Face's names, written by the safetensors library from the
               release's memory-mapped tensors (no copy in memory)
  q4_k_m       a Q4_K_M GGUF: `gpt2hub convert --to gguf --dtype f32`, then llama.cpp's llama_model_quantize (via
               llama-cpp-python, as llama-quantize runs it); the f32 GGUF is deleted once quantized
Rows, each a fresh child process whose wall time and peak RSS (RUSAGE_CHILDREN's ru_maxrss, in a small runner that
has no other child: see benchmarks/sources.py) are measured, alternating with `sha256sum` of the same file (what a
user would otherwise do, and it proves nothing about the weights): verify's time over sha256sum's is the ratio.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sources import measure  # noqa: E402  (the runner that measures one child's wall time and peak RSS)

from gpt2hub.testing.release import REAL_FIXTURES, SHAPES  # noqa: E402

FILES = ("safetensors", "q4_k_m")


def write_release(folder: Path, shape: str) -> Path:
    from gpt2hub.testing.regimes import write_regime_release

    return write_regime_release(folder, **SHAPES[shape], regime="gpt2", vocab="real")


def write_safetensors(release: Path, path: Path) -> Path:
    """The release's weights as transformers' GPT2LMHeadModel names them (Conv1D (in, out), tied head left out),
    saved by the safetensors library straight from the checkpoint's memory map."""
    from safetensors.numpy import save_file

    from gpt2hub.converters.hf import reference_names
    from gpt2hub.layout import HParams
    from gpt2hub.tfcheckpoint import Checkpoint

    h = HParams.from_file(release / "hparams.json")
    with Checkpoint(release) as ckpt:
        tensors = {}
        for tf, name in reference_names(h.n_layer).items():
            value = ckpt.tensor(tf)
            tensors["transformer." + name] = value[0] if value.ndim == 3 else value  # Conv1D's [1, in, out]
        save_file(tensors, path, metadata={"format": "pt"})
        del tensors
    return path


def write_q4_k_m(release: Path, path: Path) -> Path:
    """gpt2hub's f32 GGUF of the release, quantized to Q4_K_M by llama.cpp's own quantizer."""
    import llama_cpp

    f32 = path.with_suffix(".f32.gguf")
    subprocess.run([sys.executable, "-m", "gpt2hub.cli", "convert", str(release), "--to", "gguf", "--dtype", "f32",
                    "--out", str(f32), "--quiet"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)  # else a line per tensor
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(os.fsencode(f32), os.fsencode(path), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize failed on {f32}")
    f32.unlink()
    return path


WRITERS = {"safetensors": (write_safetensors, "model.safetensors"), "q4_k_m": (write_q4_k_m, "model-Q4_K_M.gguf")}


def bench(kind: str, release: Path, work: Path, repeat: int) -> tuple[str, float, float, float, float, str]:
    """(row, median verify s, peak RSS MB, median sha256sum s, file GB, verdict) for one file."""
    writer, name = WRITERS[kind]
    t0 = time.perf_counter()
    path = writer(release, work / name)
    size = path.stat().st_size
    print(f"{kind}: wrote {path.name} ({size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
          flush=True)
    cmd = [sys.executable, "-m", "gpt2hub.cli", "verify", str(path), "--against", str(release), "--weights-only",
           "--json"]
    walls, shas, rss, verdict = [], [], 0.0, ""
    for _ in range(repeat):
        shas.append(measure(["sha256sum", str(path)])[0])
        wall, peak, stdout = measure(cmd)
        walls.append(wall)
        rss = max(rss, peak)
        proof = json.loads(stdout)
        verdict = ("PASS " if proof["passed"] else "FAIL ") + proof["verdict"]
    path.unlink()
    return kind, statistics.median(walls), rss, statistics.median(shas), size / 1e9, verdict


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("124M", "1558M"), default="124M")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--files", default=",".join(FILES))
    args = ap.parse_args(argv)
    if REAL_FIXTURES is None:
        raise SystemExit("../shared/fixtures/openai-124M-real is needed (GPT-2's vocabulary for the release)")
    kinds = [k for k in args.files.split(",") if k in WRITERS]
    work = args.work or Path(tempfile.mkdtemp(prefix="gpt2hub-foreign-"))
    os.environ["GPT2HUB_HOME"] = str(work / "home")  # the children's store: nothing of the user's is read
    rows = []
    try:
        t0 = time.perf_counter()
        release = write_release(work / f"random-{args.shape}", args.shape)
        print(f"release {args.shape}: written in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for kind in kinds:
            rows.append(bench(kind, release, work, args.repeat))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"shape {args.shape}; median of {args.repeat}; {os.cpu_count()} CPUs; sha256sum of the same file, "
          "run alternately")
    print(f"{'FILE':12} {'GB':>6} {'VERIFY s':>9} {'PEAK RSS MB':>11} {'sha256sum s':>11} {'RATIO':>7}  VERDICT")
    for kind, wall, rss, sha, gb, verdict in rows:
        print(f"{kind:12} {gb:6.2f} {wall:9.2f} {rss:11.0f} {sha:11.2f} {wall / sha:6.1f}x  {verdict}")


if __name__ == "__main__":
    main()
