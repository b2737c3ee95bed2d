"""Benchmark `gpt2hub convert` from each source kind against `cp` of the same bytes, in one run.

    python benchmarks/sources.py --shape 124M|1558M [--work DIR] [--repeat 1] [--kinds nanogpt,hf,llmc]

Each source is written at the shape with std-0.02 random weights, generated in chunks into mapped files (memory
stays bounded at 1558M), by the writer gpt2hub/testing has for it:
  nanogpt  ckpt.pt: torch.save of train.py's dict (gpt2hub.testing.nanogpt.write_shaped_ckpt; vocab 50304 padded,
           bias=False as train.py's default; the optimizer state is left out, so the file is the model's bytes)
  hf       a Hugging Face folder: model.safetensors written by the safetensors library from the mapped arrays,
           config.json, and GPT-2's vocab.json/merges.txt
  llmc     gpt2_<shape>.bin (version 3, float32) and gpt2_tokenizer.bin by gpt2hub.testing.llmc_source's writer
  gguf     the hf source converted by gpt2hub to gguf f32 (gguf-py's writer), and to q8_0 (kind gguf_q8_0: its
           matrices are dequantized on the way back, so that row times gguf-py's dequantizer)
Rows, each a fresh child process whose wall time and peak RSS (RUSAGE_CHILDREN's ru_maxrss, in a small runner
that has no other child) are measured, interleaved with `cp` of the source's weight file:
  nanogpt -> safetensors, hf -> safetensors, hf -> gguf q8_0, hf -> tf, llmc -> safetensors (gguf -> safetensors).
Each source is deleted once measured, so the disk holds one source and one output at a time (~19 GB at 1558M).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpt2hub.testing.release import REAL_FIXTURES, SHAPES  # noqa: E402

CHUNK = 1 << 22  # values generated at a time
N_VOCAB = 50257


def random_file(path: Path, numel: int, rng: np.random.Generator, ones: bool = False) -> np.memmap:
    """A float32 file of `numel` std-0.02 values (+1 for LayerNorm gains), written a chunk at a time; its map."""
    values = np.memmap(path, dtype=np.float32, mode="w+", shape=(numel,))
    for r in range(0, numel, CHUNK):
        n = min(CHUNK, numel - r)
        chunk = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
        values[r:r + n] = chunk + np.float32(1.0) if ones else chunk
    values.flush()
    return values


def gpt2_shapes(n_layer: int, n_embd: int, n_ctx: int, linear: bool) -> dict[str, tuple[int, ...]]:
    """GPT-2's parameters under train_gpt2.py's / HF's names; matrices (out, in) when `linear`, else Conv1D (in, out)."""
    E = n_embd

    def m(i: int, o: int) -> tuple[int, int]:
        return (o, i) if linear else (i, o)

    shapes = {"transformer.wte.weight": (N_VOCAB, E), "transformer.wpe.weight": (n_ctx, E)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        shapes |= {p + "ln_1.weight": (E,), p + "ln_1.bias": (E,), p + "attn.c_attn.weight": m(E, 3 * E),
                   p + "attn.c_attn.bias": (3 * E,), p + "attn.c_proj.weight": m(E, E), p + "attn.c_proj.bias": (E,),
                   p + "ln_2.weight": (E,), p + "ln_2.bias": (E,), p + "mlp.c_fc.weight": m(E, 4 * E),
                   p + "mlp.c_fc.bias": (4 * E,), p + "mlp.c_proj.weight": m(4 * E, E), p + "mlp.c_proj.bias": (E,)}
    return shapes | {"transformer.ln_f.weight": (E,), "transformer.ln_f.bias": (E,)}


def mapped_params(shapes: dict[str, tuple[int, ...]], scratch: Path, seed: int) -> dict[str, np.memmap]:
    rng = np.random.default_rng(seed)
    scratch.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        ones = name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
        out[name] = random_file(scratch / f"{i}.f32", int(np.prod(shape)), rng, ones).reshape(shape)
    return out


# --- the sources -------------------------------------------------------------------------------

def write_nanogpt(folder: Path, shape: dict) -> tuple[Path, Path, list[str]]:
    from gpt2hub.testing.nanogpt import write_shaped_ckpt

    path = folder / "ckpt.pt"
    write_shaped_ckpt(path, n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                      block_size=shape["n_ctx"], scratch=folder / "scratch")
    return path, path, ["--vocab", str(REAL_FIXTURES)]


def write_hf(folder: Path, shape: dict) -> tuple[Path, Path, list[str]]:
    from safetensors.numpy import save_file

    out = folder / "hf"
    out.mkdir(parents=True)
    params = mapped_params(gpt2_shapes(shape["n_layer"], shape["n_embd"], shape["n_ctx"], linear=False),
                           folder / "scratch", seed=1)
    save_file(params, out / "model.safetensors", metadata={"format": "pt"})  # reads the maps through their pointers
    del params
    shutil.rmtree(folder / "scratch")
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": N_VOCAB,
              "n_positions": shape["n_ctx"], "n_embd": shape["n_embd"], "n_layer": shape["n_layer"],
              "n_head": shape["n_head"], "torch_dtype": "float32"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(REAL_FIXTURES / "encoder.json", out / "vocab.json")
    shutil.copyfile(REAL_FIXTURES / "vocab.bpe", out / "merges.txt")
    return out, out / "model.safetensors", []


def write_llmc(folder: Path, shape: dict) -> tuple[Path, Path, list[str]]:
    import torch

    from gpt2hub.testing import llmc_source
    from gpt2hub.testing.release import tiktoken_encoding

    params = mapped_params(gpt2_shapes(shape["n_layer"], shape["n_embd"], shape["n_ctx"], linear=True),
                           folder / "scratch", seed=2)
    tensors = {name: torch.from_numpy(np.asarray(a)) for name, a in params.items()}
    config = dict(block_size=shape["n_ctx"], vocab_size=N_VOCAB, n_layer=shape["n_layer"], n_head=shape["n_head"],
                  n_embd=shape["n_embd"])
    path = folder / "gpt2_model.bin"
    llmc_source.write_model(config, tensors, path, "float32")
    llmc_source.write_tokenizer(tiktoken_encoding(REAL_FIXTURES), folder / "gpt2_tokenizer.bin")
    del tensors, params
    shutil.rmtree(folder / "scratch")
    return path, path, ["--vocab", str(REAL_FIXTURES)]  # gpt2_tokenizer.bin holds no merges


def write_gguf(folder: Path, shape: dict, dtype: str = "f32") -> tuple[Path, Path, list[str]]:
    """A GGUF as gpt2hub writes one (gguf-py's GGUFWriter; q8_0 by ggml's quantizer) from the HF source's weights."""
    hf, _, _ = write_hf(folder, shape)
    path = folder / f"model-{dtype}.gguf"
    subprocess.run([sys.executable, "-m", "gpt2hub.cli", "convert", str(hf), "--to", "gguf", "--dtype", dtype,
                    "--out", str(path), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(hf)
    return path, path, []


WRITERS: dict[str, tuple[Callable[[Path, dict], tuple[Path, Path, list[str]]], list[tuple[str, str]]]] = {
    "nanogpt": (write_nanogpt, [("safetensors", "f32")]),
    "hf": (write_hf, [("safetensors", "f32"), ("gguf", "q8_0"), ("tf", "f32")]),
    "llmc": (write_llmc, [("safetensors", "f32")]),
    "gguf": (write_gguf, [("safetensors", "f32")]),
    "gguf_q8_0": (lambda folder, shape: write_gguf(folder, shape, "q8_0"), [("safetensors", "f32")]),
}


# --- measuring ----------------------------------------------------------------------------------

# Runs one command and reports its wall time and RUSAGE_CHILDREN's peak RSS. It is a small process of its own: a
# child inherits the peak RSS of the process that forks it (ru_maxrss survives exec), and this script maps whole
# sources while writing them.
RUNNER = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": p.returncode, "wall": wall, "peak_mb": peak, "out": p.stdout.decode(), "err": p.stderr.decode()[-3000:]}))
"""


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of `cmd`, run as the only child of a small runner process."""
    found = json.loads(subprocess.run([sys.executable, "-c", RUNNER, *cmd], capture_output=True, check=True,
                                      cwd=ROOT).stdout)
    if found["rc"]:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{found['err']}")
    return found["wall"], found["peak_mb"], found["out"]


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def bench(kind: str, work: Path, shape: dict, repeat: int) -> list[tuple[str, float, float, float | None, float]]:
    """Rows (name, median wall s, peak RSS MB, median in-process s, median cp s) for one source kind."""
    writer, targets = WRITERS[kind]
    folder = work / kind
    remove(folder)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    source, weights, extra = writer(folder, shape)
    size = weights.stat().st_size
    print(f"{kind}: wrote {source.name} ({size / 1e9:.2f} GB of weights) in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr, flush=True)
    rows = []
    copy = folder / "copy"
    for fmt, dtype in targets:
        out = folder / f"out-{fmt}-{dtype}{'.gguf' if fmt == 'gguf' else ''}"
        cmd = [sys.executable, "-m", "gpt2hub.cli", "convert", str(source), "--to", fmt, "--dtype", dtype,
               "--out", str(out), "--json", "--quiet"] + extra
        walls, inner, cps, rss = [], [], [], 0.0
        for _ in range(repeat):
            remove(copy)
            cps.append(measure(["cp", str(weights), str(copy)])[0])
            remove(copy)
            remove(out)
            wall, peak, stdout = measure(cmd)
            walls.append(wall)
            rss = max(rss, peak)
            try:
                inner.append(float(json.loads(stdout)["seconds"]))
            except (ValueError, KeyError, TypeError):
                pass
            remove(out)
        rows.append((f"{kind} -> {fmt} {dtype}", statistics.median(walls), rss,
                     statistics.median(inner) if inner else None, statistics.median(cps)))
    remove(folder)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("124M", "1558M"), default="124M")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--kinds", default="nanogpt,hf,llmc,gguf,gguf_q8_0")
    args = ap.parse_args(argv)
    if REAL_FIXTURES is None:
        raise SystemExit("../shared/fixtures/openai-124M-real is needed (GPT-2's vocabulary for the sources)")
    kinds = [k for k in args.kinds.split(",") if k in WRITERS]
    shape = SHAPES[args.shape]
    work = args.work or Path(tempfile.mkdtemp(prefix="gpt2hub-sources-"))
    rows = []
    try:
        for kind in kinds:
            rows += bench(kind, work, shape, args.repeat)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"shape {args.shape}; median of {args.repeat}; cp = cp of the source's weight file, run alternately")
    print(f"{'ROW':32} {'WALL s':>8} {'IN-PROC s':>9} {'PEAK RSS MB':>11} {'cp s':>7} {'WALL/cp':>8}")
    for name, wall, rss, inner, cp in rows:
        inner_s = f"{inner:.2f}" if inner is not None else "-"
        print(f"{name:32} {wall:8.2f} {inner_s:>9} {rss:11.0f} {cp:7.2f} {wall / cp:7.2f}x")


if __name__ == "__main__":
    main()
