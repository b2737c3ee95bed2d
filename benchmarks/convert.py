"""Benchmark `gpt2hub convert` against `cp` and against the in-memory paths users take today.

    python benchmarks/convert.py --shape 124M [--release DIR] [--repeat 3] [--work DIR]

Every row runs in its own fresh subprocess; wall time and peak RSS (wait4's ru_maxrss) are of that
process. Rows, per format:
  safetensors f32  vs  cp of the data file (the floor), TensorFlow's reader + safetensors save_file,
                       and TensorFlow's reader + transformers GPT2LMHeadModel.save_pretrained
  pytorch f32      vs  TensorFlow's reader + torch.save of the state dict
  gguf f16, q8_0   vs  gguf-py's GGUFWriter fed the whole state dict in memory (add_tensor)
gpt2hub rows convert the folder with a manifest (the pulled case: the data file's sha256 is known);
one extra row converts it without, so the sha256 is computed while copying. gpt2hub rows also show
the conversion's own time (--json "seconds": without interpreter start-up and imports).
For the 1558M shape use --repeat 1: the TensorFlow baselines take minutes and ~13 GB each.
"""

from __future__ import annotations

import argparse
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
DATA = "model.ckpt.data-00000-of-00001"

# Baselines, each a small program run as `python -c CODE RELEASE OUT [DTYPE]`.
TF_STATE_DICT = """
import os, sys, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf, torch
from gpt2hub.model import tf_names
release, out = sys.argv[1], sys.argv[2]
h = json.load(open(os.path.join(release, "hparams.json")))
reader = tf.train.load_checkpoint(os.path.join(release, "model.ckpt"))
# As transformers' convert_gpt2_original_tf_checkpoint_to_pytorch: every array loaded and squeezed first.
sd = {hf: torch.from_numpy(reader.get_tensor(tf).squeeze()) for tf, hf in tf_names(h["n_layer"]).items()}
"""
BASELINES = {
    "tf+torch.save": TF_STATE_DICT + "torch.save(sd, out)\n",
    "tf+safetensors.save_file": TF_STATE_DICT + "from safetensors.torch import save_file\nsave_file(sd, out, metadata={'format': 'pt'})\n",
    "tf+transformers.save_pretrained": TF_STATE_DICT + """
from transformers import GPT2Config, GPT2LMHeadModel
cfg = GPT2Config(vocab_size=h["n_vocab"], n_positions=h["n_ctx"], n_embd=h["n_embd"], n_layer=h["n_layer"], n_head=h["n_head"])
model = GPT2LMHeadModel(cfg)
model.transformer.load_state_dict(sd, strict=False)
model.save_pretrained(out)
""",
    "gguf-py in memory": """
import sys
import numpy as np, gguf
from gpt2hub.version import __version__
from gpt2hub.converters import ConvertInput, Planned, plan
from gpt2hub.converters import gguf as conv
from gpt2hub.layout import HParams
from gpt2hub.tfcheckpoint import Checkpoint
from gpt2hub.vocabulary import Vocab
from pathlib import Path
release, out, dtype = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
src = ConvertInput(Checkpoint(release), HParams.from_file(release / "hparams.json"), Vocab.from_folder(release), release.name, __version__)
w = gguf.GGUFWriter(None, conv.ARCH)
conv._add_metadata(w, src, dtype)
for p in plan(src, conv.GLOBAL_RULES, conv.BLOCK_RULES):
    a = np.array(src.ckpt.tensor(p.entry.name)).reshape(p.shape[::-1] if p.rule.transpose else p.shape)
    a = np.ascontiguousarray(a.T) if p.rule.transpose else a
    qtype = gguf.GGMLQuantizationType[conv._ggml_type(p.rule, dtype, p.shape[-1])]
    if qtype == gguf.GGMLQuantizationType.F32:
        w.add_tensor(p.name, a)
    elif qtype == gguf.GGMLQuantizationType.F16:
        w.add_tensor(p.name, a.astype(np.float16))
    else:
        w.add_tensor(p.name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
w.write_header_to_file(Path(out))
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
""",
}


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of one command, in a fresh process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode:
            raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err.read().decode(errors='replace')[-3000:]}")
        return wall, usage.ru_maxrss / 1024, out.read().decode()


def generate_release(work: Path, shape: str) -> Path:
    """A release of the given shape written into work/<shape> by gpt2hub.testing.release (TensorFlow)."""
    release = work / shape
    print(f"generating a {shape}-shape release in {release} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "gpt2hub.testing.release", str(release), "--shape", shape], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return release


def gpt2hub_cmd(release: Path, out: Path, fmt: str, dtype: str, manifest: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "gpt2hub.cli", "convert", str(release), "--to", fmt, "--dtype", dtype,
           "--out", str(out), "--json"]
    return cmd + (["--manifest", str(manifest)] if manifest else [])


def run_rows(rows: dict[str, tuple[list[str], Path]], repeat: int) -> dict[str, tuple[float, float, float | None]]:
    """Median wall time, max peak RSS and (gpt2hub) median in-process seconds of each row, interleaved."""
    times: dict[str, list[float]] = {k: [] for k in rows}
    inner: dict[str, list[float]] = {k: [] for k in rows}
    rss: dict[str, float] = {k: 0.0 for k in rows}
    for _ in range(repeat):
        for name, (cmd, out) in rows.items():
            _remove(out)
            wall, peak, stdout = measure(cmd)
            times[name].append(wall)
            rss[name] = max(rss[name], peak)
            if stdout.startswith("{"):
                inner[name].append(json.loads(stdout)["seconds"])
            print(f"  {name}: {wall:.2f} s, {peak:.0f} MB", file=sys.stderr, flush=True)
            _remove(out)
    return {k: (statistics.median(times[k]), rss[k], statistics.median(inner[k]) if inner[k] else None) for k in rows}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="124M", help="shape of the generated release (gpt2hub.testing.release SHAPES)")
    ap.add_argument("--release", type=Path, default=None, help="convert this release folder instead of generating one")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--skip-baselines", action="store_true", help="only cp and gpt2hub (e.g. without TensorFlow)")
    ap.add_argument("--check-identical", action="store_true",
                    help="compare streamed and in-memory GGUF bytes even past 1 GiB (always done below)")
    a = ap.parse_args()

    work = Path(a.work or tempfile.mkdtemp(prefix="gpt2hub-bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        release = a.release or generate_release(work, a.shape)
        data_size = (release / DATA).stat().st_size
        from gpt2hub import registry

        manifest = registry.write_manifest(registry.create_manifest(release, release.name), work / "manifest.json")
        out = work / "out"
        rows = {
            "cp data file": (["cp", str(release / DATA), str(out)], out),
            "gpt2hub safetensors f32": (gpt2hub_cmd(release, out, "safetensors", "f32", manifest), out),
            "gpt2hub safetensors f32, sha256 computed": (gpt2hub_cmd(release, out, "safetensors", "f32", None), out),
            "gpt2hub safetensors bf16": (gpt2hub_cmd(release, out, "safetensors", "bf16", manifest), out),
            "gpt2hub pytorch f32": (gpt2hub_cmd(release, out, "pytorch", "f32", manifest), out),
            "gpt2hub gguf f16": (gpt2hub_cmd(release, out, "gguf", "f16", manifest), out),
            "gpt2hub gguf q8_0": (gpt2hub_cmd(release, out, "gguf", "q8_0", manifest), out),
        }
        if not a.skip_baselines:
            py = [sys.executable, "-c"]
            rows.update({
                "tf+safetensors.save_file": (py + [BASELINES["tf+safetensors.save_file"], str(release), str(out)], out),
                "tf+transformers.save_pretrained": (py + [BASELINES["tf+transformers.save_pretrained"], str(release), str(out)], out),
                "tf+torch.save": (py + [BASELINES["tf+torch.save"], str(release), str(out)], out),
                "gguf-py in memory f16": (py + [BASELINES["gguf-py in memory"], str(release), str(out), "f16"], out),
                "gguf-py in memory q8_0": (py + [BASELINES["gguf-py in memory"], str(release), str(out), "q8_0"], out),
            })
        subprocess.run(["cat", str(release / DATA)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        results = run_rows(rows, a.repeat)
        if not a.skip_baselines and (a.check_identical or data_size < 1 << 30):
            _check_gguf_identical(release, work)
        _report(results, a, release, data_size)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _check_gguf_identical(release: Path, work: Path) -> None:
    """The streamed GGUF and the in-memory one must be the same bytes (same tables, same metadata)."""
    for dtype in ("f16", "q8_0"):
        ours, theirs = work / f"ours-{dtype}.gguf", work / f"theirs-{dtype}.gguf"
        measure(gpt2hub_cmd(release, ours, "gguf", dtype, None))
        measure([sys.executable, "-c", BASELINES["gguf-py in memory"], str(release), str(theirs), dtype])
        same = ours.read_bytes() == theirs.read_bytes()
        print(f"gguf {dtype}: streamed file {'identical to' if same else 'DIFFERS from'} the in-memory one")
        ours.unlink()
        theirs.unlink()


def _report(results: dict[str, tuple[float, float, float | None]], a, release: Path, data_size: int) -> None:
    cp = results["cp data file"][0]
    print(f"\nrelease {release.name} ({a.shape if a.release is None else 'given'}), data file {data_size:,} bytes; "
          f"median of {a.repeat}, page cache warm\n")
    print("| command | wall (s) | peak RSS (MB) | wall / cp | in-process convert (s) |")
    print("|---|---|---|---|---|")
    for name, (wall, rss, inner) in results.items():
        print(f"| {name} | {wall:.2f} | {rss:.0f} | {wall / cp:.2f}x | {'-' if inner is None else f'{inner:.2f}'} |")
    pairs = [("gpt2hub safetensors f32", "tf+safetensors.save_file"),
             ("gpt2hub safetensors f32", "tf+transformers.save_pretrained"),
             ("gpt2hub pytorch f32", "tf+torch.save"),
             ("gpt2hub gguf f16", "gguf-py in memory f16"),
             ("gpt2hub gguf q8_0", "gguf-py in memory q8_0")]
    print()
    for ours, theirs in pairs:
        if theirs in results:
            (tw, tr, _), (bw, br, _) = results[ours], results[theirs]
            print(f"- {ours} vs {theirs}: {bw / tw:.2f}x faster, {br / tr:.1f}x less peak RSS")
    worst = max(rss for name, (_, rss, _) in results.items() if name.startswith("gpt2hub"))
    st = results["gpt2hub safetensors f32"]
    print(f"- safetensors f32 / cp: {st[0] / cp:.2f}x wall (target <= 1.5x), {st[2] / cp:.2f}x in-process; "
          f"largest gpt2hub peak RSS {worst:.0f} MB (target <= 1024 MB at 1558M)")


if __name__ == "__main__":
    main()
