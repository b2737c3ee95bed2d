"""Benchmark `gpt2hub verify`: wall time and peak RSS at real shapes, every format, both weight regimes.

    python benchmarks/verify.py --shape 1558M --regime harsh [--work DIR] [--keep]

Writes a release of the shape (gpt2hub/testing/regimes.py, TF-free writer, real vocabulary; at 124M OpenAI's real
model.ckpt.meta, so TensorFlow runs OpenAI's own graph), converts it with
`gpt2hub convert` to safetensors, pytorch, gguf f16 and gguf q8_0, then runs `gpt2hub verify DIR --json` in a
fresh subprocess and reports its wall time, peak RSS (wait4's ru_maxrss), exit code and every row (max|Δ|,
measured noise, bound). With --sabotage it then breaks the outputs in place, one sabotage at a time (SABOTAGES: a perturbed element,
a transposed matrix, swapped layers, wrong eps, wrong n_head, wrong tokenizer, a q8_0 scale), runs
`verify --formats F` on each (it must exit 1), and puts the files back. The release is deleted afterwards unless --keep.
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
from typing import Callable

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
    p.add_argument("--no-timing", action="store_true", help="skip the timed verify of the correct outputs (with --sabotage)")
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
    if not a.no_timing:
        timed(original, a.shape, a.regime)
    if a.sabotage:
        sabotage(work, original)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


def timed(original: Path, shape: str, regime: str) -> None:
    """`verify` over every output in a fresh process: each step's time and memory, then every check and row."""
    wall, rss, rc, out = run_isolated([sys.executable, "-c", STAGES, str(original)])
    stages, _, out = out.rpartition("\n{")
    print(stages)
    report = json.loads("{" + out)
    print(f"\n## verify {shape} {regime}: {wall:.0f} s wall, peak RSS {rss:.2f} GB, exit {rc} "
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


def _safetensors_tensor(path: Path, name: str):
    """A writable memory map of one tensor in a safetensors file (its header read by hand: the offsets are all we need)."""
    import numpy as np

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        info = json.loads(f.read(n))[name]
    a, b = info["data_offsets"]
    return np.memmap(path, np.float32, "r+", offset=8 + n + a, shape=tuple(info["shape"]))


def _gguf_tensor(path: Path, name: str):
    """A writable memory map of one tensor's bytes in a GGUF file: rows of (out, in) as ggml stores them."""
    import numpy as np

    from gpt2hub.converters.gguf import read_header

    t = next(t for t in read_header(path).tensors if t.name == name)
    return np.memmap(path, np.uint8, "r+", offset=t.offset, shape=(t.dims[-1], t.nbytes // t.dims[-1]))


def _kept(m) -> Callable[[], None]:
    """Undo for an in-place edit of a memory-mapped tensor: its bytes as they were, written back and flushed."""
    old = m.copy()

    def undo() -> None:
        m[...] = old
        m.flush()
    return undo


def _perturb(work: Path) -> Callable[[], None]:
    import numpy as np

    w = _safetensors_tensor(work / "original-safetensors" / "model.safetensors", "h.1.mlp.c_proj.weight")
    undo = _kept(w)
    w[17, 5] = np.nextafter(w[17, 5], np.float32(1))
    w.flush()
    return undo


def _transpose(work: Path) -> Callable[[], None]:
    import numpy as np

    w = _gguf_tensor(work / "original-f16.gguf", "blk.1.attn_output.weight")  # square (n_embd, n_embd) f16
    undo = _kept(w)
    m = w.view(np.float16)
    m[...] = m.T.copy()
    w.flush()
    return undo


def _swap_layers(work: Path) -> Callable[[], None]:
    path = work / "original-safetensors" / "model.safetensors"
    a, b = (_safetensors_tensor(path, f"h.{i}.attn.c_attn.weight") for i in (0, 1))
    undo_a, undo_b = _kept(a), _kept(b)
    a[...], b[...] = b.copy(), a.copy()
    a.flush(), b.flush()
    return lambda: (undo_a(), undo_b())


def _edit_json(path: Path, edit: Callable[[dict], None]) -> Callable[[], None]:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return lambda: path.write_text(text, encoding="utf-8")


def _config(key: str, value: Callable) -> Callable[[Path], Callable[[], None]]:
    return lambda work: _edit_json(work / "original-safetensors" / "config.json", lambda d: d.update({key: value(d[key])}))


def _tokenizer(work: Path) -> Callable[[], None]:
    return _edit_json(work / "original-pytorch" / "tokenizer.json", lambda t: t["model"].update(merges=t["model"]["merges"][1:]))


def _q8_0_scale(work: Path) -> Callable[[], None]:
    import numpy as np

    w = _gguf_tensor(work / "original-q8_0.gguf", "blk.0.ffn_down.weight")
    undo = _kept(w)
    scale = w[3, 2 * 34:2 * 34 + 2].view(np.float16)  # row 3, block 2: the f16 scale leads each 34-byte block
    scale *= np.float16(2)
    w.flush()
    return undo


# name -> (the format verify is run on, the sabotage: it edits the output in place and returns its undo)
SABOTAGES: dict[str, tuple[str, Callable[[Path], Callable[[], None]]]] = {
    "one element off by 1 ulp (safetensors h.1.mlp.c_proj.weight[17, 5])": ("safetensors", _perturb),
    "a transposed matrix (gguf f16 blk.1.attn_output.weight)": ("gguf", _transpose),
    "swapped layers (safetensors h.0/h.1 attn.c_attn.weight)": ("safetensors", _swap_layers),
    "wrong eps 1e-6 (safetensors config.json)": ("safetensors", _config("layer_norm_epsilon", lambda v: 1e-6)),
    "wrong n_head (safetensors config.json)": ("safetensors", _config("n_head", lambda v: v // 5 if v % 5 == 0 else v // 2)),
    "wrong tokenizer: first merge dropped (pytorch tokenizer.json)": ("pytorch", _tokenizer),
    "one q8_0 block's scale doubled (gguf blk.0.ffn_down.weight)": ("gguf", _q8_0_scale),
}


def sabotage(work: Path, original: Path) -> None:
    """Each sabotage in turn on the outputs in place: `verify --formats F` must exit 1; each is undone after."""
    print("\n| sabotage | verify | exit | wall (s) | peak RSS (GB) | what failed |\n|---|---|---|---|---|---|")
    for what, (fmt, edit) in SABOTAGES.items():
        undo = edit(work)
        try:
            wall, rss, rc, out = run_isolated(GPT2HUB + ["verify", str(original), "--formats", fmt, "--json"])
        finally:
            undo()
        report = json.loads(out) if out.strip().startswith("{") else {}
        failed = [f"{c['what']}: {c['detail']}" for c in report.get("files", []) if c["status"] != "PASS"] + \
                 [f"{r['consumer']} {r['dtype']} max abs Δ {r['max_abs']:.3g} > {r['bound']:.3g}" if r["max_abs"] is not None
                  else f"{r['consumer']} {r['dtype']}: {(r['note'] or '')[:60]}" for r in report.get("rows", []) if r["status"] != "PASS"] + \
                 [f"tokenizer {t['tokenizer']}" for t in report.get("tokenization", []) if t["status"] != "PASS"]
        print(f"| {what} | --formats {fmt} | {rc} | {wall:.0f} | {rss:.2f} | {'; '.join(failed)} |", flush=True)


if __name__ == "__main__":
    main()
