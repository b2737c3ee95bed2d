"""`gpt2hub verify hf://ORG/REPO[@REVISION] --against NAME` against a real third-party Hub server (olah on loopback,
as tests/test_pull_hf.py runs it): the repo's files are fetched into the store's cache, each checked against the
Hub's hash, and proven against the release; nothing is imported, and a second verify of the commit fetches nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.checks import invoke, isolate, one_line_error, pulled_store
from tests.test_pull_hf import Olah, hf_folder, olah  # noqa: F401  (the Hub server and transformers' save_pretrained)

safetensors_numpy = pytest.importorskip("safetensors.numpy")

TAMPERED = "transformer.h.1.mlp.c_proj.weight"  # OpenAI's model/h1/mlp/c_proj/w, the name verify gives


@pytest.fixture(scope="module")
def store_home(tiny_release, tmp_path_factory) -> Path:
    """A home holding the tiny release as `tiny` (what the repos are proven against)."""
    return pulled_store(tiny_release, tmp_path_factory.mktemp("store"), [])


@pytest.fixture
def home(store_home, monkeypatch, olah: Olah) -> Path:  # noqa: F811
    isolate(monkeypatch, store_home)
    monkeypatch.setenv("HF_ENDPOINT", olah.url)
    return store_home


def _cached(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir() if p.name.startswith(".hf-"))


def _verify(*args: str) -> dict:
    return _verify_any(*args, "--against", "tiny")


def _verify_any(*args: str) -> dict:
    r = invoke("verify", *args, "--weights-only", "--json")
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


def test_a_hub_repo_of_the_releases_weights_is_identical(home, olah):  # noqa: F811
    r = invoke("verify", "hf://acme/tiny-gpt2", "--against", "tiny", "--progress", "none")
    assert r.exit_code == 0, r.output
    commit = olah._git(olah.root / "mirrors" / "models" / "acme" / "tiny-gpt2", "rev-parse", "HEAD").strip()
    lines = r.stdout.splitlines()
    assert lines[0] == f"hf://acme/tiny-gpt2@{commit[:12]} (hf) against tiny"
    assert lines[1].startswith("  files        5, each with the hash the Hub lists (model.safetensors: sha256; "
                               "config.json, ")
    assert "llama.cpp" not in r.stdout and "transformers" in r.stdout  # the file's own consumer ran
    assert lines[-1] == "PASS identical to tiny (f32)"
    assert f".hf-acme--tiny-gpt2-{commit[:12]}" in _cached(home)
    assert not (home / "tiny-gpt2").exists() and not (home / "manifests" / "tiny-gpt2.json").exists()  # not imported


def test_a_second_verify_of_the_commit_fetches_nothing(home, olah, hf_folder):  # noqa: F811
    olah.publish("acme/again", hf_folder)
    first = _verify("hf://acme/again")
    assert first["passed"] and first["hub"]["fetched"] == sum(f["size"] for f in first["hub"]["files"]) > 0
    # the weights' LFS object is gone from the server: any attempt to fetch them again would now fail
    olah.lfs_object("acme/again", (hf_folder / "model.safetensors").read_bytes()).unlink()
    second = _verify("hf://acme/again")
    assert second["passed"] and second["hub"]["fetched"] == 0 and second["verdict"] == "identical to tiny (f32)"
    assert {f["check"] for f in second["hub"]["files"]} == {"hub-sha256", "hub-git-oid"}


def test_without_against_the_release_on_disk_with_its_shapes_is_found(home):
    p = _verify_any("hf://acme/tiny-gpt2")
    assert p["passed"] and p["candidates"] == ["tiny"] and p["verdict"] == "identical to tiny (f32)"


def test_a_tampered_repo_fails_naming_the_tensor(home, olah, hf_folder, tmp_path):  # noqa: F811
    folder = shutil.copytree(hf_folder, tmp_path / "tampered")
    tensors = safetensors_numpy.load_file(folder / "model.safetensors")
    tensors[TAMPERED] = tensors[TAMPERED] * tensors[TAMPERED].dtype.type(1.01)
    safetensors_numpy.save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    olah.publish("acme/scaled", folder)  # the Hub's sha256 is the tampered file's: the transfer checks out
    r = invoke("verify", "hf://acme/scaled", "--against", "tiny", "--weights-only")
    assert r.exit_code == 1, r.output
    differs = [line for line in r.stdout.splitlines() if line.startswith("  DIFFERS")]
    assert len(differs) == 1 and "model/h1/mlp/c_proj/w" in differs[0] \
        and "scaled by 1.01" in differs[0], r.stdout
    assert r.stdout.splitlines()[-1].startswith("FAIL NOT tiny: 1 of 28 tensors differ")


def test_bytes_that_are_not_the_hubs_are_refused_and_nothing_verified(home, olah, hf_folder):  # noqa: F811
    olah.publish("acme/corrupt", hf_folder)
    obj = olah.lfs_object("acme/corrupt", (hf_folder / "model.safetensors").read_bytes())
    data = bytearray(obj.read_bytes())
    data[-1] ^= 1  # the Hub still lists the sha256 of the original bytes
    obj.write_bytes(bytes(data))
    one_line_error(invoke("verify", "hf://acme/corrupt", "--against", "tiny", "--weights-only", "--progress", "none"),
                   "model.safetensors", "is not the Hub's", "nothing verified")


@pytest.mark.parametrize("spec, needles", [
    ("hf://acme/no-such-repo", ("no such repository",)),
    ("hf://acme/tiny-gpt2@no-such-branch", ("no revision 'no-such-branch'",)),
    ("hf://acme", ("not hf://ORG/REPO",)),
])
def test_a_missing_repo_or_revision_or_a_bad_spec_is_one_line(home, spec, needles):
    before = _cached(home)
    one_line_error(invoke("verify", spec, "--against", "tiny", "--weights-only"), *needles)
    assert _cached(home) == before  # nothing left behind


def test_a_missing_release_to_prove_against_is_one_line(home):
    one_line_error(invoke("verify", "hf://acme/tiny-gpt2", "--against", "no-such-release", "--weights-only"),
                   "no-such-release")


def test_offline_verify_of_a_hub_repo_is_refused(home, monkeypatch):
    monkeypatch.setenv("GPT2HUB_OFFLINE", "1")
    one_line_error(invoke("verify", "hf://acme/tiny-gpt2", "--against", "tiny"), "offline")
