"""Speed at the small end: start-up, a 124M conversion and a mirror with nothing to send, before and after.

    python benchmarks/small.py --before DIR [--release DIR] [--repeat 3] [--only startup,convert,mirror]
    python benchmarks/small.py --before DIR --release R1558 --only convert --formats pytorch:f32,gguf:q8_0,safetensors:bf16

--before DIR is an older gpt2hub source tree (e.g. `git archive main | tar -x -C DIR`, with DIR/gpt2hub/converters
and DIR/gpt2hub/manifests linked to DIR/converters and DIR/manifests, as the wheel lays them out); it runs with
PYTHONPATH=DIR, this checkout without. Every row is a fresh process, rows interleaved, medians of --repeat, page
cache warm (one unmeasured run of each row first). Bytecode is written and used, as in an installed package
(PYTHONDONTWRITEBYTECODE is cleared).

Rows and their anchors:
  startup   `gpt2hub --help`, `gpt2hub list`            vs `python -c pass` and `hf --help`
  convert   `gpt2hub convert R --to F --dtype D` (the pulled case: a manifest vouches for the data file's sha256)
            vs `cp` of the data file
  mirror    `gpt2hub mirror` run again with nothing to send  vs `aws s3 sync` run again (SeaweedFS on loopback)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = "model.ckpt.data-00000-of-00001"
PY = sys.executable


def env_for(code: Path | None, home: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env["GPT2HUB_HOME"] = str(home)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return {**env, **(extra or {})}


def wall(cmd: list[str], env: dict, before=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its children) of one run."""
    if before:
        before()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT if "PYTHONPATH" not in env else "/")
    elapsed = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.decode(errors='replace')[-2000:]}")
    return elapsed, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def run(rows: dict, repeat: int) -> dict[str, tuple[float, float]]:
    """rows: name -> (cmd, env, setup); one warm-up each, then `repeat` interleaved rounds; medians (wall, CPU)."""
    for cmd, env, setup in rows.values():
        wall(cmd, env, setup)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
    for _ in range(repeat):
        for name, (cmd, env, setup) in rows.items():
            times[name].append(wall(cmd, env, setup))
    for name, t in times.items():
        print(f"  {name}: {', '.join(f'{w:.3f}/{c:.3f}' for w, c in t)}", file=sys.stderr, flush=True)
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}


def table(med: dict[str, tuple[float, float]], anchor: str | None = None) -> None:
    print("| row | wall (s) | CPU (s) |" + (f" wall / {anchor} |" if anchor else "")
          + "\n|---|---|---|" + ("---|" if anchor else ""))
    for k, (w, c) in med.items():
        print(f"| {k} | {w:.3f} | {c:.3f} |" + (f" {w / med[anchor][0]:.2f}x |" if anchor else ""))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")


def startup(before: Path, work: Path, repeat: int) -> None:
    home = work / "home-startup"
    rows = {"python -c pass": ([PY, "-c", "pass"], env_for(None, home), None)}
    hf = shutil.which("hf", path=str(Path(PY).parent)) or shutil.which("hf")
    if hf:
        rows["hf --help"] = ([hf, "--help"], env_for(None, home), None)
    for label, code in (("before", before), ("after", None)):
        for args in (["--help"], ["list"]):
            rows[f"gpt2hub {' '.join(args)} ({label})"] = ([PY, "-m", "gpt2hub.cli", *args], env_for(code, home), None)
    print("### start-up\n")
    table(run(rows, repeat))


def convert(before: Path, release: Path, work: Path, repeat: int, formats: list[tuple[str, str]]) -> None:
    manifest = work / "manifest.json"
    if not manifest.exists():  # a name of its own: a manifest may not take a shipped release's name
        subprocess.run([PY, "-m", "gpt2hub.cli", "manifest", "create", str(release), "--name", f"bench-{release.name.lower()}", "-o",
                        str(manifest)], check=True, env=env_for(None, work / "home-convert"), stdout=subprocess.DEVNULL)
    out = work / "out"

    def clear() -> None:
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()

    rows = {"cp data file": (["cp", str(release / DATA), str(out)], os.environ.copy(), clear)}
    for fmt, dtype in formats:
        for label, code in (("before", before), ("after", None)):
            cmd = [PY, "-m", "gpt2hub.cli", "convert", str(release), "--to", fmt, "--dtype", dtype, "--out", str(out),
                   "--manifest", str(manifest), "--quiet"]
            rows[f"gpt2hub {fmt} {dtype} ({label})"] = (cmd, env_for(code, work / f"home-convert-{label}"), clear)
    size = (release / DATA).stat().st_size
    print(f"### convert {release.name} ({size:,}-byte data file)\n")
    table(run(rows, repeat), "cp data file")
    clear()


def mirror(before: Path, release: Path, work: Path, repeat: int) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.s3server import SeaweedS3

    aws = shutil.which("aws")
    if aws is None:
        raise SystemExit("the AWS CLI (`aws`) is needed for the mirror anchor")
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_CONFIG_FILE": str(work / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(work / "none")}
    name = "bench"
    server = SeaweedS3(work / "s3", timeout=90).start()
    try:
        url = server.endpoint_url
        server.client().create_bucket(Bucket="bench")
        rows = {}
        for label, code in (("before", before), ("after", None)):
            env = env_for(code, work / f"home-mirror-{label}", creds)
            for cmd in (["manifest", "create", str(release), "--name", name],
                        ["pull", name, "--source", str(release), "--quiet"]):
                subprocess.run([PY, "-m", "gpt2hub.cli", *cmd], check=True, env=env, stdout=subprocess.DEVNULL,
                               cwd=ROOT if code is None else "/")
            # the first run sends everything (not measured here: see benchmarks/mirror.py); then nothing to send
            cmd = [PY, "-m", "gpt2hub.cli", "mirror", name, f"s3://bench/{label}", "--endpoint-url", url, "--quiet"]
            wall(cmd, env)
            rows[f"gpt2hub mirror, nothing to send ({label})"] = (cmd, env, None)
        original = work / "home-mirror-after" / name / "original"
        env = env_for(None, work / "home-aws", creds)
        cmd = [aws, "--endpoint-url", url, "s3", "sync", "--only-show-errors", "--exclude", ".*", str(original),
               f"s3://bench/aws/{name}"]
        wall(cmd, env)
        rows["aws s3 sync, nothing to send"] = (cmd, env, None)
        size = sum(p.stat().st_size for p in original.iterdir() if not p.name.startswith("."))
        print(f"### mirror again, nothing to send ({size:,} bytes in 7 files, SeaweedFS on 127.0.0.1)\n")
        table(run(rows, repeat), "aws s3 sync, nothing to send")
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--release", type=Path, default=None, help="a release folder (else a 124M-shape one is written)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="startup,convert,mirror")
    ap.add_argument("--formats", default="safetensors:f32", help="FORMAT:DTYPE,... for the convert rows")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-small-", dir=args.work))
    try:
        release = args.release
        if release is None and {"convert", "mirror"} & set(args.only.split(",")):
            release = work / "124M"
            subprocess.run([PY, "-m", "gpt2hub.testing.release", str(release), "--shape", "124M"], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for part in args.only.split(","):
            if part == "startup":
                startup(args.before.resolve(), work, max(args.repeat, 5))
            elif part == "convert":
                formats = [tuple(f.split(":")) for f in args.formats.split(",")]
                convert(args.before.resolve(), release.resolve(), work, args.repeat, formats)
            elif part == "mirror":
                mirror(args.before.resolve(), release.resolve(), work, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
