"""`gpt2hub rm` and `gpt2hub du` on a real store: a release pulled from a folder and converted by gpt2hub."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import gpt2hub
from gpt2hub import store
from gpt2hub.cli import main
from gpt2hub.errors import StoreError
from gpt2hub.housekeeping import on_disk, remove, usage
from tests.checks import pulled_store


@pytest.fixture(scope="session")
def pulled_home(tiny_release, tmp_path_factory) -> Path:
    """A home holding `tiny` pulled (from a folder source) and converted to safetensors, gguf f32 and q8_0."""
    return pulled_store(tiny_release, tmp_path_factory.mktemp("store"), [("safetensors", None), ("gguf", "f32"), ("gguf", "q8_0")])


@pytest.fixture
def home(pulled_home, tmp_path, monkeypatch) -> Path:
    """A private copy of the pulled home for each test, set as GPT2HUB_HOME."""
    h = tmp_path / "home"
    shutil.copytree(pulled_home, h, symlinks=True)
    monkeypatch.setenv("GPT2HUB_HOME", str(h))
    monkeypatch.delenv("GPT2HUB_MANIFESTS", raising=False)
    return h


def tree(folder: Path) -> dict[str, tuple[int, bool]]:
    """Every path below folder (links not followed) with its size and whether it is a link."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            p = Path(root) / n
            out[str(p.relative_to(folder))] = (p.lstat().st_size, p.is_symlink())
    return out


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside the home with a file that must survive every removal."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious.bin").write_bytes(b"x" * 10_000)
    return d


# --- du and list ---------------------------------------------------------------------------------

def test_du_counts_every_format_and_file(home):
    u = usage("tiny")
    assert set(u.formats) == {"original", "safetensors", "gguf"}
    for fmt, n in u.formats.items():
        assert n == sum(e.bytes for e in u.files if e.format == fmt) > 0
    names = {str(e.path.relative_to(home / "tiny")) for e in u.files}
    assert {"original/model.ckpt.data-00000-of-00001", "gguf/tiny-q8_0.gguf", "safetensors/model.safetensors"} <= names
    assert u.bytes == sum(u.formats.values())


def test_du_cli_json_and_text(home):
    r = cli("du", "tiny", "--json")
    assert r.exit_code == 0
    [row] = json.loads(r.stdout)
    assert row["name"] == "tiny" and row["bytes"] == sum(row["formats"].values())
    text = cli("du", "tiny").stdout
    assert "gguf/tiny-q8_0.gguf" in text and "total" in text
    everything = json.loads(cli("du", "--json").stdout)
    assert [u["name"] for u in everything] == ["tiny"]


def test_list_shows_bytes_on_disk(home):
    rows = {r["name"]: r for r in gpt2hub.list_releases()}
    assert rows["tiny"]["disk_bytes"] == on_disk(home / "tiny") > 0
    assert rows["124M"]["disk_bytes"] == 0
    lines = cli("list").stdout.splitlines()
    assert lines[0].split()[-2:] == ["ON", "DISK"]
    assert [line for line in lines if line.startswith("124M")][0].rstrip().endswith("-")


# --- rm ------------------------------------------------------------------------------------------

def test_rm_default_removes_every_conversion_and_keeps_the_original(home):
    before = usage("tiny")
    r = remove("tiny")
    assert r.freed == before.formats["safetensors"] + before.formats["gguf"]
    assert not (home / "tiny" / "safetensors").exists() and not (home / "tiny" / "gguf").exists()
    assert store.original_state("tiny") == "verified" and store.converted_formats("tiny") == []


def test_rm_one_dtype_of_one_format(home):
    r = remove("tiny", ["gguf"], dtype="q8_0")
    assert [e.path.name for e in r.removed] == ["tiny-q8_0.gguf"] and r.removed[0].dtype == "q8_0"
    assert (home / "tiny" / "gguf" / "tiny-f32.gguf").is_file()
    assert (home / "tiny" / "safetensors" / "model.safetensors").is_file()


def test_rm_dtype_of_a_folder_format_reads_its_config(home):
    assert remove("tiny", ["safetensors"], dtype="f16").removed == []
    assert [e.dtype for e in remove("tiny", ["safetensors"], dtype="f32").removed] == ["f32"]


def test_dry_run_deletes_nothing_and_plans_what_rm_does(home):
    before = tree(home)
    planned = remove("tiny", everything=True, dry_run=True)
    assert tree(home) == before
    done = remove("tiny", everything=True)
    assert [e.path for e in planned.removed] == [e.path for e in done.removed] and planned.freed == done.freed
    assert not (home / "tiny").exists()


def test_rm_all_keeps_what_is_not_gpt2hubs(home):
    (home / "tiny" / "notes.txt").write_text("mine")
    (home / "tiny" / "original" / "my-eval.json").write_text("{}")
    r = remove("tiny", everything=True)
    assert sorted(p.name for p in r.kept) == ["my-eval.json", "notes.txt"]
    assert sorted(str(p.relative_to(home)) for p in (home / "tiny").rglob("*")) == [
        "tiny/notes.txt", "tiny/original", "tiny/original/my-eval.json"]
    assert (home / "manifests" / "tiny.json").is_file()  # the registry entry stays: the release can be pulled again


def test_rm_refuses_a_link_planted_in_a_conversion_pointing_outside(home, outside):
    (home / "tiny" / "safetensors" / "evil").symlink_to(outside)
    before = tree(home)
    with pytest.raises(StoreError, match="symbolic link"):
        remove("tiny", ["safetensors"])
    assert tree(home) == before and (outside / "precious.bin").stat().st_size == 10_000


@pytest.mark.parametrize("where", ["tiny/gguf", "tiny", "tiny/gguf/tiny-f16.gguf"])
def test_rm_never_goes_through_a_link_out_of_the_home(home, outside, where):
    link = home / where
    if link.exists():
        shutil.rmtree(link) if link.is_dir() else link.unlink()
    link.symlink_to(outside if not where.endswith(".gguf") else outside / "precious.bin")
    before = tree(home)
    for kwargs in ({"everything": True}, {}, {"formats": ["gguf"]}):
        with pytest.raises(StoreError, match="symbolic link"):
            remove("tiny", **kwargs)
    assert tree(home) == before and (outside / "precious.bin").stat().st_size == 10_000


def test_rm_refuses_while_a_pull_holds_the_lock(home):
    code = ("import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire();"
            "print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(home / "tiny" / ".pull.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree(home)
        with pytest.raises(StoreError, match="pull of it is running"):
            remove("tiny", everything=True)
        assert tree(home) == before
    finally:
        holder.kill()
        holder.wait()
    assert remove("tiny").freed > 0


def test_rm_cli_prints_what_it_freed_and_json(home):
    r = cli("rm", "tiny", "--format", "gguf", "--dry-run")
    assert r.exit_code == 0 and "would remove tiny/gguf/tiny-q8_0.gguf" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("tiny: would free ")
    r = cli("rm", "tiny", "--format", "gguf", "--json")
    data = json.loads(r.stdout)
    assert data["freed"] == sum(e["bytes"] for e in data["removed"]) > 0 and not data["dry_run"]
    assert cli("rm", "tiny", "--format", "gguf").stdout.strip() == "tiny: freed 0 B (nothing to remove)"
    assert cli("rm", "tiny", "--quiet").stdout == ""


@pytest.mark.parametrize("args, message", [
    (["rm", "tiny", "--format", "onnx2"], "unknown format 'onnx2'"),
    (["rm", "tiny", "--format", "gguf", "--all"], "--all removes every format"),
    (["rm", "nope"], "unknown release"),
])
def test_rm_bad_input_is_one_line(home, args, message):
    r = cli(*args)
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr.lower()
