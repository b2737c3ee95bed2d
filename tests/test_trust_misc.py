"""Trust, round 2 (issue 19), cases 6-8: writes in shared folders, sample's arguments, labels and switches.

Each test plays the attacker (or the careless caller) against real parts: real files and symlinks, the
real CLI on the tiny release, real pulls from a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import gpt2hub
from gpt2hub import hashes, offline, registry, store, vocab_cache
from gpt2hub.integrity import Check, FileCheck, Record, write_record
from gpt2hub.testing.release import REAL_FIXTURES
from gpt2hub.trust import MEASURED_LABEL
from tests.checks import invoke as cli, isolate, one_line_error

VICTIM_BYTES = b"the victim's own file\n"


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """A fresh home, no internet (https to a dead proxy), none of gpt2hub's switches set."""
    isolate(monkeypatch, tmp_path / "home")



@pytest.fixture
def victim(tmp_path) -> Path:
    """A file of another user's (here: the test's), which a planted link points at."""
    path = tmp_path / "victim" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(VICTIM_BYTES)
    return path


# --- 6. another local user redirects a write -----------------------------------------------------------

needs_real = pytest.mark.skipif(REAL_FIXTURES is None, reason="../shared/fixtures/openai-124M-real absent")


@pytest.fixture
def tokenizer_folder(real_vocab_folder) -> Path:
    return real_vocab_folder


def cache_names() -> dict[str, str]:
    """release file -> the name tiktoken looks for in its cache (sha1 of the URL)."""
    pytest.importorskip("tiktoken")
    from gpt2hub.tiktoken_cache import gpt2_files

    return {name: hashlib.sha1(url.encode()).hexdigest() for name, (url, _) in gpt2_files().items()}


@needs_real
def test_a_link_planted_at_tiktokens_temp_name_does_not_redirect_the_write(tokenizer_folder, tmp_path, victim):
    cache = tmp_path / "data-gym-cache"  # shared by every user of the machine
    cache.mkdir()
    names = cache_names()
    for entry in names.values():  # the temp name gpt2hub used to write: predictable from the pid
        (cache / f"{entry}.{os.getpid()}.tmp").symlink_to(victim)
    r = cli("tiktoken", str(tokenizer_folder), "--cache-dir", str(cache))
    assert r.exit_code == 0, r.stderr
    assert victim.read_bytes() == VICTIM_BYTES
    for name, entry in names.items():
        assert not (cache / entry).is_symlink()
        assert (cache / entry).read_bytes() == (tokenizer_folder / name).read_bytes()


@needs_real
def test_a_link_planted_at_the_cache_entry_is_refused_not_read_through(tokenizer_folder, tmp_path):
    cache = tmp_path / "data-gym-cache"
    cache.mkdir()
    names = cache_names()
    theirs = tmp_path / "attacker" / "encoder.json"  # the right bytes today, whatever its owner writes tomorrow
    theirs.parent.mkdir()
    shutil.copyfile(tokenizer_folder / "encoder.json", theirs)
    (cache / names["encoder.json"]).symlink_to(theirs)
    line = one_line_error(cli("tiktoken", str(tokenizer_folder), "--cache-dir", str(cache)), "symlink",
                          names["encoder.json"])
    assert "remove it" in line
    assert (cache / names["encoder.json"]).is_symlink()  # left for the user to look at, not silently replaced


def _record(home: Path) -> None:
    write_record(home, Record("x", {"a": FileCheck(1, None, Check.SIZE)}))


def _hash_memo(home: Path) -> None:
    (home / "f").write_bytes(b"data")
    hashes.sha256(home / "f")  # remembered in <home>/.cache/sha256.json


def _vocab(home: Path) -> None:
    vocab_cache.save("k", "tokenizer.json", "{}")  # <home>/.cache/vocab/k/tokenizer.json, then its index.json


PID = os.getpid()
# writer: (what writes, the file it writes under the home, the temp names it used to write there)
WRITERS = {
    "pull's record": (_record, ".gpt2hub-verified.json", [f"..gpt2hub-verified.json.{PID}.tmp"]),
    "sha256 memo": (_hash_memo, ".cache/sha256.json", [f".sha256.json.tmp-{PID}"]),
    "vocab cache": (_vocab, ".cache/vocab/k/tokenizer.json", [f".tokenizer.json.tmp-{PID}", f".index.json.tmp-{PID}"]),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_link_planted_at_an_old_temp_name_redirects_no_write(writer, victim):
    write, final, temps = WRITERS[writer]
    home = store.home()
    final = home / final
    final.parent.mkdir(parents=True, exist_ok=True)
    for temp in temps:
        (final.parent / temp).symlink_to(victim)
    write(home)
    assert victim.read_bytes() == VICTIM_BYTES
    assert final.is_file() and not final.is_symlink()


# --- 7. sample's arguments: one line each, in the CLI and the Python API -------------------------------

def sample(release: Path, *args: str):
    return cli("sample", str(release), "--prompt", "Hello", "--length", "6", *args)


@pytest.mark.parametrize("args, needle", [
    (("--temperature", "nan"), "--temperature nan: must be a finite number"),
    (("--temperature", "inf"), "--temperature inf: must be a finite number"),
    (("--seed", str(2 ** 80)), f"--seed {2 ** 80}: must be an integer in 0..{2 ** 64 - 1}"),
    (("--seed", "-1"), "--seed -1: must be an integer in 0.."),
    (("--top-k", str(2 ** 70)), f"--top-k {2 ** 70}: must be 0..50257"),
    (("--top-k", "50258"), "--top-k 50258: must be 0..50257"),
])
def test_bad_sample_arguments_are_one_line_before_any_output(tiny_release, args, needle):
    pytest.importorskip("torch")
    r = sample(tiny_release, *args)
    one_line_error(r, needle)
    assert "SAMPLE" not in r.stdout


def test_the_python_api_gives_the_same_one_line_errors(tiny_release):
    pytest.importorskip("torch")
    for kwargs, needle in (({"temperature": float("nan")}, "--temperature nan"), ({"seed": 2 ** 80}, "--seed"),
                           ({"top_k": 2 ** 70}, "--top-k")):
        with pytest.raises(gpt2hub.Gpt2hubError, match=needle) as e:
            gpt2hub.sample(tiny_release, prompt="Hello", length=4, **kwargs)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("temperature", ["1e-45", "1e-300"])
def test_a_temperature_below_float32s_normals_samples_greedily(tiny_release, temperature):
    pytest.importorskip("torch")
    greedy = sample(tiny_release, "--temperature", "0", "--seed", "1")
    tiny = sample(tiny_release, "--temperature", temperature, "--seed", "1")
    assert greedy.exit_code == 0 and tiny.exit_code == 0, tiny.stderr
    assert tiny.stdout == greedy.stdout


class Sharp:
    """The tiny model with logits x1000 (as sharp as a trained model's): divided by 2e-38 they pass float32's max."""

    def __init__(self, model):
        self.model, self.config, self.device = model, model.config, model.device

    def __call__(self, idx, past, last_only=False):
        logits, past = self.model(idx, past, last_only=last_only)
        return logits * 1000, past


def test_a_tiny_temperature_above_the_floor_cannot_overflow_to_nan(tiny_release):
    torch = pytest.importorskip("torch")
    from gpt2hub.sampling import Sampler, Settings, generate

    sampler = Sampler(tiny_release)
    model, context = Sharp(sampler.model), sampler.context("Hello")
    greedy = list(generate(model, context, 6, Settings(temperature=0)))
    sampled = list(generate(model, context, 6, Settings(temperature=2e-38), torch.Generator().manual_seed(1)))
    assert sampled == greedy


def test_the_largest_seed_wraps_for_the_next_sample(tiny_release):
    pytest.importorskip("torch")
    last = sample(tiny_release, "--seed", str(2 ** 64 - 1), "--nsamples", "2")
    assert last.exit_code == 0, last.stderr
    zero = sample(tiny_release, "--seed", "0")  # sample 2 used (2**64 - 1 + 1) mod 2**64
    assert last.stdout.split("SAMPLE 2")[1].split("\n", 1)[1].split("=" * 40)[0] == \
        zero.stdout.split("SAMPLE 1")[1].split("\n", 1)[1].split("=" * 40)[0]


# --- 8. labels that claim more than was checked --------------------------------------------------------

@pytest.fixture
def own_release(tiny_release, tmp_path) -> str:
    """The tiny release as a user's own (`manifest create`), pulled from a folder."""
    m = registry.create_manifest(tiny_release, "mine")
    (store.home() / "manifests").mkdir(parents=True)
    registry.write_manifest(m, store.home() / "manifests" / "mine.json")
    src = tmp_path / "src" / m.folders[0]
    src.mkdir(parents=True)
    for p in tiny_release.iterdir():
        shutil.copyfile(p, src / p.name)
    r = cli("pull", "mine", "--source", str(tmp_path / "src"), "--quiet")
    assert r.exit_code == 0, r.stderr
    return r.stdout


def test_a_users_own_sha256_is_labelled_as_theirs_in_pull_info_and_verify(own_release):
    from gpt2hub.release import locate
    from gpt2hub.verification.integrity import check_integrity

    assert "checked against your own sha256" in own_release and MEASURED_LABEL in own_release
    assert "published" not in own_release
    info = cli("info", "mine")
    assert info.exit_code == 0 and MEASURED_LABEL in info.stdout and "published sha256" not in info.stdout
    listed = {row["name"]: row for row in json.loads(cli("list", "--json").stdout)}
    assert set(listed["mine"]["checks"].values()) == {Check.MEASURED_SHA256.value}
    record = json.loads((store.release_dir("mine") / ".gpt2hub-verified.json").read_text())
    assert {f["check"] for f in record["files"].values()} == {"measured-sha256"}
    rows = [c for c in check_integrity(locate("mine")) if "sha256" in c.detail]
    assert rows and all(MEASURED_LABEL in c.detail and "published" not in c.detail for c in rows)


# --- 8. switches: one parser, words it does not know refused ------------------------------------------

def test_an_unknown_word_in_the_offline_switch_is_refused_and_off_means_off(monkeypatch):
    monkeypatch.setenv("GPT2HUB_OFFLINE", "maybe")
    one_line_error(cli("list"), "GPT2HUB_OFFLINE", "maybe", "not a switch")
    for word in ("off", "No", ""):
        monkeypatch.setenv("GPT2HUB_OFFLINE", word)
        assert cli("list").exit_code == 0 and not offline.enabled()
    monkeypatch.setenv("GPT2HUB_OFFLINE", "on")
    one_line_error(cli("mirror", "124M", "s3://bucket/x"), "offline")


def test_accept_different_shared_off_means_off(base_shared, monkeypatch):
    manifest, src = base_shared
    monkeypatch.setenv("GPT2HUB_ACCEPT_DIFFERENT_SHARED", "off")
    one_line_error(cli("pull", "tiny", "--manifest", str(manifest), "--source", str(src), "--quiet"),
                   "GPT2HUB_ACCEPT_DIFFERENT_SHARED=1")
    monkeypatch.setenv("GPT2HUB_ACCEPT_DIFFERENT_SHARED", "perhaps")
    one_line_error(cli("pull", "tiny", "--manifest", str(manifest), "--source", str(src), "--quiet"),
                   "GPT2HUB_ACCEPT_DIFFERENT_SHARED", "not a switch")


@pytest.fixture
def base_shared(tiny_release, tmp_path) -> tuple[Path, Path]:
    """A manifest whose encoder.json claims 124M's shared sha256, and a folder with a different encoder.json."""
    data = registry.create_manifest(tiny_release, "tiny").to_dict()
    data["folders"] = ["tiny"]
    data["files"] = [{**f, "sha256": "0" * 64, "status": "shared"} if f["name"] == "encoder.json" else f
                     for f in data["files"]]
    manifest = tmp_path / "tiny.json"
    manifest.write_text(json.dumps(data))
    (tmp_path / "src" / "tiny").mkdir(parents=True)
    for p in tiny_release.iterdir():
        shutil.copyfile(p, tmp_path / "src" / "tiny" / p.name)
    return manifest, tmp_path / "src"
