"""`gpt2hub pull hf://ORG/REPO[@REVISION]` against a real third-party Hub server: olah (PyPI), serving local git
repos offline on 127.0.0.1 as the Hub's API does (`/api/models/{repo}/revision/{rev}`, `/tree/{rev}` with each LFS
file's sha256, `/{repo}/resolve/{rev}/{file}`). Each repo is a git repository whose weights are LFS pointers with
their objects under .git/lfs/objects, as `git lfs` leaves them; the HF folder in it is transformers' save_pretrained.
olah answers a missing repo with 401 RepoNotFound, as the Hub does for anonymous callers.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import gpt2hub
from gpt2hub import registry, store
from gpt2hub.manifest import ReleaseManifest
from tests.checks import invoke, isolate, one_line_error
from tests.test_import import hf_folder  # noqa: F401  (the fixture: transformers' save_pretrained of the tiny release)

LFS_SUFFIXES = (".safetensors", ".bin")  # what the Hub's .gitattributes sends to LFS


class Olah:
    """olah on 127.0.0.1, serving the git repos under `mirrors/models/ORG/REPO`."""

    def __init__(self, root: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.root, self.url = root, f"http://127.0.0.1:{port}"
        (root / "mirrors" / "models").mkdir(parents=True)
        config = root / "olah.toml"
        config.write_text(f'[basic]\nhost = "127.0.0.1"\nport = {port}\nmirrors-path = ["{root / "mirrors"}"]\n'
                          f'repos-path = "{root / "repos"}"\n[accessibility]\noffline = true\n')
        self.log = open(root / "olah.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", "from olah.server import cli; cli()", "-c", str(config)],
                                     cwd=root, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{self.url}/api/models/none/none/revision/main", timeout=2)
                return
            except requests.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"olah did not start: {(root / 'olah.log').read_text()[-2000:]}")
                time.sleep(0.3)

    def publish(self, repo_id: str, folder: Path, branch: str = "main") -> str:
        """The folder's files as a commit of repo_id (weights as LFS pointers); returns the commit id."""
        repo = self.root / "mirrors" / "models" / repo_id
        if not repo.exists():
            repo.mkdir(parents=True)
            self._git(repo, "init", "-q", "-b", branch)
        for p in sorted(folder.iterdir()):
            data = p.read_bytes()
            if p.name.endswith(LFS_SUFFIXES):
                oid = hashlib.sha256(data).hexdigest()
                obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
                obj.parent.mkdir(parents=True, exist_ok=True)
                obj.write_bytes(data)
                data = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()
            (repo / p.name).write_bytes(data)
        self._git(repo, "add", "-A")
        self._git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "upload")
        return self._git(repo, "rev-parse", "HEAD").strip()

    def lfs_object(self, repo_id: str, data: bytes) -> Path:
        oid = hashlib.sha256(data).hexdigest()
        return self.root / "mirrors" / "models" / repo_id / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    @staticmethod
    def _git(repo: Path, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def olah(tmp_path_factory, hf_folder):  # noqa: F811
    pytest.importorskip("olah")
    if shutil.which("git") is None:
        pytest.skip("git is not installed (the Hub's repos are git repositories)")
    server = Olah(tmp_path_factory.mktemp("olah"))
    server.publish("acme/tiny-gpt2", hf_folder)
    yield server
    server.stop()


@pytest.fixture
def home(tmp_path, monkeypatch, olah) -> Path:
    isolate(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("HF_ENDPOINT", olah.url)
    return tmp_path / "home"


def _staging(home: Path) -> list[Path]:
    return [p for p in home.iterdir() if p.name.startswith(".hf-")] if home.exists() else []


def test_a_hub_repo_is_fetched_checked_against_the_hubs_hashes_and_imported(home, olah, hf_folder):  # noqa: F811
    r = invoke("pull", "hf://acme/tiny-gpt2", "--quiet")
    assert r.exit_code == 0, r.output
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert "checked: the sha256 the Hub lists for the file" in lines["model.safetensors"]
    assert "checked: the git blob id the Hub lists for the file" in lines["config.json"]
    m = ReleaseManifest.from_file(home / "manifests" / "tiny-gpt2.json")
    assert m.kind == "hf" and all(f.status == "measured" for f in m.files)  # the store's own measurement
    assert "the sha256 the Hub lists" in m.file("model.safetensors").note and "acme/tiny-gpt2@" in m.description
    original = store.release_dir("tiny-gpt2")
    for p in hf_folder.iterdir():
        assert (original / p.name).read_bytes() == p.read_bytes(), p.name
    assert _staging(home) == []  # the download folder went once imported
    assert {x["name"]: x["state"] for x in gpt2hub.list_releases()}["tiny-gpt2"] == "verified"
    assert gpt2hub.convert("tiny-gpt2", to="safetensors").path == home / "tiny-gpt2" / "safetensors"


def test_a_revision_and_a_name_are_honoured(home, olah):
    commit = olah._git(olah.root / "mirrors" / "models" / "acme" / "tiny-gpt2", "rev-parse", "HEAD").strip()
    r = gpt2hub.pull(f"hf://acme/tiny-gpt2@{commit}", as_name="pinned")
    assert r.commit == commit and r.imported.name == "pinned" and registry.resolve("pinned").kind == "hf"
    again = invoke("pull", "hf://acme/tiny-gpt2", "--name", "pinned", "--quiet")
    one_line_error(again, "already here", "--force")
    assert invoke("pull", "hf://acme/tiny-gpt2", "--name", "pinned", "--force", "--quiet").exit_code == 0


def test_a_tampered_lfs_file_is_refused_and_nothing_is_imported(home, olah, hf_folder, tmp_path):  # noqa: F811
    olah.publish("acme/tampered", hf_folder)
    obj = olah.lfs_object("acme/tampered", (hf_folder / "model.safetensors").read_bytes())
    data = bytearray(obj.read_bytes())
    data[-1] ^= 1  # one bit of the last weight: the Hub still lists the sha256 of the original bytes
    obj.write_bytes(bytes(data))
    err = one_line_error(invoke("pull", "hf://acme/tampered", "--quiet"), "model.safetensors", "is not the Hub's",
                         "nothing imported")
    assert "Traceback" not in err
    assert not (home / "tampered").exists() and not (home / "manifests" / "tampered.json").exists()


@pytest.mark.parametrize("spec, needles", [
    ("hf://acme/no-such-repo", ("no such repository",)),
    ("hf://acme/tiny-gpt2@no-such-branch", ("no revision 'no-such-branch'",)),
    ("hf://acme", ("not hf://ORG/REPO",)),
    ("hf://acme/../etc", ("not hf://ORG/REPO",)),
    ("hf://acme/tiny-gpt2@", ("revision after '@'",)),
])
def test_a_missing_repo_or_revision_or_a_bad_spec_is_one_line(home, spec, needles):
    one_line_error(invoke("pull", spec, "--quiet"), *needles)
    assert not home.exists() or not [p for p in home.iterdir() if p.name not in (".hashes.json",)]


def test_a_repo_without_gpt2_weights_is_refused_naming_what_it_lists(home, olah, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "README.md").write_text("no weights here")
    olah.publish("acme/no-weights", folder)
    one_line_error(invoke("pull", "hf://acme/no-weights", "--quiet"), "no GPT-2 weights", "README.md")


def test_a_name_that_shadows_a_shipped_release_is_refused_before_any_request(home, olah):
    one_line_error(invoke("pull", "hf://acme/tiny-gpt2", "--name", "gpt2", "--quiet"), "OpenAI's release 124M")


def test_offline_pull_of_a_hub_repo_is_refused(home, monkeypatch):
    monkeypatch.setenv("GPT2HUB_OFFLINE", "1")
    one_line_error(invoke("pull", "hf://acme/tiny-gpt2", "--quiet"), "offline")


def test_options_of_gpt2hub_releases_are_refused_for_a_hub_repo(home):
    one_line_error(invoke("pull", "hf://acme/tiny-gpt2", "--dry-run"), "dry_run", "not to a Hub repo")


def test_a_sharded_repo_comes_with_its_index_and_every_shard(home, olah, hf_folder, tmp_path):  # noqa: F811
    transformers = pytest.importorskip("transformers")
    sharded = tmp_path / "sharded"
    transformers.GPT2LMHeadModel.from_pretrained(hf_folder).save_pretrained(sharded, max_shard_size="4MB")
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(hf_folder / name, sharded / name)
    olah.publish("acme/sharded", sharded)
    r = gpt2hub.pull("hf://acme/sharded")
    shards = sorted(p.name for p in sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2
    assert [f.name for f in r.files] == ["config.json", "model.safetensors.index.json", *shards, "vocab.json",
                                         "merges.txt", "generation_config.json"]
    assert all(f.check.value == "hub-sha256" for f in r.files if f.name in shards)
    assert gpt2hub.convert("sharded", to="safetensors").tensors == 28
