"""`gpt2hub tiktoken`: tiktoken.get_encoding("gpt2") on a machine with no network, from OpenAI's real files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import gpt2hub
from gpt2hub.cli import main
from gpt2hub.errors import TiktokenError
from gpt2hub.testing.release import REAL_FIXTURES
from gpt2hub.tiktoken_cache import gpt2_files
from tests.checks import one_line

TEXT = ("Hello world!  It's 2019 — naïve café 🤗\n\n\t  x<|endoftext|>The end's  \u00a0 ok?!\r\n"
        "They'll've   1234567 $3.50 ’quotes’ 日本語 ZWJ👩‍👩‍👧")
# A subprocess that cannot reach any network: no interfaces at all where unshare works, else every
# socket connect and name lookup raises.
NO_NET_SITE = """
import socket
def _refuse(*a, **k):
    raise OSError("network disabled for this test")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.getaddrinfo = _refuse
socket.create_connection = _refuse
"""
ENCODE = ("import json, sys, tiktoken; enc = tiktoken.get_encoding('gpt2'); "
          "print(json.dumps(enc.encode(sys.argv[1], allowed_special='all')))")

# Only OpenAI's own files carry the sha256 tiktoken expects; like the other real-file tests, these need them.
pytestmark = pytest.mark.skipif(REAL_FIXTURES is None, reason="../shared/fixtures/openai-124M-real absent")


@pytest.fixture
def release(real_vocab_folder) -> Path:
    return real_vocab_folder


def offline(cache: Path, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache)}
    env.pop("DATA_GYM_CACHE_DIR", None)
    site = tmp / "no-net-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_NET_SITE)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-c", ENCODE, *args]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "-rn", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_tiktoken_gpt2_works_offline_and_encodes_as_gpt2hub(release, tmp_path):
    from gpt2hub.tokenizer import encoding

    cache = tmp_path / "cache"
    report = gpt2hub.tiktoken(release, cache_dir=cache)
    assert {f.name for f in report.files} == {"encoder.json", "vocab.bpe"}
    r = offline(cache, TEXT, tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == encoding(release).encode(TEXT, allowed_special="all")


def test_without_the_cache_the_same_subprocess_cannot_load_gpt2(tmp_path):
    r = offline(tmp_path / "empty", TEXT, tmp=tmp_path)
    assert r.returncode != 0  # the network really is off, so the test above proves the cache works


def test_files_are_named_by_the_sha1_of_tiktoken_s_urls(release, tmp_path):
    report = gpt2hub.tiktoken(release, cache_dir=tmp_path / "cache")
    for f in report.files:
        assert f.url.startswith("https://") and f.url.endswith("/" + f.name)
        assert f.path == tmp_path / "cache" / hashlib.sha1(f.url.encode()).hexdigest()
        assert f.path.read_bytes() == (release / f.name).read_bytes()
        assert hashlib.sha256(f.path.read_bytes()).hexdigest() == f.sha256 == gpt2_files()[f.name][1]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(f.path.name for f in report.files)


def test_the_cache_folder_follows_tiktoken_s_environment(release, tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path / "gym"))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    assert gpt2hub.tiktoken(release).cache_dir == tmp_path / "gym"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tk"))
    assert gpt2hub.tiktoken(release).cache_dir == tmp_path / "tk"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    with pytest.raises(TiktokenError) as e:
        gpt2hub.tiktoken(release)
    assert "TIKTOKEN_CACHE_DIR is empty" in one_line(e)


def test_a_second_run_finds_the_files_already_there(release, tmp_path):
    gpt2hub.tiktoken(release, cache_dir=tmp_path / "cache")
    assert all(f.already for f in gpt2hub.tiktoken(release, cache_dir=tmp_path / "cache").files)


def test_a_damaged_cached_file_is_replaced(release, tmp_path):
    report = gpt2hub.tiktoken(release, cache_dir=tmp_path / "cache")
    report.files[0].path.write_bytes(b"garbage")
    again = gpt2hub.tiktoken(release, cache_dir=tmp_path / "cache")
    assert not again.files[0].already
    assert again.files[0].path.read_bytes() == (release / again.files[0].name).read_bytes()


def test_files_that_are_not_openai_s_are_refused_and_nothing_is_cached(release, tmp_path):
    (release / "vocab.bpe").write_text((release / "vocab.bpe").read_text(encoding="utf-8") + "x y\n", encoding="utf-8")
    with pytest.raises(TiktokenError) as e:
        gpt2hub.tiktoken(release, cache_dir=tmp_path / "cache")
    assert "vocab.bpe: sha256" in one_line(e) and "tiktoken's gpt2 expects" in one_line(e)
    assert not (tmp_path / "cache").exists()


def test_a_folder_without_the_files_is_a_one_line_cli_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["tiktoken", str(tmp_path / "empty"), "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 1
    assert r.output.strip() == f"gpt2hub: error: {tmp_path / 'empty' / 'encoder.json'}: no such file"


def test_a_name_not_pulled_says_how_to_get_the_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(main, ["tiktoken", "124M", "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 1
    assert "gpt2hub pull 124M --only tokenizer" in r.output


def test_cli_json_lists_the_cached_files(release, tmp_path):
    r = CliRunner().invoke(main, ["tiktoken", str(release), "--cache-dir", str(tmp_path / "c"), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["cache_dir"] == str(tmp_path / "c") and len(data["files"]) == 2
