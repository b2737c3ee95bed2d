"""Benchmark greedy generation (gpt2hub.model + KV cache vs transformers `generate`) and `gpt2hub verify`.

    python benchmarks/sample.py --shape 124M [--release DIR] [--new-tokens 128] [--repeat 5] [--device cpu]

1. Tokens/s of greedy generation with the cache, same weights, same prompt, same process, runs
   interleaved: gpt2hub.sampling.generate on gpt2hub.model (from the TF checkpoint) vs transformers'
   GPT2LMHeadModel.generate(do_sample=False) on the converted safetensors folder. The token ids
   of both are compared (they must agree). Ratio = gpt2hub tokens/s / transformers tokens/s.
2. Wall time of `gpt2hub verify DIR` over every format (safetensors, pytorch, GGUF f32/f16/bf16/q8_0),
   in a fresh process (imports included), plus the time verify reports for itself.
Without --release, a release of --shape is written by `gpt2hub.testing.release` and converted by gpt2hub.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = ("In 2019, OpenAI released a language model called GPT-2 in four sizes. The smallest has 124 million "
          "parameters, and the checkpoints still load today, so")


def prepare(release: Path | None, shape: str, work: Path) -> Path:
    """A release folder with every conversion beside it (convert's DIR-<fmt> / DIR-<dtype>.gguf)."""
    import gpt2hub
    from gpt2hub.testing.release import SHAPES, write_release

    original = release or write_release(work / "original", **SHAPES[shape])
    outputs = {("safetensors", "f32"): original.parent / f"{original.name}-safetensors",
               ("pytorch", "f32"): original.parent / f"{original.name}-pytorch"}
    for dtype in ("f32", "f16", "bf16", "q8_0"):
        outputs[("gguf", dtype)] = original.parent / f"{original.name}-{dtype}.gguf"
    for (fmt, dtype), path in outputs.items():
        if not path.exists():
            gpt2hub.convert(original, to=fmt, dtype=dtype)
    return original


def bench_generation(original: Path, new_tokens: int, repeat: int, device: str) -> dict:
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from gpt2hub.model import from_checkpoint, resolve_device
    from gpt2hub.tokenizer import encoding

    sampling = importlib.import_module("gpt2hub.sampling")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    dev = resolve_device(device)
    enc = encoding(original)
    context = enc.encode(PROMPT)
    ours = from_checkpoint(original, dev)
    theirs = GPT2LMHeadModel.from_pretrained(original.parent / f"{original.name}-safetensors", dtype=torch.float32).to(dev).eval()
    greedy = sampling.Settings(temperature=0)

    def run_ours() -> list[int]:
        return list(sampling.generate(ours, context, new_tokens, greedy))

    def run_theirs() -> list[int]:
        with torch.inference_mode():
            out = theirs.generate(torch.tensor([context], device=dev), do_sample=False, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, pad_token_id=enc.eot_token)
        return out[0, len(context):].tolist()

    def timed(fn):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tokens = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, tokens

    run_ours(), run_theirs()  # warm-up: allocator, kernels, transformers' generation config
    t_ours, t_theirs, same = [], [], True
    for _ in range(repeat):
        t, a = timed(run_ours)
        t_ours.append(t)
        t, b = timed(run_theirs)
        t_theirs.append(t)
        same &= a == b
    ours_tps = new_tokens / statistics.median(t_ours)
    theirs_tps = new_tokens / statistics.median(t_theirs)
    return {"prompt_tokens": len(context), "new_tokens": new_tokens, "repeat": repeat, "device": str(dev),
            "threads": torch.get_num_threads(), "gpt2hub_tokens_per_s": ours_tps, "transformers_tokens_per_s": theirs_tps,
            "ratio": ours_tps / theirs_tps, "same_tokens": same,
            "gpt2hub_s": t_ours, "transformers_s": t_theirs}


def bench_verify(original: Path, device: str) -> dict:
    script = Path(sys.executable).with_name("gpt2hub")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "gpt2hub.cli"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + ["verify", str(original), "--device", device, "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    report = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return {"wall_s": wall, "reported_s": report.get("seconds"), "exit_code": proc.returncode,
            "rows": [(r["format"], r["dtype"], r["consumer"], r["status"]) for r in report.get("rows", [])],
            "tokenizers": len(report.get("tokenization", [])), "stderr_tail": proc.stderr[-300:] if proc.returncode else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="124M", choices=("tiny", "124M", "1558M"))
    p.add_argument("--release", type=Path, default=None, help="An existing release folder (conversions are added beside it).")
    p.add_argument("--work", type=Path, default=None, help="Where to write the generated release (default: a temp folder).")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-verify", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        original = prepare(a.release, a.shape, Path(tmp))
        gen = bench_generation(original, a.new_tokens, a.repeat, a.device)
        ver = None if a.skip_verify else bench_verify(original, a.device)
    print(f"greedy generation, {a.shape} shape, {gen['prompt_tokens']} prompt + {gen['new_tokens']} new tokens, "
          f"{gen['device']}, {gen['threads']} threads, median of {gen['repeat']}:")
    print(f"  gpt2hub       {gen['gpt2hub_tokens_per_s']:8.1f} tokens/s")
    print(f"  transformers  {gen['transformers_tokens_per_s']:8.1f} tokens/s")
    print(f"  ratio gpt2hub/transformers: {gen['ratio']:.2f}x; same tokens: {gen['same_tokens']}")
    if ver is not None:
        print(f"verify over every format: {ver['wall_s']:.1f} s wall (fresh process), {ver['reported_s']:.1f} s inside verify, "
              f"exit code {ver['exit_code']}, {len(ver['rows'])} rows, {ver['tokenizers']} tokenizer rows")
        for r in ver["rows"]:
            print("  " + "  ".join(r))
        if ver["stderr_tail"]:
            print(ver["stderr_tail"])
    print(json.dumps({"generation": gen, "verify": ver}))


if __name__ == "__main__":
    main()
