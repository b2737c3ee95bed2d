"""Progress where stderr is not a terminal (a log, a pipe, CI): plain lines now and then, chosen by --progress or
$GPT2HUB_PROGRESS; read from a real `gpt2hub pull` of a throttled loopback source through a pipe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt2hub import registry
from gpt2hub.progress import PLAIN_GAP_S, PLAIN_STEP, PlainLines, ProgressEvent, TerminalProgress, progress_line
from gpt2hub.testing.release import build_release
from tests.checks import DEAD_PROXY
from tests.httpserver import Faults, FaultyServer

DATA = "model.ckpt.data-00000-of-00001"
RATE = 2_000_000  # bytes/s the server sends: the 6.7 MB pull below takes about 3 s
# "total: 4.2 MB of 9.6 MB (44%), 3.0 MB/s, 2 s left"
LINE = re.compile(r"total: (?P<done>[\d.]+ [KMG]?B) of (?P<total>[\d.]+ [KMG]?B) \((?P<pct>\d+)%\), "
                  r"(?P<rate>[\d.]+ [KMG]?B)/s(, (?P<left>\d+ s|\d+ min \d+ s) left)?")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, Path]:
    """(served root, manifest) of a 6.7 MB release (n_embd 256) in OpenAI's layout, served as root/wide/."""
    root = tmp_path_factory.mktemp("served")
    folder = build_release(root / "wide", n_embd=256, n_head=4, n_layer=2, n_ctx=128)
    manifest = registry.write_manifest(registry.create_manifest(folder, "wide"), root.parent / "wide.json")
    return root, manifest


def _pull(release, tmp_path: Path, *args: str, env: dict[str, str] | None = None, rate: float | None = RATE):
    """`gpt2hub pull wide` as a user runs it, stdout and stderr each a pipe; the throttled server's data file."""
    root, manifest = release
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPT2HUB_") or k == "GPT2HUB_STRICT_TESTS"}
    environ.update(GPT2HUB_HOME=str(tmp_path / "home"), HTTPS_PROXY=DEAD_PROXY, https_proxy=DEAD_PROXY,
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **(env or {}))
    with FaultyServer(root) as srv:
        srv.faults = Faults(only=DATA, rate=rate)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "gpt2hub.cli", "pull", "wide", "--manifest", str(manifest),
                            "--source", srv.url, "--connections", "1", *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ, timeout=120)
        return r, time.monotonic() - t0


def test_a_pull_into_a_pipe_prints_plain_lines_with_bytes_rate_and_time_left(release, tmp_path):
    r, seconds = _pull(release, tmp_path)
    assert r.returncode == 0, r.stderr
    assert seconds > 2, "the server was not throttled: nothing to report"
    lines = r.stderr.splitlines()
    assert "\r" not in r.stderr and "\x1b" not in r.stderr, "a bar drawn into a pipe"
    progress = [LINE.fullmatch(line) for line in lines[:-1]]
    assert lines and all(progress), lines
    percents = [int(m["pct"]) for m in progress]
    assert len(percents) >= 2 and percents == sorted(set(percents)) and percents[-1] < 100, percents
    # at most one line a tenth (and never two within PLAIN_GAP_S): a few lines for a few seconds, not a flood
    assert len(percents) <= min(1 / PLAIN_STEP, seconds / PLAIN_GAP_S + 1)
    assert {m["total"] for m in progress} == {progress[0]["total"]}
    assert all(m["left"] for m in progress), "no time left said"
    rates = [float(m["rate"].split()[0]) * {"KB": 1e3, "MB": 1e6, "B": 1}[m["rate"].split()[1]] for m in progress]
    assert all(RATE / 3 < rate < RATE * 3 for rate in rates), rates
    assert re.fullmatch(r"total: [\d.]+ [KMG]?B done in [\d.]+ s", lines[-1]), lines[-1]
    assert r.stdout.startswith("wide: 7 files checked against your own sha256 at ")


def test_progress_none_and_quiet_print_no_progress(release, tmp_path):
    for args, env in ((("--progress", "none"), None), (("--quiet",), None), ((), {"GPT2HUB_PROGRESS": "none"})):
        r, _ = _pull(release, tmp_path / "-".join(args or ["env"]), *args, env=env, rate=RATE * 2)
        assert r.returncode == 0 and r.stderr == "", (args, env, r.stderr)


def test_progress_bar_draws_tqdm_bars_even_into_a_pipe(release, tmp_path):
    r, _ = _pull(release, tmp_path, "--progress", "bar", rate=RATE * 2)
    assert r.returncode == 0, r.stderr
    assert "total:   0%|" in r.stderr and not LINE.search(r.stderr), r.stderr  # tqdm's bar


def test_the_environment_variable_chooses_and_the_option_wins(release, tmp_path):
    r, _ = _pull(release, tmp_path / "a", env={"GPT2HUB_PROGRESS": "bar"}, rate=RATE * 2)
    assert "total:   0%|" in r.stderr
    r, _ = _pull(release, tmp_path / "b", "--progress", "plain", env={"GPT2HUB_PROGRESS": "bar"})
    assert "%|" not in r.stderr and LINE.search(r.stderr), r.stderr


def test_an_unknown_progress_word_is_one_line(release, tmp_path):
    r, _ = _pull(release, tmp_path, env={"GPT2HUB_PROGRESS": "fancy"}, rate=None)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("gpt2hub: error: $GPT2HUB_PROGRESS='fancy': choose one of auto, bar, plain, none")
    r, _ = _pull(release, tmp_path, "--progress", "fancy", rate=None)
    assert r.returncode == 2 and "'fancy' is not one of 'auto', 'bar', 'plain', 'none'" in r.stderr


# --- the plain reporter's rules, on a clock the test moves ------------------------------------------

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _plain(clock: Clock) -> tuple[PlainLines, list[str]]:
    lines: list[str] = []
    return PlainLines(lines.append, clock), lines


def test_plain_lines_come_every_tenth_and_not_faster_than_the_gap():
    clock = Clock()
    plain, lines = _plain(clock)
    plain(ProgressEvent.begin("convert", 1000))
    plain(ProgressEvent.advance("convert", 500))  # half done at once: too soon for a line
    assert lines == []
    clock.now += PLAIN_GAP_S
    plain(ProgressEvent.advance("convert", 10))
    assert lines == [progress_line("convert", 510, 1000, 510 / PLAIN_GAP_S)]
    clock.now += PLAIN_GAP_S
    plain(ProgressEvent.advance("convert", 50))  # 56%: still in the tenth the last line named
    assert len(lines) == 1
    plain(ProgressEvent.advance("convert", 50))  # 61%
    assert len(lines) == 2 and "(61%)" in lines[-1]
    plain(ProgressEvent.end("convert"))
    assert lines[-1] == "convert: 610 B done in 2.0 s"  # a task that printed lines says that it ended


def test_plain_lines_come_every_30_s_when_a_tenth_takes_longer_and_when_the_size_is_unknown():
    clock = Clock()
    plain, lines = _plain(clock)
    plain(ProgressEvent.begin("mirror", None))
    for _ in range(3):
        clock.now += 10
        plain(ProgressEvent.advance("mirror", 1_000_000))
    assert lines == ["mirror: 3.0 MB, 100.0 KB/s"]


def test_a_task_ending_before_the_first_line_prints_nothing_and_children_count_toward_their_parent():
    clock = Clock()
    plain, lines = _plain(clock)
    plain(ProgressEvent.begin("total", 2000, done=1000))
    plain(ProgressEvent.begin("a.bin", 1000, parent="total"))
    clock.now += 2
    plain(ProgressEvent.advance("a.bin", 500))
    assert lines == ["total: 1.5 KB of 2.0 KB (75%), 250 B/s, 2 s left"]  # the rate counts this run's bytes only
    plain(ProgressEvent.end("a.bin"))
    plain(ProgressEvent.begin("quick", 10))
    plain(ProgressEvent.advance("quick", 10))
    plain(ProgressEvent.end("quick"))
    assert len(lines) == 1


def test_terminal_progress_resolves_auto_to_plain_off_a_terminal(monkeypatch):
    monkeypatch.delenv("GPT2HUB_PROGRESS", raising=False)
    assert TerminalProgress().mode == "plain" and not TerminalProgress().bars  # pytest's stderr is no terminal
    assert TerminalProgress(bars=False).mode == "none"
    monkeypatch.setenv("GPT2HUB_PROGRESS", "BAR")
    assert TerminalProgress().bars and TerminalProgress(mode="none").mode == "none"
