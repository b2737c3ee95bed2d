"""Benchmark `gpt2hub verify`: wall time and peak RSS at real shapes, every format, both weight regimes.

    python benchmarks/verify.py --shape 1558M --regime harsh [--work DIR] [--keep]

Writes a release of the shape (gpt2hub/testing/regimes.py, TF-free writer, real vocabulary; at 124M OpenAI's real
model.ckpt.meta, so TensorFlow runs OpenAI's own graph), converts it with
`gpt2hub convert` to safetensors, pytorch, gguf f16 and gguf q8_0, then runs `gpt2hub verify DIR --json` in a
fresh subprocess and reports its wall time, peak RSS (wait4's ru_maxrss), exit code and every row (max|Δ|,
measured noise, bound). With --sabotage it also breaks one tensor of the q8_0 file (a block's scale doubled)
and one config (n_head) and checks verify exits 1 on each. The release is deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gpt2hub.testing.release import REAL_FIXTURES  # noqa: E402
GPT2HUB = [sys.executable, "-m", "gpt2hub.cli"]
# `gpt2hub verify DIR --json`, with each step's start time and resident memory (now / peak) printed first.
STAGES = """
import json, sys, time
from gpt2hub.verifying import verify
t0 = time.perf_counter()
def memory():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return " / ".join(f"{int(status[k].split()[0]) / 2**20:.2f}" for k in ("VmRSS", "VmHWM"))
def say(event):
    print(f"| {time.perf_counter() - t0:6.1f} s | {memory()} GB | {getattr(event, 'text', event)} |", flush=True)
print("| at | RSS now / peak | step |\\n|---|---|---|")
report = verify(sys.argv[1], progress=say)
say("done")
print(json.dumps(report.to_dict()))
"""
CONVERSIONS = (("safetensors", "f32"), ("pytorch", "f32"), ("gguf", "f16"), ("gguf", "q8_0"))


def run_isolated(cmd: list[str]) -> tuple[float, float, int, str]:
    """The command under a tiny wrapper so its ru_maxrss is its own, not the max over earlier children."""
    wrapper = ("import os, subprocess, sys, time, resource, json\n"
               "t0 = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "print(json.dumps({'wall': time.perf_counter() - t0, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
               " 'rc': p.returncode, 'out': p.stdout, 'err': p.stderr[-3000:]}))")
    res = json.loads(subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=ROOT, capture_output=True, text=True).stdout)
    if res["rc"] not in (0, 1) or not res["out"]:
        print(res["err"], file=sys.stderr)
    return res["wall"], res["rss"] / 2**20, res["rc"], res["out"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="124M", choices=("tiny", "124M", "1558M"))
    p.add_argument("--regime", default="gpt2", choices=("gpt2", "harsh"))
    p.add_argument("--work", type=Path, default=Path("/tmp/verify-bench"))
    p.add_argument("--keep", action="store_true")
    p.add_argument("--sabotage", action="store_true")
    a = p.parse_args()
    work = a.work / f"{a.shape}-{a.regime}"
    original = work / "original"
    if not (original / "model.ckpt.index").is_file():
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gpt2hub.testing.regimes", str(original), "--shape", a.shape, "--regime", a.regime],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        print(f"release written in {time.perf_counter() - t0:.0f} s", flush=True)
    if a.shape == "124M" and REAL_FIXTURES is not None:  # OpenAI's own graph: TensorFlow restores the checkpoint into it
        shutil.copyfile(REAL_FIXTURES / "model.ckpt.meta", original / "model.ckpt.meta")
    for fmt, dtype in CONVERSIONS:
        done = work / (f"original-{dtype}.gguf" if fmt == "gguf" else f"original-{fmt}")
        if not done.exists():
            wall, rss, rc, _ = run_isolated(GPT2HUB + ["convert", str(original), "--to", fmt, "--dtype", dtype, "--quiet"])
            print(f"convert {fmt} {dtype}: {wall:.0f} s, {rss:.2f} GB, exit {rc}", flush=True)
    wall, rss, rc, out = run_isolated([sys.executable, "-c", STAGES, str(original)])
    stages, _, out = out.rpartition("\n{")
    print(stages)
    report = json.loads("{" + out)
    print(f"\n## verify {a.shape} {a.regime}: {wall:.0f} s wall, peak RSS {rss:.2f} GB, exit {rc} "
          f"({report['seconds']:.0f} s inside verify, {len(report['tokens'])} tokens)")
    print("| output | check | status | detail |\n|---|---|---|---|")
    for f in report["files"]:
        print(f"| {Path(f['source']).name} {f['dtype']} | {f['what']} | {f['status']} | {f['detail']} |")
    print("\n| format | dtype | consumer | max abs Δ | noise | bound | top-1 | KL | status |\n|---|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        name = Path(r["source"]).name if r["format"] == "gguf" else r["format"]
        fmt = lambda x, f=".2e": "-" if x is None else format(x, f)  # noqa: E731
        print(f"| {name} | {r['dtype']} | {r['consumer']} | {fmt(r['max_abs'])} | {fmt(r['noise'])} | {fmt(r['bound'])} "
              f"| {fmt(r['top1'], '.3f')} | {fmt(r['kl'])} | {r['status']} |")
    if a.sabotage:
        sabotage(work, original)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


def sabotage(work: Path, original: Path) -> None:
    """Break the q8_0 file (one block's scale doubled) and the safetensors config (n_head); verify must exit 1."""
    import gguf
    import numpy as np

    q8 = work / "original-q8_0.gguf"
    reader = gguf.GGUFReader(q8, "r+")
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    scale = t.data[0, 0:2].view(np.float16)
    scale *= 2
    reader.data.flush()
    del reader
    wall, rss, rc, _ = run_isolated(GPT2HUB + ["verify", str(original), "--formats", "gguf"])
    print(f"\nsabotage q8_0 scale doubled in one block: exit {rc}, {wall:.0f} s, {rss:.2f} GB")
    config = work / "original-safetensors" / "config.json"
    data = json.loads(config.read_text())
    data["n_head"] = data["n_head"] // 5 if data["n_head"] % 5 == 0 else data["n_head"] // 2
    config.write_text(json.dumps(data))
    wall, rss, rc, _ = run_isolated(GPT2HUB + ["verify", str(original), "--formats", "safetensors"])
    print(f"sabotage n_head {data['n_head']} in config.json: exit {rc}, {wall:.0f} s, {rss:.2f} GB")


if __name__ == "__main__":
    main()
