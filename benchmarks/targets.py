"""Benchmark the newer targets: the GGUF quantization ladder, llm.c and ONNX (size, time, peak RSS, quality).

    python benchmarks/targets.py --shape 124M [--release DIR] [--work DIR] [--formats gguf,llmc,onnx]

Each conversion runs in its own fresh subprocess (`gpt2hub convert ... --json`): wall time and peak
RSS (wait4's ru_maxrss) are of that process, and the output's size on disk is reported. Then each
output is run by its consumer on the same 64 input tokens as `gpt2hub verify` and compared with the
float64 reference: mean KL(reference || output) and top-1 agreement (GGUF through llama.cpp, ONNX
through onnxruntime, llm.c through gpt2hub's loader of it). For gguf, the lines llama.cpp's mixes
report (which tensor got which type) are printed once per type. Run under the big-memory lock:
    flock /tmp/gpt2hub-bigmem.lock python benchmarks/targets.py --shape 124M
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from convert import generate_release, measure  # benchmarks/convert.py: a generated release; one fresh process's wall time, peak RSS, stdout

ROOT = Path(__file__).resolve().parents[1]
ROWS = [("gguf", d) for d in ("f16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0", "q4_k_m", "q4_k_s", "q4_1",
                               "q4_0", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k")] + \
       [("llmc", "f32"), ("llmc", "bf16"), ("onnx", "f32"), ("onnx", "f16")]


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def quality(release: Path, fmt: str, out: Path) -> tuple[float, float]:
    """(mean KL, top-1 agreement) of the output's consumer against the float64 reference, verify's tokens."""
    import numpy as np

    from gpt2hub import converters
    from gpt2hub.layout import HParams
    from gpt2hub import verifying as verify

    h = HParams.from_file(release / "hparams.json")
    ids = verify.input_tokens(release, h.n_ctx, h.n_vocab, None, None)
    reference, _ = verify.reference_logits(release, ids)
    form = converters.get(fmt)
    logits, _, _ = verify.CONSUMER_LOGITS[form.consumer](form, out, ids, "cpu")
    m = verify.compare(reference, np.asarray(logits, dtype=np.float64))
    return m["kl"], m["top1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="124M")
    ap.add_argument("--release", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--formats", default="gguf,llmc,onnx")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--quality-of", nargs=3, metavar=("RELEASE", "FORMAT", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quality_of:  # in its own process: the parent stays small, so its children's peak RSS is their own
        print(json.dumps(quality(Path(a.quality_of[0]), a.quality_of[1], Path(a.quality_of[2]))))
        return
    wanted = set(a.formats.split(","))
    work = Path(a.work or tempfile.mkdtemp(prefix="gpt2hub-bench-targets-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        release = a.release or generate_release(work, a.shape)
        data = release / "model.ckpt.data-00000-of-00001"
        subprocess.run(["cat", str(data)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        print(f"\nrelease {release.name} ({a.shape if a.release is None else 'given'}), data file "
              f"{data.stat().st_size:,} bytes; one run per row, page cache warm\n")
        print("| format | dtype | size (MB) | wall (s) | peak RSS (MB) | KL | top-1 |")
        print("|---|---|---|---|---|---|---|")
        for fmt, dtype in (r for r in ROWS if r[0] in wanted):
            out = work / (f"out-{dtype}.gguf" if fmt == "gguf" else f"out-{fmt}-{dtype}")
            cmd = [sys.executable, "-m", "gpt2hub.cli", "convert", str(release), "--to", fmt, "--dtype", dtype,
                   "--out", str(out), "--json", "--force"]
            wall, rss, stdout = measure(cmd)
            notes = json.loads(stdout).get("notes", [])
            kl, top1 = (float("nan"), float("nan")) if a.no_quality else json.loads(measure(
                [sys.executable, __file__, "--quality-of", str(release), fmt, str(out)])[2])
            print(f"| {fmt} | {dtype} | {size_of(out) / 1e6:.1f} | {wall:.2f} | {rss:.0f} | {kl:.2e} | {top1:.3f} |",
                  flush=True)
            for line in notes:
                print(f"|   | {line} | | | | | |", flush=True)
            shutil.rmtree(out) if out.is_dir() else out.unlink()
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
