"""The `gpt2hub` command line: list, info, path, manifest create, and its error handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2hub import store
from gpt2hub.integrity import Check, FileCheck, Record, write_record
from gpt2hub.registry import resolve
from tests.checks import invoke

RELEASES = ["124M", "355M", "774M", "1558M"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty GPT2HUB_HOME for each test."""
    h = tmp_path / "home"
    monkeypatch.setenv("GPT2HUB_HOME", str(h))
    monkeypatch.delenv("GPT2HUB_MANIFESTS", raising=False)
    return h


gpt2hub = invoke


def console(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script (or the module, where no script sits beside this python)."""
    script = Path(sys.executable).with_name("gpt2hub")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "gpt2hub.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})}, timeout=120)


def states(home: Path) -> dict[str, tuple[str, list[str]]]:
    rows = json.loads(gpt2hub("list", "--json").stdout)
    return {r["name"]: (r["state"], r["formats"]) for r in rows}


# --- list --------------------------------------------------------------------------------------

def test_list_shows_the_four_releases(home):
    result = gpt2hub("list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "ALIASES", "PARAMETERS"]
    assert [line.split()[0] for line in lines[1:5]] == RELEASES
    assert f"home: {home}" in result.stdout


def test_list_json_has_sizes_and_states(home):
    rows = json.loads(gpt2hub("list", "--json").stdout)
    assert [r["name"] for r in rows] == RELEASES
    small = rows[0]
    assert small["download_size"] == sum(f.size for f in resolve("124M").files)
    assert small["download_size_known"] and not rows[-1]["download_size_known"]  # 1558M meta size unknown
    assert small["state"] == "absent" and small["formats"] == []


def test_list_state_partial_when_files_without_record(home):
    folder = home / "124M" / "original"
    folder.mkdir(parents=True)
    (folder / "model.ckpt.index.part").write_bytes(b"x" * 10)
    assert states(home)["124M"] == ("partial", [])


def test_list_state_verified_when_record_matches_files(home):
    folder = home / "124M" / "original"
    folder.mkdir(parents=True)
    (folder / "checkpoint").write_bytes(b"c" * 77)
    write_record(folder, Record("124M", {"checkpoint": FileCheck(77, None, Check.PUBLISHED_SHA256)}))
    assert states(home)["124M"] == ("verified", [])
    write_record(folder, Record("124M", {"checkpoint": FileCheck(77, None, Check.SIZE)}))
    assert states(home)["124M"] == ("pulled", [])  # complete, but not every file verified


def test_list_state_partial_when_verified_file_changed_size(home):
    folder = home / "124M" / "original"
    folder.mkdir(parents=True)
    (folder / "checkpoint").write_bytes(b"c" * 70)
    write_record(folder, Record("124M", {"checkpoint": FileCheck(77, None, Check.PUBLISHED_SHA256)}))
    assert states(home)["124M"] == ("partial", [])


def test_list_shows_converted_formats(home):
    (home / "355M" / "safetensors").mkdir(parents=True)
    (home / "355M" / "safetensors" / "model.safetensors").write_bytes(b"{}")
    (home / "355M" / "gguf").mkdir(parents=True)  # empty: an unfinished output does not count
    assert states(home)["355M"] == ("absent", ["safetensors"])
    assert "safetensors" in gpt2hub("list").stdout


# --- info --------------------------------------------------------------------------------------

def test_info_json_resolves_alias_1_5B_to_1558M():
    result = gpt2hub("info", "1.5B", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["name"] == "1558M" and data["hparams"]["n_layer"] == 48
    assert {"name", "aliases", "released", "parameters", "hparams", "folders", "files", "tensors"} <= data.keys()


def test_info_text_lists_files_and_hparams():
    result = gpt2hub("info", "gpt2")
    assert result.exit_code == 0
    assert result.stdout.startswith("124M")
    assert "n_layer=12" in result.stdout and "model.ckpt.data-00000-of-00001" in result.stdout


def test_info_with_manifest_file(tmp_path):
    data = resolve("124M").to_dict() | {"name": "mine", "aliases": [], "folders": ["mine"]}
    (tmp_path / "mine.json").write_text(json.dumps(data))
    result = gpt2hub("info", "mine", "--manifest", str(tmp_path / "mine.json"), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["name"] == "mine"


# --- path --------------------------------------------------------------------------------------

def test_path_defaults_to_original(home):
    result = gpt2hub("path", "117M")
    assert result.exit_code == 0 and result.stdout.strip() == str(home / "124M" / "original")


def test_path_of_a_format(home):
    assert gpt2hub("path", "gpt2-xl", "--format", "gguf").stdout.strip() == str(home / "1558M" / "gguf")


def test_path_rejects_unknown_format():
    result = gpt2hub("path", "124M", "--format", "onyx")
    assert result.exit_code == 2 and "onyx" in result.stderr


# --- errors, through the real console script ---------------------------------------------------

def test_unknown_name_is_one_line_and_exit_1(home):
    result = console("info", "gpt2-chatbot", env={"GPT2HUB_HOME": str(home)})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("gpt2hub: error: unknown release 'gpt2-chatbot'; known: 124M")


def test_missing_manifest_file_is_one_line_and_exit_1(home, tmp_path):
    result = console("path", "124M", "--manifest", str(tmp_path / "nope.json"), env={"GPT2HUB_HOME": str(home)})
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "nope.json" in result.stderr


def test_list_runs_as_console_script(home):
    result = console("list", env={"GPT2HUB_HOME": str(home)})
    assert result.returncode == 0 and all(name in result.stdout for name in RELEASES)


def test_cli_import_is_light():
    code = "import sys, gpt2hub.cli; print(sorted(m for m in ('tensorflow', 'torch', 'boto3', 'transformers', 'numpy', 'requests', 'tqdm', 'tiktoken') if m in sys.modules and type(sys.modules[m]).__name__ != '_LazyModule'))"  # a lazy placeholder is not an import
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_name_via_cli_runner_lists_known_names():
    result = gpt2hub("path", "nope")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().endswith("1558M (1.5B, xl, gpt2-xl)")


# --- manifest create ---------------------------------------------------------------------------

def test_manifest_create_writes_to_home_and_registers(tiny_release, home):
    result = gpt2hub("manifest", "create", str(tiny_release), "--name", "tiny-ft", "--alias", "tft")
    assert result.exit_code == 0, result.stderr
    path = home / "manifests" / "tiny-ft.json"
    assert result.stdout.startswith(f"wrote {path} (7 files, 28 tensors")
    assert json.loads(gpt2hub("info", "TFT", "--json").stdout)["name"] == "tiny-ft"
    assert "tiny-ft" in gpt2hub("list").stdout


def test_manifest_create_to_output_file(tiny_release, tmp_path):
    out = tmp_path / "out.json"
    assert gpt2hub("manifest", "create", str(tiny_release), "--name", "t", "-o", str(out)).exit_code == 0
    assert json.loads(gpt2hub("info", "t", "--manifest", str(out), "--json").stdout)["hparams"]["n_layer"] == 2


def test_manifest_create_refuses_to_overwrite_another_release(tiny_release, tmp_path):
    out = tmp_path / "out.json"
    gpt2hub("manifest", "create", str(tiny_release), "--name", "first", "-o", str(out))
    before = out.read_bytes()
    result = gpt2hub("manifest", "create", str(tiny_release), "--name", "second", "-o", str(out))
    assert result.exit_code == 1 and "describes another release" in result.stderr
    assert out.read_bytes() == before


def test_manifest_create_on_folder_without_checkpoint_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = gpt2hub("manifest", "create", str(tmp_path / "empty"), "--name", "x")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "no TensorFlow checkpoint" in result.stderr


@pytest.mark.parametrize("record", ["[]", '{"files": ["checkpoint"]}', '{"files": {"checkpoint": 77}}', "{"])
def test_list_survives_a_damaged_verified_record(home, record):
    folder = home / "124M" / "original"
    folder.mkdir(parents=True)
    (folder / "checkpoint").write_bytes(b"c" * 77)
    (folder / store.VERIFIED_RECORD).write_text(record)
    result = gpt2hub("list", "--json")
    assert result.exit_code == 0 and states(home)["124M"] == ("partial", [])
