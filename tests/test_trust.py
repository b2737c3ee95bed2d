"""Trust (issue 10): a mirror cannot lie, hostile input cannot hurt.

Each test plays the attacker against real parts: an HTTP mirror on loopback (tests.hostile_mirror), the
real CLI, real files. Grouped as the issue's "What breaks today" cases 1-8, then property-based tests.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import gpt2hub
from gpt2hub import registry, store
from gpt2hub.errors import CheckpointError, DownloadError, Gpt2hubError
from gpt2hub.manifest import MAX_MANIFEST_BYTES
from gpt2hub.integrity import Check, read_record
from gpt2hub.pulling import pull
from gpt2hub.ranges import record_path
from gpt2hub.registry import ReleaseManifest, create_manifest
from gpt2hub.remote import redact
from gpt2hub.retry import RetryPolicy
from gpt2hub.sources import PUBLIC_MIRRORS, default_sources
from gpt2hub.sstable import NO_COMPRESSION, TABLE_MAGIC, _BlockBuilder, crc32c, mask_crc, put_varint as _put_varint
from gpt2hub.tfbundle import encode_header
from gpt2hub.tfcheckpoint import Checkpoint, read_index
from gpt2hub.tfwriter import write_checkpoint
from tests.checks import invoke as cli, isolate, one_line_error
from tests.hostile_mirror import HOSTILE, HostileMirror, deep_json, hostile_manifest, key_bomb_index
from tests.httpserver import Faults, FaultyServer

DATA = "model.ckpt.data-00000-of-00001"
INDEX = "model.ckpt.index"
FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05)
DEAD_PROXY = "http://127.0.0.1:9"
DEAD = "http://127.0.0.1:9/nothing"


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """A fresh home, no internet (https to a dead proxy), none of gpt2hub's switches set."""
    isolate(monkeypatch, tmp_path / "home")


@pytest.fixture(scope="module")
def base(tiny_release) -> dict:
    """A valid manifest of the tiny release, named foo, as a mirror would publish it."""
    return create_manifest(tiny_release, "foo").to_dict()


@pytest.fixture
def evil(tmp_path, tiny_release):
    with HostileMirror(tmp_path / "mirror") as m:
        m.release("foo", tiny_release)
        yield m



def home() -> Path:
    return store.home()


# --- 1. a mirror's manifest writes anywhere -------------------------------------------------------------

@pytest.mark.parametrize("attack", ["escape-dotdot", "escape-absolute", "adopt-outside", "folder-escape",
                                    "own-suffix", "nul-name"])
def test_a_mirror_manifest_naming_paths_is_refused_and_touches_nothing(attack, evil, base, tmp_path):
    victim, secret = tmp_path / "victim.txt", tmp_path / "secret.txt"
    victim.write_text("mine")
    secret.write_text("aws_secret_access_key = hunter2")
    evil.publish("foo", hostile_manifest(base, attack))
    line = one_line_error(cli("pull", "foo", "--source", evil.url, "--quiet"), "plain folder name")
    assert "foo" in line or "gpt2hub-manifest.json" in line
    assert victim.read_text() == "mine" and secret.read_text().endswith("hunter2")
    assert not Path("/tmp/gpt2hub-victim.txt").exists()
    assert not (home() / "manifests").exists() and not (home() / "foo").exists()


def test_a_link_at_a_release_path_is_never_followed(evil, base, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    evil.publish("foo", base)
    dest = store.release_dir("foo")
    dest.mkdir(parents=True)
    (dest / "encoder.json").symlink_to(victim)
    one_line_error(cli("pull", "foo", "--source", evil.url, "--quiet"), "resolves outside")
    assert victim.read_text() == "mine"


# --- 2. a mirror's manifest replaces or shadows a shipped release -------------------------------------

@pytest.mark.parametrize("attack,asked", [("shadow-shipped", "foo"), ("alias-shadow", "foo")])
def test_a_mirror_manifest_claiming_a_shipped_name_is_refused(attack, asked, evil, base):
    evil.publish("foo", hostile_manifest(base, attack))
    one_line_error(cli("pull", asked, "--source", evil.url, "--quiet"), "already names", "new release")
    assert not list((home() / "manifests").glob("*.json")) if (home() / "manifests").exists() else True
    assert json.loads(cli("info", "gpt2", "--json").stdout)["name"] == "124M"
    shipped = json.loads(cli("info", "124M", "--json").stdout)
    assert shipped["aliases"] == ["117M", "small", "gpt2"] and "sources" not in shipped


@pytest.mark.parametrize("args", [["--name", "xl"], ["--name", "124M"], ["--name", "mine", "--alias", "gpt2"]])
def test_manifest_create_refuses_a_name_that_is_taken(args, tiny_release):
    one_line_error(cli("manifest", "create", str(tiny_release), *args), "already names another release")
    assert cli("info", "xl", "--json").stdout and json.loads(cli("info", "xl", "--json").stdout)["name"] == "1558M"


def test_a_user_manifest_cannot_shadow_a_shipped_alias(base, capsys):
    folder = home() / "manifests"
    folder.mkdir(parents=True)
    (folder / "aaa.json").write_text(json.dumps({**base, "name": "aaa", "aliases": ["124M", "gpt2"], "folders": ["aaa"]}))
    assert registry.resolve("gpt2").name == "124M"
    assert "aaa.json: 124M, gpt2 already names another release" in capsys.readouterr().err


# --- 3. the mirror vouches for itself -----------------------------------------------------------------

def test_a_mirror_manifest_is_only_the_mirrors_word(evil, base):
    published = {**base, "sources": ["http://attacker.example/"],
                 "files": [{**f, "status": "published"} for f in base["files"]]}
    evil.publish("foo", published)
    r = cli("pull", "foo", "--source", evil.url, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["verified"] is False
    assert {f["check"] for f in summary["files"]} == {Check.MIRROR_SHA256.value}
    saved = json.loads((home() / "manifests" / "foo.json").read_text())
    assert "sources" not in saved and {f["status"] for f in saved["files"]} == {"mirror"}
    text = cli("pull", "foo", "--source", evil.url)
    assert "already pulled (0 of 7 files verified)" in text.stdout and "not verified: the mirror's own sha256" in text.stdout
    row = {r["name"]: r for r in json.loads(cli("list", "--json").stdout)}["foo"]
    assert row["state"] == "pulled" and set(row["checks"].values()) == {Check.MIRROR_SHA256.value}
    info = cli("info", "foo")
    assert "not every file verified" in info.stdout and "mirror's own sha256" in info.stdout


def _tampered(src: Path, dest: Path) -> Path:
    """The release with its wte changed and a matching index: a mirror that lies consistently."""
    dest.mkdir(parents=True)
    for p in src.iterdir():
        shutil.copyfile(p, dest / p.name)
    with Checkpoint(src) as ckpt:
        tensors = [(n, np.array(ckpt.tensor(n)) + (1.0 if n == "model/wte" else 0.0)) for n in ckpt.entries]
        write_checkpoint(dest / "model.ckpt", tensors)
    return dest


@pytest.fixture
def shipped_tiny(tiny_release, monkeypatch):
    """The tiny release as if OpenAI had published it as 'tinyship', with sizes but no sha256 for data and index
    (as 355M-1558M): registry.is_shipped holds for it, so its index is asked of the origin."""
    data = create_manifest(tiny_release, "tinyship").to_dict()
    for f in data["files"]:
        if f["name"] in (DATA, INDEX, "model.ckpt.meta", "hparams.json"):
            f.update(sha256=None, status="published")
    m = ReleaseManifest.from_dict(data, "tinyship (test registry)")
    shipped = registry._builtin_manifests()
    monkeypatch.setattr(registry, "_builtin_manifests", lambda: (*shipped, m))
    return m


def test_the_index_comes_from_the_origin_and_catches_a_mirror_lying_consistently(shipped_tiny, tiny_release,
                                                                                  tmp_path, monkeypatch):
    (tmp_path / "origin" / "tinyship").mkdir(parents=True)
    shutil.copyfile(tiny_release / INDEX, tmp_path / "origin" / "tinyship" / INDEX)  # the origin serves its index only
    _tampered(tiny_release, tmp_path / "mirror" / "tinyship")
    with FaultyServer(tmp_path / "origin") as origin, FaultyServer(tmp_path / "mirror") as mirror:
        monkeypatch.setenv("GPT2HUB_ORIGIN", origin.url)
        with pytest.raises(DownloadError, match="CRC32C") as e:
            pull("tinyship", sources=[mirror.url], retry=FAST)
    assert "\n" not in str(e.value)
    assert origin.served(INDEX) and not (store.release_dir("tinyship") / DATA).exists()


def test_the_origin_index_verifies_a_mirrors_data(shipped_tiny, tiny_release, tmp_path, monkeypatch):
    (tmp_path / "origin" / "tinyship").mkdir(parents=True)
    shutil.copyfile(tiny_release / INDEX, tmp_path / "origin" / "tinyship" / INDEX)
    with FaultyServer(tmp_path / "origin") as origin, HostileMirror(tmp_path / "mirror") as mirror:
        mirror.release("tinyship", tiny_release)
        monkeypatch.setenv("GPT2HUB_ORIGIN", origin.url)
        r = pull("tinyship", sources=[mirror.url], retry=FAST)
    checks = {f.name: f for f in r.files}
    assert checks[INDEX].check == Check.ORIGIN_CRC32C and checks[INDEX].source == origin.url
    assert checks[DATA].check == Check.ORIGIN_CRC32C and checks[DATA].source == mirror.url
    assert checks["model.ckpt.meta"].check == Check.SIZE  # nothing published for it: said plainly
    assert not read_record(r.path).verified


def test_without_the_origin_integrity_rests_on_the_mirror_and_says_so(shipped_tiny, tiny_release, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("GPT2HUB_ORIGIN", DEAD)
    with HostileMirror(tmp_path / "mirror") as mirror:
        mirror.release("tinyship", tiny_release)
        r = pull("tinyship", sources=[mirror.url], retry=FAST)
    data = next(f for f in r.files if f.name == DATA)
    assert data.check == Check.MIRROR_CRC32C and not data.verified
    assert any("rests on the index from" in w for w in r.warnings)


@pytest.mark.parametrize("origin_index", ["same", "different"])
def test_a_pull_made_without_the_origin_is_vouched_for_once_it_answers(origin_index, shipped_tiny, tiny_release,
                                                                      tmp_path, monkeypatch):
    (tmp_path / "origin" / "tinyship").mkdir(parents=True)
    index = tiny_release / INDEX if origin_index == "same" else _tampered(tiny_release, tmp_path / "other") / INDEX
    shutil.copyfile(index, tmp_path / "origin" / "tinyship" / INDEX)
    with FaultyServer(tmp_path / "origin") as origin, HostileMirror(tmp_path / "mirror") as mirror:
        mirror.release("tinyship", tiny_release)
        monkeypatch.setenv("GPT2HUB_ORIGIN", DEAD)
        first = pull("tinyship", sources=[mirror.url], retry=FAST)
        assert next(f for f in first.files if f.name == DATA).check == Check.MIRROR_CRC32C
        before = len(mirror.server.log)
        monkeypatch.setenv("GPT2HUB_ORIGIN", origin.url)
        if origin_index == "different":  # OpenAI's index says these bytes are not its release
            with pytest.raises(DownloadError, match="CRC32C"):
                pull("tinyship", sources=[mirror.url], retry=FAST)
            return
        again = pull("tinyship", sources=[mirror.url], retry=FAST)
    assert again.already and mirror.server.log[before:] == []  # nothing fetched again but OpenAI's small index
    assert {f.name: f.check for f in again.files}[DATA] == Check.ORIGIN_CRC32C
    assert read_record(again.path).files[DATA].check == Check.ORIGIN_CRC32C


def test_public_mirrors_can_be_refused(monkeypatch):
    assert set(PUBLIC_MIRRORS) <= set(default_sources())
    assert not set(PUBLIC_MIRRORS) & set(default_sources(public_mirrors=False))
    monkeypatch.setenv("GPT2HUB_NO_PUBLIC_MIRRORS", "1")
    assert not set(PUBLIC_MIRRORS) & set(default_sources())
    line = one_line_error(cli("pull", "124M", "--no-public-mirrors", "--quiet"), "openaipublic")
    assert "backblaze" not in line and "huggingface" not in line


def test_larger_sizes_share_124Ms_published_tokenizer_and_checkpoint_hashes():
    small = registry.resolve("124M")
    for name in ("355M", "774M", "1558M"):
        for f in ("encoder.json", "vocab.bpe", "checkpoint"):
            rec = registry.resolve(name).file(f)
            assert (rec.sha256, rec.size, rec.status) == (small.file(f).sha256, small.file(f).size, "shared")


def test_a_shared_file_that_differs_is_refused_unless_accepted(base, tmp_path, tiny_release, monkeypatch):
    data = {**base, "name": "tiny", "folders": ["tiny"],
            "files": [{**f, "sha256": "0" * 64, "status": "shared"} if f["name"] == "encoder.json" else f
                      for f in base["files"]]}
    manifest = tmp_path / "tiny.json"
    manifest.write_text(json.dumps(data))
    (tmp_path / "src" / "tiny").mkdir(parents=True)
    for p in tiny_release.iterdir():
        shutil.copyfile(p, tmp_path / "src" / "tiny" / p.name)
    with pytest.raises(DownloadError, match="GPT2HUB_ACCEPT_DIFFERENT_SHARED=1"):
        pull("tiny", manifest=manifest, sources=[str(tmp_path / "src")], retry=FAST)
    monkeypatch.setenv("GPT2HUB_ACCEPT_DIFFERENT_SHARED", "1")
    r = pull("tiny", manifest=manifest, sources=[str(tmp_path / "src")], retry=FAST)
    assert next(f for f in r.files if f.name == "encoder.json").check == Check.SIZE
    assert any("accepted, unverified" in w for w in r.warnings)


# --- 4. credentials leak ------------------------------------------------------------------------------

def test_credentials_and_query_strings_are_never_printed_or_saved(evil, base):
    evil.publish("foo", base)
    secret_url = evil.url.replace("http://", "http://alice:s3cret@") + "/?sig=TOPSECRET&se=2030"
    r = cli("pull", "foo", "--source", secret_url, "--json")
    assert r.exit_code == 0, r.stderr
    assert all("?sig=TOPSECRET" in p for p in evil.requested() if DATA in p)  # the signature was used...
    saved = [r.stdout, r.stderr, (store.release_dir("foo") / ".gpt2hub-verified.json").read_text(),
             (home() / "manifests" / "foo.json").read_text()]
    for text in saved:  # ...and never shown or written
        assert "s3cret" not in text and "TOPSECRET" not in text and "alice" not in text
    assert json.loads(r.stdout)["sources"] == [evil.url + "/"] or json.loads(r.stdout)["sources"] == [evil.url]


def test_credentials_never_reach_an_error_line():
    r = cli("pull", "124M", "--source", "http://alice:s3cret@127.0.0.1:9/x?sig=TOPSECRET", "--no-public-mirrors",
            "--quiet")
    line = one_line_error(r, "127.0.0.1:9")
    assert "s3cret" not in line and "TOPSECRET" not in line and "alice" not in line
    assert redact("https://u:p@host:8/a/b?x=1#f") == "https://host:8/a/b"


def test_a_users_own_release_is_never_asked_of_openai_or_public_copies(tiny_release, tmp_path, monkeypatch):
    (tmp_path / "origin").mkdir()
    manifest = registry.write_manifest(create_manifest(tiny_release, "mine"), tmp_path / "mine.json")
    with FaultyServer(tmp_path / "origin") as origin:
        monkeypatch.setenv("GPT2HUB_ORIGIN", origin.url)
        for args in (["mine", "--manifest", str(manifest)], ["never-heard-of"]):
            r = cli("pull", *args, "--source", DEAD, "--quiet")
            assert r.exit_code == 1 and "openaipublic" not in r.stderr and "backblaze" not in r.stderr
        assert origin.log == []


# --- 5. resource exhaustion and hangs ------------------------------------------------------------------

def test_list_survives_a_manifest_with_a_hundred_million_layers(base, capsys):
    folder = home() / "manifests"
    folder.mkdir(parents=True)
    (folder / "huge.json").write_text(json.dumps(hostile_manifest({**base, "name": "huge", "folders": ["huge"]},
                                                                  "huge-hparams")))
    t0 = time.monotonic()
    r = cli("list", "--json")
    assert r.exit_code == 0 and time.monotonic() - t0 < 10
    assert [row["name"] for row in json.loads(r.stdout)] == ["124M", "355M", "774M", "1558M"]
    assert "n_layer 100,000,000 is beyond gpt2hub's limit of 1,024" in r.stderr


def test_an_index_whose_keys_expand_to_gigabytes_is_refused_in_bounded_memory(tmp_path, tiny_release):
    bomb = key_bomb_index(10_000, 4000)
    assert len(bomb) < 200_000  # 40 MB of names in under 200 KB
    folder = tmp_path / "bomb"
    shutil.copytree(tiny_release, folder)
    (folder / INDEX).write_bytes(bomb)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="entries or .* bytes of names"):
            read_index(folder / INDEX)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # was 2.4 GB for manifest create
    one_line_error(cli("manifest", "create", str(folder), "--name", "bomb"), "bytes of names")


def test_an_oversized_mirror_manifest_is_never_read(evil, base):
    body = json.dumps(base).encode()
    evil.publish("foo", body + b" " * (MAX_MANIFEST_BYTES + 1 - len(body)))
    one_line_error(cli("pull", "foo", "--source", evil.url, "--quiet"), "larger than a manifest may be")
    assert not [s for s in evil.server.log if s.file == registry.MIRROR_MANIFEST and s.sent > 0]


def test_a_source_that_drips_bytes_fails_the_attempt(evil, base, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2HUB_SPEED_TIME", "1")
    monkeypatch.setenv("GPT2HUB_SPEED_LIMIT", "1024")
    manifest = registry.write_manifest(create_manifest(evil.root / "foo", "foo"), tmp_path / "foo.json")
    evil.server.faults = Faults(only="encoder.json", drip=20)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="slower than 1,024 bytes/s for 1 s") as e:
        pull("foo", manifest=manifest, sources=[evil.url], retry=FAST)
    assert time.monotonic() - t0 < 30 and "\n" not in str(e.value)


def test_a_dying_committer_ends_the_pull_with_one_line(evil, tmp_path, monkeypatch):
    import errno

    import gpt2hub.ranges

    manifest = registry.write_manifest(create_manifest(evil.root / "foo", "foo"), tmp_path / "foo.json")
    dest = store.release_dir("foo")
    dest.mkdir(parents=True)

    def full(*args, **kwargs):  # the record can never be written (its temp file is private: nothing to plant)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gpt2hub.ranges, "write_json", full)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="cannot record finished bytes") as e:
        pull("foo", manifest=manifest, sources=[evil.url], retry=FAST, span=1 << 20)
    assert time.monotonic() - t0 < 30 and "\n" not in str(e.value)
    assert not (dest / DATA).exists()


# --- 6. a leftover range record installs zeros --------------------------------------------------------

@pytest.mark.parametrize("leftover", ["no-part", "short-part", "other-part"])
def test_a_range_record_counts_only_with_its_own_part(leftover, evil, base, tmp_path, tiny_release):
    meta = "model.ckpt.meta"
    data = {**base, "files": [{**f, "sha256": None, "status": "expected"} if f["name"] == meta else f
                              for f in base["files"]]}
    manifest = tmp_path / "foo.json"
    manifest.write_text(json.dumps(data))
    size = (tiny_release / meta).stat().st_size
    dest = store.release_dir("foo")
    dest.mkdir(parents=True)
    part = dest / (meta + ".part")
    if leftover == "short-part":
        part.write_bytes(b"\0" * 10)
    elif leftover == "other-part":
        part.write_bytes(b"\0" * size)  # full size, but not the file the record was made for
    record_path(part).write_text(json.dumps({"size": size, "part": [0, 0], "done": [[0, size]]}))
    pull("foo", manifest=manifest, sources=[evil.url], retry=FAST)
    assert (dest / meta).read_bytes() == (tiny_release / meta).read_bytes()


def test_the_record_goes_before_the_part(evil, base, tmp_path, tiny_release):
    """A kill between the rename and the unlink used to leave a record with no part: now it cannot."""
    manifest = tmp_path / "foo.json"
    manifest.write_text(json.dumps(base))
    r = pull("foo", manifest=manifest, sources=[evil.url], retry=FAST)
    assert not list(r.path.glob("*.ranges.json")) and not list(r.path.glob("*.part"))


# --- 7. tracebacks instead of one line ----------------------------------------------------------------

@pytest.mark.parametrize("body,fact", [
    (deep_json(), "nested too deeply"),
    (b'{"name": "foo", "x": [' + b"[]," * 300_000 + b"[]]}", "JSON lists and objects"),
    (lambda b: hostile_manifest(b, "nul-name"), "NUL"),
    (lambda b: hostile_manifest(b, "non-list-shape"), "'shape' must be a list"),
    (lambda b: hostile_manifest(b, "terminal-escape"), "control character"),
])
def test_a_hostile_manifest_file_is_one_line(body, fact, base, tmp_path, evil):
    raw = body if isinstance(body, bytes) else json.dumps(body(base)).encode()
    path = tmp_path / "hostile.json"
    path.write_bytes(raw)
    one_line_error(cli("info", "foo", "--manifest", str(path)), fact)
    evil.publish("foo", raw)
    one_line_error(cli("pull", "foo", "--source", evil.url, "--quiet"), fact)


def test_an_encoder_json_that_is_a_list_is_one_line(tiny_release, tmp_path):
    from gpt2hub.tokenizer import mergeable_ranks

    folder = shutil.copytree(tiny_release, tmp_path / "t")
    (folder / "encoder.json").write_text('["<|endoftext|>", 1]')
    with pytest.raises(CheckpointError, match="not a JSON object of token -> id"):
        mergeable_ranks(folder)
    (folder / "encoder.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        mergeable_ranks(folder)


def test_one_bad_manifest_is_one_warning_not_a_broken_tool():
    folder = home() / "manifests"
    folder.mkdir(parents=True)
    (folder / "broken.json").write_bytes(deep_json(5000))
    r = cli("list")
    assert r.exit_code == 0 and "124M" in r.stdout
    assert [line for line in r.stderr.splitlines() if "broken.json" in line][0].startswith("gpt2hub: warning:")
    assert cli("info", "124M").exit_code == 0


# --- 8. wrong place -----------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["relative", "symlink"])
def test_a_relative_or_linked_home_puts_conversions_where_every_command_finds_them(how, tiny_release, tmp_path,
                                                                                    monkeypatch):
    real = tmp_path / "real-home"
    real.mkdir()
    monkeypatch.chdir(tmp_path)
    if how == "symlink":
        (tmp_path / "link").symlink_to(real)
        monkeypatch.setenv("GPT2HUB_HOME", "link")
    else:
        monkeypatch.setenv("GPT2HUB_HOME", "real-home")
    assert store.home() == real.resolve()
    registry.save_user_manifest(create_manifest(tiny_release, "tiny"))
    (tmp_path / "src").mkdir()
    shutil.copytree(tiny_release, tmp_path / "src" / "tiny")
    pull("tiny", sources=[str(tmp_path / "src")], retry=FAST)
    r = gpt2hub.convert("tiny", to="safetensors")
    assert Path(r.path).resolve() == real.resolve() / "tiny" / "safetensors"
    assert store.converted_formats("tiny") == ["safetensors"]
    assert not list(real.glob("tiny/original-*"))


@pytest.mark.parametrize("named", ['"../elsewhere/model.ckpt"', '"{elsewhere}/model.ckpt"'])
def test_checkpoint_never_sends_the_reader_outside_its_folder(named, tiny_release, tmp_path):
    folder = shutil.copytree(tiny_release, tmp_path / "here")
    elsewhere = _tampered(tiny_release, tmp_path / "elsewhere")
    (folder / "checkpoint").write_text(f"model_checkpoint_path: {named.format(elsewhere=elsewhere)}\n")
    with Checkpoint(folder) as ckpt:
        assert ckpt.index_path.parent == folder
        assert np.array_equal(ckpt.tensor("model/wte"), Checkpoint(tiny_release).tensor("model/wte"))
    os.remove(folder / INDEX)
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint"):
        Checkpoint(folder)


# --- property-based: the manifest parser and the index reader ------------------------------------------

names = st.one_of(st.text(max_size=300), st.sampled_from(["..", ".", "a/b", "a\\b", "x\0y", "/etc/passwd", "ok",
                                                           "x.part", "x.ranges.json", "manifests", "\ud800"]))
json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=40)
BUDGET = settings(max_examples=150, deadline=10_000, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


def _within_budget(fn) -> None:
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        fn()
    except Gpt2hubError as e:
        assert "\n" not in str(e)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 64 << 20 and time.monotonic() - t0 < 5


@BUDGET
@given(name=names, file_name=names, alias=names, folder=names, n_layer=st.integers(-5, 2 ** 40),
       size=st.integers(-(2 ** 70), 2 ** 70) | st.none(), shape=json_values, extra=json_values,
       depth=st.integers(0, 3000))
def test_the_manifest_parser_accepts_within_bounds_or_raises_one_line(base, name, file_name, alias, folder, n_layer,
                                                                      size, shape, extra, depth):
    data = json.loads(json.dumps(base))
    data.update(name=name, aliases=[alias], folders=[folder], description=extra if depth % 2 else "")
    data["hparams"]["n_layer"] = n_layer
    data["files"][0].update(name=file_name, size=size)
    data["tensors"][0]["shape"] = shape
    raw = json.dumps(data).encode("utf-8", "surrogatepass")
    raw = raw[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}"

    def parse() -> None:
        m = ReleaseManifest.from_bytes(raw, "prop.json")
        for n in (m.name, *m.aliases, *m.folders, *(f.name for f in m.files)):
            registry.check_name(n, "accepted")
        assert m.hparams.n_layer <= 1024 and all(f.size is None or 0 <= f.size for f in m.files)

    _within_budget(parse)


def _table(block: bytes) -> bytes:
    out = bytearray()

    def write(raw: bytes) -> bytes:
        handle = _put_varint(len(out)) + _put_varint(len(raw))
        out.extend(raw + bytes([NO_COMPRESSION]) + struct.pack("<I", mask_crc(crc32c(b"\0", crc32c(raw)))))
        return handle

    data_handle = write(block)
    index = _BlockBuilder(1)
    index.add(b"\xff" * 8, data_handle)
    meta = write(_BlockBuilder(16).finish())
    index_handle = write(index.finish())
    return bytes(out + (meta + index_handle).ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC))


@BUDGET
@given(entries=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 1 << 14), st.integers(0, 64),
                                  st.binary(max_size=64)), max_size=60))
def test_the_index_reader_accepts_within_bounds_or_raises_one_line(entries, tmp_path):
    """Raw block entries with arbitrary shared/unshared/value lengths behind valid CRCs."""
    block = bytearray(_put_varint(0) + _put_varint(0) + _put_varint(len(encode_header(1))) + encode_header(1))
    for shared, non_shared, value_len, payload in entries:
        block += _put_varint(shared) + _put_varint(non_shared) + _put_varint(value_len) + payload
    block += struct.pack("<I", 0) + struct.pack("<I", 1)
    path = tmp_path / "prop.index"
    path.write_bytes(_table(bytes(block)))
    _within_budget(lambda: read_index(path))


def test_every_hostile_manifest_is_exercised():
    exercised = {"escape-dotdot", "escape-absolute", "adopt-outside", "folder-escape", "own-suffix", "nul-name",
                 "shadow-shipped", "alias-shadow", "non-list-shape", "huge-hparams", "terminal-escape"}
    assert exercised == set(HOSTILE)


def test_a_record_from_before_check_kinds_reads_as_what_it_was(tmp_path):
    (tmp_path / ".gpt2hub-verified.json").write_text(json.dumps({"name": "124M", "files": {
        "a": {"size": 1, "sha256": "x", "sha256_status": "published", "verified_by": "sha256"},
        "b": {"size": 2, "sha256": "y", "sha256_status": "seen", "verified_by": "crc32c"},
        "c": {"size": 3}}}))
    record = read_record(tmp_path)
    assert [record.files[n].check for n in "abc"] == [Check.PUBLISHED_SHA256, Check.MIRROR_CRC32C, Check.SIZE]
    (tmp_path / ".gpt2hub-verified.json").write_text('{"files": {"a": {"size": "big"}}}')
    assert read_record(tmp_path) is None
