"""Trust, round 2 (issue 19): pull over the network and S3 addressing.

Each test plays the attacker (or the user with a store that works for `mirror`) against real parts: a
hostile HTTP mirror on loopback (tests.hostile_mirror), a SeaweedFS S3 server, the real CLI.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from gpt2hub import registry, s3, store
from gpt2hub.errors import S3AddressError, SettingError
from gpt2hub.integrity import read_record
from gpt2hub.pull_plan import FREE_SPACE_MARGIN, MAX_META_BYTES
from gpt2hub.pulling import pull
from gpt2hub.registry import create_manifest
from gpt2hub.sources import PUBLIC_MIRRORS, default_sources
from tests.checks import invoke as cli, isolate, one_line_error
from tests.hostile_mirror import HostileMirror
from tests.httpserver import Faults

DATA = "model.ckpt.data-00000-of-00001"
INDEX = "model.ckpt.index"
META = "model.ckpt.meta"
TIB = 1 << 40
DEAD_PROXY = "http://127.0.0.1:9"
DEAD = "http://127.0.0.1:9/nothing"


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """A fresh home, no internet (https to a dead proxy), none of gpt2hub's switches set, no AWS config."""
    isolate(monkeypatch, tmp_path / "home")
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="module")
def base(tiny_release) -> dict:
    """A valid manifest of the tiny release, named foo, as a mirror would publish it."""
    return create_manifest(tiny_release, "foo").to_dict()


def unsized(manifest: dict, *names: str) -> dict:
    """A copy of `manifest` with no size or hash for the files `names` (as 774M's model.ckpt.meta)."""
    manifest = copy.deepcopy(manifest)
    for f in manifest["files"]:
        if f["name"] in names:
            f.update(size=None, sha256=None, status="expected")
    return manifest



def parts(folder: Path) -> list[tuple[str, int]]:
    return [(p.name, p.stat().st_size) for p in folder.rglob("*.part")] if folder.exists() else []


# --- 1. unknown sizes are bounded before bytes are fetched ------------------------------------------

def test_a_terabyte_announced_for_774m_meta_is_refused_before_a_byte(tmp_path, monkeypatch):
    """774M publishes no size for model.ckpt.meta: a mirror announcing 1 TiB gets no sparse 1 TiB .part."""
    monkeypatch.setenv("GPT2HUB_ORIGIN", DEAD)
    monkeypatch.setenv("GPT2HUB_NO_PUBLIC_MIRRORS", "1")
    assert registry.resolve("774M").file(META).size is None
    with HostileMirror(tmp_path / "mirror") as evil:
        (evil.root / "774M").mkdir()
        (evil.root / "774M" / META).write_bytes(b"\0" * 4096)
        evil.server.faults = Faults(only=META, announce_size=TIB)
        plan = cli("pull", "774M", "--only", META, "--source", evil.url, "--dry-run")
        result = cli("pull", "774M", "--only", META, "--source", evil.url)
        gets = [s for s in evil.server.log if s.file == META and s.status == 206]
    assert f"announces {TIB:,} bytes" in plan.output + plan.stderr and f"{TIB:,}" not in plan.stdout.split("announces")[0]
    one_line_error(result, META, f"announces {TIB:,} bytes", f"at most {MAX_META_BYTES:,}")
    assert gets == [] and parts(store.home()) == []


def test_a_data_file_announced_past_4_bytes_per_parameter_is_refused(tmp_path, base, tiny_release):
    with HostileMirror(tmp_path / "mirror") as evil:
        evil.publish("foo", unsized(base, DATA))
        evil.release("foo", tiny_release)
        params = registry.ReleaseManifest.from_dict(base, "base").hparams.parameters
        assert (tiny_release / DATA).stat().st_size == 4 * params
        evil.server.faults = Faults(only=DATA, announce_size=4 * params + 1)
        result = cli("pull", "foo", "--source", evil.url)
        gets = [s for s in evil.server.log if s.file == DATA and s.status == 206]
    one_line_error(result, DATA, f"announces {4 * params + 1:,} bytes", f"at most {4 * params:,}",
                   f"4 bytes x {params:,} parameters")
    assert gets == [] and not any(name.startswith(DATA) for name, _ in parts(store.home()))


def test_the_free_space_check_uses_the_announced_size(tmp_path, base, tiny_release, monkeypatch):
    """Within the cap but beyond the free space: refused as a full disk, before the sparse file is made."""
    announced = MAX_META_BYTES // 2
    real_usage = shutil.disk_usage
    Usage = namedtuple("Usage", "total used free")
    # Room for every real file and the margin, not for the meta the mirror announces.
    free = sum(p.stat().st_size for p in tiny_release.iterdir()) + FREE_SPACE_MARGIN + (1 << 20)
    monkeypatch.setattr("shutil.disk_usage", lambda p: Usage(real_usage(p).total, 0, free))
    with HostileMirror(tmp_path / "mirror") as evil:
        evil.publish("foo", unsized(base, META))
        evil.release("foo", tiny_release)
        evil.server.faults = Faults(only=META, announce_size=announced)
        result = cli("pull", "foo", "--source", evil.url)
    one_line_error(result, "not enough free space", META, f"announces {announced:,} bytes")
    assert not any(name.startswith(META) for name, _ in parts(store.home()))


def test_an_honest_mirror_still_serves_a_file_without_a_published_size(tmp_path, base, tiny_release):
    with HostileMirror(tmp_path / "mirror") as evil:
        evil.publish("foo", unsized(base, META, DATA))
        evil.release("foo", tiny_release)
        result = cli("pull", "foo", "--source", evil.url)
    assert result.exit_code == 0, result.stderr
    assert (store.release_dir("foo") / META).read_bytes() == (tiny_release / META).read_bytes()


# --- 2. whole-request deadlines -----------------------------------------------------------------

def test_a_dripping_header_fails_pull_within_the_speed_window(tmp_path, base, tiny_release):
    """One header byte a second used to hold pull on its first request for hours."""
    with HostileMirror(tmp_path / "mirror") as evil:
        evil.publish("foo", base)
        evil.release("foo", tiny_release)
        evil.server.faults = Faults(only=DATA, drip_headers=1)
        t0 = time.monotonic()
        try:
            run = subprocess.run([sys.executable, "-m", "gpt2hub.cli", "pull", "foo", "--source", evil.url],
                                 capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "GPT2HUB_SPEED_TIME": "2"})
        except subprocess.TimeoutExpired:
            pytest.fail("pull was still waiting for a dripping header after 60 s")
        took = time.monotonic() - t0
    errors = [line for line in run.stderr.splitlines() if line.startswith("gpt2hub: error: ")]
    assert run.returncode == 1 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert DATA in errors[0] and "no complete reply headers within 2 s" in errors[0], errors[0]
    assert took < 30, took


# --- 3. S3 addressing, the same for pull and mirror ------------------------------------------------

BAD_BUCKETS = ["bad bucket", "Bad", "ab", "a" * 64, "a..b", "-abc", "abc-", "192.168.5.4", "under_score",
               "xn--abc", "abc-s3alias"]


@pytest.mark.parametrize("bucket", BAD_BUCKETS)
def test_pull_refuses_a_bad_bucket_name_in_one_line(bucket):
    result = cli("pull", "124M", "--source", f"s3://{bucket}/x")
    one_line_error(result, f"bucket name {bucket!r}")


@pytest.mark.parametrize("bucket", ["bad bucket", "192.168.5.4"])
def test_mirror_refuses_a_bad_bucket_name_in_one_line(bucket, tiny_release):
    """Before: botocore's ParamValidationError (a traceback) once the release was there to send."""
    name = "foo"
    m = create_manifest(tiny_release, name)
    (store.home() / "manifests").mkdir(parents=True, exist_ok=True)
    registry.write_manifest(m, store.home() / "manifests" / f"{name}.json")
    pull(name, sources=[str(tiny_release)])
    result = cli("mirror", name, f"s3://{bucket}/x", "--endpoint-url", DEAD)
    one_line_error(result, f"bucket name {bucket!r}")


def test_s3_addresses_parse_alike_for_both_commands():
    assert s3.parse("s3://my.bucket-1/a/b/") == s3.Location("my.bucket-1", "a/b")
    assert str(s3.parse("s3://abc")) == "s3://abc"
    with pytest.raises(S3AddressError):
        s3.parse("s3:///x")


def test_pull_reads_an_s3_store_addressed_by_aws_endpoint_url_alone(s3_server, tiny_release, monkeypatch, tmp_path):
    """A user whose ~/.aws/config asks virtual-host addressing (for AWS itself) and whose $AWS_ENDPOINT_URL names
    a local store: mirror addressed the store path style, pull by virtual host (bucket.localhost) and failed."""
    config = tmp_path / "aws-config"
    config.write_text("[default]\ns3 =\n    addressing_style = virtual\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    bucket = f"pull-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    s3_server.client().create_bucket(Bucket=bucket)
    for p in tiny_release.iterdir():
        s3_server.client().upload_file(str(p), bucket, f"models/foo/{p.name}")
    m = create_manifest(tiny_release, "foo")
    (store.home() / "manifests").mkdir(parents=True, exist_ok=True)
    registry.write_manifest(m, store.home() / "manifests" / "foo.json")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url.replace("127.0.0.1", "localhost"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-never-printed")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    pulled = cli("pull", "foo", "--source", f"s3://{bucket}/models")
    assert pulled.exit_code == 0, pulled.stderr
    assert store.original_state("foo") == "verified"
    mirrored = cli("mirror", "foo", f"s3://{bucket}/again")  # the same environment works for mirror too
    assert mirrored.exit_code == 0, mirrored.stderr


# --- 4. an index size the manifest does not give ----------------------------------------------------

def test_an_oversized_origin_index_with_no_manifest_size_is_a_transfer_failure(tmp_path, base, tiny_release,
                                                                                monkeypatch):
    """`{index.size:,}` with index.size None was a TypeError when the origin announced an index over the cap."""
    manifest = unsized(base, INDEX)
    for f in manifest["files"]:
        if f["name"] == DATA:
            f.update(sha256=None, status="expected")  # so the origin's index vouches for the data file
    (store.home() / "manifests").mkdir(parents=True, exist_ok=True)
    registry.write_manifest(registry.ReleaseManifest.from_dict(manifest, "foo"), store.home() / "manifests" / "foo.json")
    monkeypatch.setattr(registry, "is_shipped", lambda m: True)  # as if OpenAI had published it
    monkeypatch.setenv("GPT2HUB_NO_PUBLIC_MIRRORS", "1")
    monkeypatch.setenv("GPT2HUB_ORIGIN", DEAD)
    pull("foo", sources=[str(tiny_release)])  # the origin is down: the index is the folder's, not verified
    assert not read_record(store.release_dir("foo")).files[INDEX].verified
    with HostileMirror(tmp_path / "origin") as origin:
        origin.release("foo", tiny_release)
        origin.server.faults = Faults(only=INDEX, announce_size=100 << 20)
        monkeypatch.setenv("GPT2HUB_ORIGIN", origin.url)
        again = pull("foo", sources=[str(tiny_release)])
    # The origin's oversized answer is refused as a failed transfer: the release stays as it was recorded.
    assert again.already and not next(f for f in again.files if f.name == INDEX).verified


# --- 5. GPT2HUB_* switches ------------------------------------------------------------------------

@pytest.fixture
def wrong_checkpoint(tmp_path, monkeypatch):
    """A mirror whose 355M `checkpoint` (a file 124M published, "shared") is other bytes of the right size."""
    monkeypatch.setenv("GPT2HUB_ORIGIN", DEAD)
    monkeypatch.setenv("GPT2HUB_NO_PUBLIC_MIRRORS", "1")
    size = registry.resolve("355M").file("checkpoint").size
    with HostileMirror(tmp_path / "mirror") as evil:
        (evil.root / "355M").mkdir()
        (evil.root / "355M" / "checkpoint").write_bytes(b"x" * size)
        yield evil


def test_accept_different_shared_off_means_off(wrong_checkpoint, monkeypatch):
    monkeypatch.setenv("GPT2HUB_ACCEPT_DIFFERENT_SHARED", "off")
    result = cli("pull", "355M", "--only", "checkpoint", "--source", wrong_checkpoint.url)
    one_line_error(result, "checkpoint", "124M's published")
    assert not (store.release_dir("355M") / "checkpoint").exists()


def test_a_switch_word_gpt2hub_does_not_know_is_refused(wrong_checkpoint, monkeypatch):
    monkeypatch.setenv("GPT2HUB_ACCEPT_DIFFERENT_SHARED", "maybe")
    result = cli("pull", "355M", "--only", "checkpoint", "--source", wrong_checkpoint.url)
    one_line_error(result, "$GPT2HUB_ACCEPT_DIFFERENT_SHARED='maybe'", "not a switch")
    assert not (store.release_dir("355M") / "checkpoint").exists()


def test_no_public_mirrors_takes_the_same_words_in_the_library_and_the_cli(wrong_checkpoint, monkeypatch):
    monkeypatch.setenv("GPT2HUB_NO_PUBLIC_MIRRORS", "maybe")
    with pytest.raises(SettingError, match=r"\$GPT2HUB_NO_PUBLIC_MIRRORS='maybe': not a switch"):
        pull("355M", only=["checkpoint"], sources=[wrong_checkpoint.url])
    result = cli("pull", "355M", "--only", "checkpoint", "--source", wrong_checkpoint.url)
    one_line_error(result, "$GPT2HUB_NO_PUBLIC_MIRRORS='maybe'", "not a switch")  # not click's own word list
    monkeypatch.setenv("GPT2HUB_NO_PUBLIC_MIRRORS", "off")
    assert PUBLIC_MIRRORS[0] in default_sources(public_mirrors=True)
