"""`pull --only`, `--dry-run`, `--to DIR` and offline mode, against a real loopback server and a real folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import gpt2hub
from gpt2hub import registry, store
from gpt2hub.errors import DownloadError, OfflineError
from gpt2hub.pulling import pull
from gpt2hub.ranges import RangeRecord
from gpt2hub.retry import RetryPolicy
from tests.httpserver import FaultyServer
from tests.test_pull import mirror_root, tiny_manifest  # noqa: F401 - the same session fixtures as pull's tests

DATA = "model.ckpt.data-00000-of-00001"
TOKENIZER = ["encoder.json", "vocab.bpe"]
FAST = RetryPolicy(attempts=2, base=0.01, cap=0.05)
DEAD_PROXY = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """A fresh home; https goes to a dead proxy, so OpenAI and the public mirrors fail at once."""
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    for var in ("GPT2HUB_SOURCE", "GPT2HUB_MANIFESTS", "GPT2HUB_OFFLINE", "http_proxy", "HTTP_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(var, DEAD_PROXY)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


@pytest.fixture
def server(mirror_root):
    with FaultyServer(mirror_root) as srv:
        yield srv


def _pull(server, manifest, **kw):
    kw.setdefault("sources", [server.url])
    return pull("tiny", manifest=manifest, retry=FAST, **kw)


def _got(server) -> set[str]:
    """Files the server sent body bytes of."""
    return {s.file for s in server.log if s.sent}


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2hub.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --- --only ----------------------------------------------------------------------------------------

def test_only_tokenizer_fetches_two_files_and_leaves_the_release_partial(server, tiny_manifest, tiny_release):
    r = _pull(server, tiny_manifest, only=["tokenizer"])
    assert sorted(f.name for f in r.files) == TOKENIZER and _got(server) == set(TOKENIZER)
    folder = store.release_dir("tiny")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == TOKENIZER
    assert all((folder / n).read_bytes() == (tiny_release / n).read_bytes() for n in TOKENIZER)
    assert store.original_state("tiny") == "partial" and store.read_verified("tiny").partial is True
    with pytest.raises(gpt2hub.Gpt2hubError, match="only partly pulled"):
        gpt2hub.convert("tiny", to="safetensors", manifest=tiny_manifest)

    server.log.clear()
    r = _pull(server, tiny_manifest, only=["model"])  # the rest; the tokenizer is not fetched again
    assert TOKENIZER[0] not in _got(server) and DATA in _got(server)
    assert store.original_state("tiny") == "verified" and not store.read_verified("tiny").partial
    assert set(store.read_verified("tiny").files) == set(registry.OPENAI_FILES)
    server.log.clear()
    assert _pull(server, tiny_manifest).already and _got(server) == set()


def test_only_names_files_and_refuses_unknown_ones(server, tiny_manifest):
    r = _pull(server, tiny_manifest, only=["hparams.json", "model.ckpt.index"])
    assert sorted(f.name for f in r.files) == ["hparams.json", "model.ckpt.index"]
    with pytest.raises(DownloadError, match="--only weights: not a file of tiny; choose tokenizer, model") as e:
        _pull(server, tiny_manifest, only=["weights"])
    assert "\n" not in str(e.value)


def test_only_on_the_command_line_takes_commas(server, tiny_manifest):
    p = _cli("pull", "tiny", "--manifest", str(tiny_manifest), "--source", server.url, "--only", "tokenizer,hparams.json",
             "--json")
    assert p.returncode == 0, p.stderr
    assert sorted(f["name"] for f in json.loads(p.stdout)["files"]) == ["encoder.json", "hparams.json", "vocab.bpe"]


# --- --dry-run -------------------------------------------------------------------------------------

def test_dry_run_says_what_would_come_from_where_and_touches_no_file(server, tiny_manifest, tiny_release, tmp_path):
    plan = _pull(server, tiny_manifest, dry_run=True)
    assert not (tmp_path / "home").exists()  # not even the release folder or a lock
    assert _got(server) == set()  # sizes were asked, no bytes sent
    assert {f.name: (f.state, f.fetch, f.source) for f in plan.files} == {
        n: ("missing", (tiny_release / n).stat().st_size, server.url) for n in registry.OPENAI_FILES}
    assert plan.fetch == sum((tiny_release / n).stat().st_size for n in registry.OPENAI_FILES)


def test_dry_run_counts_what_is_here(server, tiny_manifest, tiny_release):
    _pull(server, tiny_manifest, only=["tokenizer"])
    folder = store.release_dir("tiny")
    shutil.copy(tiny_release / "hparams.json", folder)  # there, not yet checked
    size = (tiny_release / DATA).stat().st_size
    shutil.copy(tiny_release / DATA, folder / (DATA + ".part"))
    record = RangeRecord(folder / (DATA + ".part"), size)  # a pull stopped after 4 KiB of this very part
    with open(folder / (DATA + ".part"), "rb") as fh:
        record.bind(fh.fileno())
    record.add(0, 4096)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    plan = {f.name: f for f in _pull(server, tiny_manifest, dry_run=True).files}
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert plan["encoder.json"].state == "verified" and plan["encoder.json"].fetch == 0
    assert plan["hparams.json"].state == "present" and plan["hparams.json"].fetch == 0
    assert (plan[DATA].state, plan[DATA].here, plan[DATA].fetch) == ("partial", 4096, size - 4096)


def test_dry_run_cli_table(server, tiny_manifest):
    p = _cli("pull", "tiny", "--manifest", str(tiny_manifest), "--source", server.url, "--dry-run")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].split() == ["FILE", "SIZE", "STATE", "TO", "FETCH", "FROM"]
    assert f"{DATA}" in p.stdout and server.url in p.stdout and "tiny: would fetch" in p.stdout


# --- --to DIR --------------------------------------------------------------------------------------

def test_to_puts_the_release_in_the_users_folder(server, tiny_manifest, tiny_release, tmp_path):
    dest = tmp_path / "models" / "tiny"
    r = _pull(server, tiny_manifest, to=dest)
    assert r.path == dest and not store.release_dir("tiny").exists()
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == sorted(registry.OPENAI_FILES)
    assert all((dest / n).read_bytes() == (tiny_release / n).read_bytes() for n in registry.OPENAI_FILES)
    assert store.folder_state(dest) == "verified" and (dest / ".gpt2hub-pull.lock").exists()
    server.log.clear()
    assert _pull(server, tiny_manifest, to=dest).already and _got(server) == set()
    out = gpt2hub.convert(dest, to="safetensors").path  # an OpenAI-layout folder: convert takes it as DIR
    assert (out / "model.safetensors").is_file()


def test_to_resumes_and_replaces_only_its_own_files(server, tiny_manifest, tiny_release, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "vocab.bpe").write_text("my own vocabulary\n")
    with pytest.raises(DownloadError, match="already exists and is not tiny's vocab.bpe") as e:
        _pull(server, tiny_manifest, to=dest)
    assert "\n" not in str(e.value) and (dest / "vocab.bpe").read_text() == "my own vocabulary\n"
    (dest / "vocab.bpe").unlink()
    _pull(server, tiny_manifest, to=dest)
    assert (dest / "vocab.bpe").read_bytes() == (tiny_release / "vocab.bpe").read_bytes()


def test_to_a_file_is_refused(server, tiny_manifest, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DownloadError, match="exists and is not a folder"):
        _pull(server, tiny_manifest, to=tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


# --- offline ---------------------------------------------------------------------------------------

@pytest.fixture
def listener():
    """A loopback port that counts the connections made to it (accepting none of them)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.setblocking(False)

    def connections() -> int:
        n = 0
        while True:
            try:
                c, _ = s.accept()
            except BlockingIOError:
                return n
            c.close()
            n += 1

    yield f"http://127.0.0.1:{s.getsockname()[1]}", connections
    s.close()


@pytest.fixture
def no_sockets(monkeypatch):
    """Any attempt to connect a socket fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a socket was connected in offline mode: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_listener_counts_connections(listener):
    url, connections = listener
    socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))).close()
    assert connections() == 1  # the counter works, so the zeros below mean something


def test_offline_pull_opens_no_connection_and_says_so(listener, tiny_manifest, monkeypatch, no_sockets):
    url, connections = listener
    monkeypatch.setenv("GPT2HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"offline \(GPT2HUB_OFFLINE=1\): tiny: .* would need the network") as e:
        pull("tiny", manifest=tiny_manifest, sources=[url])
    assert "\n" not in str(e.value)
    plan = pull("tiny", manifest=tiny_manifest, sources=[url], dry_run=True)
    assert plan.offline and all(f.source is None for f in plan.files) and plan.unavailable == []
    assert connections() == 0


def test_offline_cli_is_one_line_and_connects_nowhere(listener, tiny_manifest):
    url, connections = listener
    for args, env in ((["--offline", "pull"], {}), (["pull", "--offline"], {}), (["pull"], {"GPT2HUB_OFFLINE": "1"})):
        p = _cli(*args, "tiny", "--manifest", str(tiny_manifest), "--source", url, env=env)
        assert p.returncode == 1 and p.stderr.startswith("gpt2hub: error: offline (GPT2HUB_OFFLINE=1):"), p.stderr
        assert len(p.stderr.splitlines()) == 1
    p = _cli("--offline", "pull", "tiny", "--manifest", str(tiny_manifest), "--source", url, "--dry-run")
    assert p.returncode == 0 and p.stderr.strip().splitlines() == [
        "gpt2hub: offline (GPT2HUB_OFFLINE=1): 7 files ("
        + p.stdout.splitlines()[-1].split("would fetch ")[1].split(" into")[0] + ") would need the network"]
    p = _cli("--offline", "mirror", "tiny", "s3://bucket/x", "--manifest", str(tiny_manifest))
    assert p.returncode == 1 and "offline" in p.stderr and "mirror to s3://bucket/x" in p.stderr
    assert connections() == 0


def test_offline_uses_what_is_on_disk(server, tiny_manifest, mirror_root, tiny_release, monkeypatch):
    monkeypatch.setenv("GPT2HUB_OFFLINE", "1")
    r = pull("tiny", manifest=tiny_manifest, sources=[str(mirror_root)])  # a folder is on disk
    assert r.sources == [str(mirror_root)]
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("connected"))
    assert pull("tiny", manifest=tiny_manifest, sources=[server.url]).already
    assert gpt2hub.convert("tiny", to="safetensors", manifest=tiny_manifest).path.is_dir()
    assert _got(server) == set()
