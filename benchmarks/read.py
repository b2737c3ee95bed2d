"""Read every tensor of a TF checkpoint with gpt2hub's reader and with tf.train.load_checkpoint.

Each reader runs in its own fresh subprocess (so peak RSS is its own), touching every byte (a
float64 sum per tensor); the two sums must agree. Also times `Checkpoint.verify_all` (CRC32C of
every tensor) against crc32c over the whole data file read in 16 MiB chunks.

    python benchmarks/read.py [--shape 124M | --release DIR] [--repeat 3]

Without --release it writes a release with TensorFlow (`python -m gpt2hub.testing.release DIR --shape S`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = "model.ckpt.data-00000-of-00001"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_split_mb() -> dict:
    """Resident memory now, split into anonymous (heap) and file-backed (mapped, evictable) pages."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile")}


def worker_gpt2hub(release: Path) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    from gpt2hub.tfcheckpoint import Checkpoint

    t_import = time.perf_counter()
    rss_before = _peak_rss_mb()
    total, nbytes = 0.0, 0
    with Checkpoint(release) as ckpt:
        for name, e in ckpt.entries.items():
            t = ckpt.tensor(name)
            total += float(t.sum(dtype=np.float64))
            nbytes += t.nbytes
        split = _rss_split_mb()
    t_read = time.perf_counter()
    return {"import_s": t_import - t0, "read_s": t_read - t_import, "bytes": nbytes, "sum": total,
            "rss_after_import_mb": rss_before, "peak_rss_mb": _peak_rss_mb(), **split}


def worker_tensorflow(release: Path) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    t0 = time.perf_counter()
    import tensorflow as tf

    t_import = time.perf_counter()
    rss_before = _peak_rss_mb()
    reader = tf.train.load_checkpoint(str(release / "model.ckpt"))
    total, nbytes = 0.0, 0
    for name in sorted(reader.get_variable_to_shape_map(), key=str.encode):
        t = reader.get_tensor(name)
        total += float(np.sum(t, dtype=np.float64))
        nbytes += t.nbytes
        del t
    split = _rss_split_mb()
    t_read = time.perf_counter()
    return {"import_s": t_import - t0, "read_s": t_read - t_import, "bytes": nbytes, "sum": total,
            "rss_after_import_mb": rss_before, "peak_rss_mb": _peak_rss_mb(), **split}


def worker_verify(release: Path) -> dict:
    from gpt2hub.tfcheckpoint import Checkpoint

    t0 = time.perf_counter()
    with Checkpoint(release) as ckpt:
        ckpt.verify_all()
    return {"read_s": time.perf_counter() - t0, "bytes": (release / DATA).stat().st_size, "peak_rss_mb": _peak_rss_mb()}


def worker_crc32c_file(release: Path) -> dict:
    """The anchor for verify_all: crc32c over the data file, read in 16 MiB chunks."""
    import crc32c

    t0 = time.perf_counter()
    crc, n = 0, 0
    with open(release / DATA, "rb", buffering=0) as f:
        while chunk := f.read(1 << 24):
            crc = crc32c.crc32c(chunk, crc)
            n += len(chunk)
    return {"read_s": time.perf_counter() - t0, "bytes": n, "peak_rss_mb": _peak_rss_mb()}


WORKERS = {"gpt2hub": worker_gpt2hub, "tensorflow": worker_tensorflow,
           "verify_all": worker_verify, "crc32c-file": worker_crc32c_file}


def run_worker(kind: str, release: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--release", str(release)],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode:
        sys.exit(f"read.py: {kind} worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_page_cache(release: Path) -> None:
    with open(release / DATA, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--release", type=Path, help="an existing release folder (default: write one)")
    p.add_argument("--shape", default="124M", help="shape for the generated release (gpt2hub.testing.release.SHAPES)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a.release)))
        return

    tmp = None
    release = a.release
    if release is None:
        tmp = tempfile.TemporaryDirectory(prefix="gpt2hub-bench-read-")
        release = Path(tmp.name) / a.shape
        subprocess.run([sys.executable, "-m", "gpt2hub.testing.release", str(release), "--shape", a.shape], cwd=ROOT, check=True)
    try:
        warm_page_cache(release)
        runs: dict[str, list[dict]] = {k: [] for k in WORKERS}
        for _ in range(a.repeat):  # interleaved, so drift on a shared machine hits both alike
            for kind in WORKERS:
                runs[kind].append(run_worker(kind, release))
        report(release, runs, a)
    finally:
        if tmp is not None:
            tmp.cleanup()


def report(release: Path, runs: dict[str, list[dict]], a) -> None:
    sums = {k: {r["sum"] for r in runs[k]} for k in ("gpt2hub", "tensorflow")}
    if sums["gpt2hub"] != sums["tensorflow"]:
        sys.exit(f"read.py: the readers disagree: {sums}")
    size = (release / DATA).stat().st_size
    g, t = runs["gpt2hub"], runs["tensorflow"]
    v, c = runs["verify_all"], runs["crc32c-file"]
    gb = size / 1e9
    print(f"release: {release} ({a.shape if a.release is None else 'given'}), data file {size:,} bytes; "
          f"median of {a.repeat} runs, page cache warm; every byte summed, sums agree")
    rows = [(name, *(median(r, k) for k in ("read_s", "import_s", "peak_rss_mb", "rss_after_import_mb", "RssAnon", "RssFile")))
            for name, r in (("gpt2hub Checkpoint", g), ("tf.train.load_checkpoint", t))]
    print("\n| reader | read all tensors (s) | import (s) | peak RSS (MB) | peak RSS after import (MB) "
          "| at end: anonymous / file-backed RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for name, read_s, imp, peak, base, anon, filed in rows:
        print(f"| {name} | {read_s:.3f} | {imp:.2f} | {peak:.0f} | {base:.0f} | {anon:.0f} / {filed:.0f} |")
    print(f"\n- read time, TF / gpt2hub: **{rows[1][1] / rows[0][1]:.1f}x**; end to end with import: "
          f"**{(rows[1][1] + rows[1][2]) / (rows[0][1] + rows[0][2]):.1f}x**")
    print(f"- peak RSS, TF / gpt2hub: **{rows[1][3] / rows[0][3]:.1f}x**; peak growth while reading: gpt2hub "
          f"{rows[0][3] - rows[0][4]:.0f} MB, TF {rows[1][3] - rows[1][4]:.0f} MB; anonymous memory at end, "
          f"TF / gpt2hub: **{rows[1][5] / rows[0][5]:.1f}x** (gpt2hub's growth is the {size / 1e6:.0f} MB file's "
          f"mapped page-cache pages, shared and evictable)")
    vs, cs = median(v, "read_s"), median(c, "read_s")
    print(f"- CRC32C: verify_all {gb / vs:.2f} GB/s ({vs:.3f} s); crc32c over the file in 16 MiB reads "
          f"{gb / cs:.2f} GB/s ({cs:.3f} s); ratio verify_all / plain {cs / vs:.2f}x")


if __name__ == "__main__":
    main()
