"""Benchmark `gpt2hub pull` against curl (one stream) and aria2c -x8 -s8 on loopback, verification included.

A file of random bytes (500 MB by default; --shape 124M/1558M uses that release's data-file size) is
served by tests/httpserver.py in its own process, first with a per-connection rate cap (40 MB/s, as
a CDN would), then uncapped. Every client must produce a file whose sha256 matches: curl's is
hashed after it finishes, aria2c checks its own (--checksum), gpt2hub checks against its manifest.

    python benchmarks/pull.py [--size-mb 500 | --shape 124M] [--rate-mb 40] [--repeat 3] [--append benchmarks/RESULTS.md]
    python benchmarks/pull.py --shape 124M --before DIR [--capped-only]

--before DIR adds a "gpt2hub (before)" row: an older gpt2hub source tree (`git archive main | tar -x -C DIR`, with
DIR/gpt2hub/converters and DIR/gpt2hub/manifests linked to DIR/converters and DIR/manifests), run with
PYTHONPATH=DIR in the same rounds, so both see the same load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE_BYTES = {"124M": 497759232, "1558M": 6230444800}
FILE = "blob.bin"
RELEASE = "bench"


def write_random(path: Path, size: int) -> str:
    h = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 16 << 20))
            f.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def write_manifest(path: Path, size: int, sha256: str) -> None:
    path.write_text(json.dumps({
        "name": RELEASE, "folders": [RELEASE], "tensors": [],
        "hparams": {"n_vocab": 1, "n_ctx": 1, "n_embd": 1, "n_head": 1, "n_layer": 1},
        "files": [{"name": FILE, "size": size, "sha256": sha256, "status": "published"}],
    }))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            h.update(block)
    return h.hexdigest()


class Server:
    def __init__(self, root: Path, rate: float | None):
        cmd = [sys.executable, "-m", "tests.httpserver", str(root)] + (["--rate", str(rate)] if rate else [])
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def run_curl(url: str, out: Path, sha: str, connections: int) -> None:
    subprocess.run(["curl", "-s", "-f", "-o", str(out / FILE), url], check=True)
    assert sha256_of(out / FILE) == sha, "curl: sha256 mismatch"


def run_aria2c(url: str, out: Path, sha: str, connections: int, own_check: bool = False) -> None:
    """aria2c -x8 -s8, then the same sha256 check as curl's; with own_check, aria2c's --checksum instead."""
    check = [f"--checksum=sha-256={sha}"] if own_check else []
    subprocess.run(["aria2c", "-q", "-x8", "-s8", "--file-allocation=none", "--allow-overwrite=true",
                    "--auto-file-renaming=false", *check, "-d", str(out), "-o", FILE, url], check=True)
    if not own_check:
        assert sha256_of(out / FILE) == sha, "aria2c: sha256 mismatch"


def run_gpt2hub(base: str, out: Path, sha: str, connections: int, manifest: Path, code: Path | None = None) -> None:
    # Bytecode written and used, as in an installed package (main() compiles both trees first).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    env["GPT2HUB_HOME"] = str(out)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    subprocess.run([sys.executable, "-m", "gpt2hub.cli", "pull", RELEASE, "--manifest", str(manifest), "--source", base,
                    "--connections", str(connections), "--quiet"], check=True, env=env, cwd=ROOT if code is None else "/")
    assert (out / RELEASE / "original" / FILE).is_file()


def timed(tools: dict, scratch: Path, repeat: int) -> dict[str, float]:
    """Median seconds per tool; the tools take turns in each round, so a change in load hits all of them."""
    times: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(repeat):
        for name, fn in tools.items():
            out = scratch / "out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            t0 = time.perf_counter()
            fn(out)
            times[name].append(time.perf_counter() - t0)
            shutil.rmtree(out, ignore_errors=True)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=float, default=500)
    p.add_argument("--shape", choices=sorted(SHAPE_BYTES), default=None, help="use this release's data-file size")
    p.add_argument("--rate-mb", type=float, default=40, help="per-connection cap, MB/s")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--append", type=Path, default=None, help="append the results as markdown to this file")
    p.add_argument("--before", type=Path, default=None, help="an older gpt2hub source tree to time alongside")
    p.add_argument("--capped-only", action="store_true", help="skip the uncapped server")
    a = p.parse_args()
    size = SHAPE_BYTES[a.shape] if a.shape else int(a.size_mb * 1e6)
    have_aria2c = shutil.which("aria2c") is not None
    lines = [f"## pull (benchmarks/pull.py), {time.strftime('%Y-%m-%d')}", "",
             f"Machine: {os.cpu_count()}-core {platform.machine()}, 24 GB; the loopback server (tests/httpserver.py, "
             "sendfile when uncapped) and the client share the cores. "
             f"File: {size / 1e6:.0f} MB of random bytes; every client's time includes its sha256 check; "
             "gpt2hub runs from compiled bytecode, as installed; "
             f"median of {a.repeat} rounds (the tools take turns). gpt2hub --connections {a.connections} "
             "(hashes while downloading); curl one stream, then Python's hashlib; "
             + ("aria2c -x8 -s8, then hashlib (the ratio's anchor), and with its own --checksum=sha-256 (slower)."
                if have_aria2c else "aria2c not installed: skipped."), "",
             "| server | tool | seconds | MB/s |", "|---|---|---|---|"]
    ratios = []
    for code in [ROOT, *([a.before.resolve()] if a.before else [])]:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(code / "gpt2hub"), str(code / "converters")],
                       check=True)
    with tempfile.TemporaryDirectory(prefix="gpt2hub-bench-") as tmp:
        tmp = Path(tmp)
        root = tmp / "root"
        sha = write_random(root / RELEASE / FILE, size)
        manifest = tmp / "bench.json"
        write_manifest(manifest, size, sha)
        servers = ((f"capped {a.rate_mb:g} MB/s per connection", a.rate_mb * 1e6), ("uncapped", None))
        for label, rate in servers[:1] if a.capped_only else servers:
            server = Server(root, rate)
            try:
                url = f"{server.url}/{RELEASE}/{FILE}"
                tools = {"curl": lambda out: run_curl(url, out, sha, a.connections)}
                if have_aria2c:
                    tools["aria2c"] = lambda out: run_aria2c(url, out, sha, a.connections)
                    tools["aria2c --checksum"] = lambda out: run_aria2c(url, out, sha, a.connections, own_check=True)
                if a.before is not None:
                    tools["gpt2hub (before)"] = lambda out: run_gpt2hub(server.url, out, sha, a.connections, manifest,
                                                                        a.before.resolve())
                tools["gpt2hub"] = lambda out: run_gpt2hub(server.url, out, sha, a.connections, manifest)
                t = timed(tools, tmp, a.repeat)
            finally:
                server.stop()
            for name, secs in t.items():
                lines.append(f"| {label} | {name} | {secs:.2f} | {size / secs / 1e6:.0f} |")
                print(lines[-1], flush=True)
            for name in [n for n in t if n.startswith("gpt2hub")]:
                ratios.append(f"{label}: {name} is {t['curl'] / t[name]:.2f}x curl"
                              + (f", {t['aria2c'] / t[name]:.2f}x aria2c" if "aria2c" in t else ""))
    load = os.getloadavg()
    lines += [""] + [f"- {r}" for r in ratios]
    lines += [f"- load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min; "
              "other engineers' jobs share the 2 cores, so times vary between runs)", ""]
    text = "\n".join(lines)
    print(text)
    if a.append:
        with open(a.append, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
