"""gpt2hub mirror: to a real SeaweedFS S3 server on loopback, and to a stand-in of the Hub's HTTP API."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import gpt2hub
from gpt2hub import registry, store
from gpt2hub.cli import main
from gpt2hub.errors import DownloadError, MirrorError, UnknownRelease
from gpt2hub.registry import MIRROR_MANIFEST
from gpt2hub.upload_s3 import SHA256_METADATA
from tests.s3server import SeaweedS3, find_weed

NAME = "tiny"
DATA = "model.ckpt.data-00000-of-00001"
MiB = 1 << 20


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch, aws) -> Path:
    """An empty GPT2HUB_HOME, and AWS credentials that SeaweedFS (anonymous) accepts (conftest's aws)."""
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _register(folder: Path) -> registry.ReleaseManifest:
    """A user manifest for the generated release, as `gpt2hub manifest create` writes it."""
    m = gpt2hub.create_manifest(folder, NAME)
    (store.home() / "manifests").mkdir(parents=True, exist_ok=True)
    registry.write_manifest(m, store.home() / "manifests" / f"{NAME}.json")
    return m


@pytest.fixture
def pulled(home, tiny_release) -> registry.ReleaseManifest:
    """The tiny release pulled into GPT2HUB_HOME (from a local-folder source) and verified."""
    from gpt2hub.pulling import pull

    m = _register(tiny_release)
    pull(NAME, sources=[str(tiny_release)])
    assert store.original_state(NAME) == "verified"
    return m


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"mirror-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


class RequestCounter:
    """Counts the S3 operations every boto3 client of the default session sends."""

    def __init__(self):
        self.ops: list[str] = []

    def __call__(self, model, **kwargs):
        self.ops.append(model.name)

    def sent_data(self) -> list[str]:
        return [op for op in self.ops if op in ("PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload")]


@pytest.fixture
def s3_requests(monkeypatch) -> RequestCounter:
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    boto3.setup_default_session()
    counter = RequestCounter()
    boto3.DEFAULT_SESSION.events.register("before-call.s3", counter)
    return counter


def _mirror_s3(s3_server, bucket: str, prefix: str = "gpt-2/models", **kw):
    return gpt2hub.mirror(NAME, f"s3://{bucket}/{prefix}", endpoint_url=s3_server.endpoint_url, **kw)


def _keys(s3_server, bucket: str) -> set[str]:
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- S3: what is sent, where ------------------------------------------------------------------

def test_s3_mirror_writes_openai_layout_with_manifest(s3_server, bucket, pulled):
    report = _mirror_s3(s3_server, bucket)
    expected = {f"gpt-2/models/{NAME}/{f.name}" for f in pulled.files} | {f"gpt-2/models/{NAME}/{MIRROR_MANIFEST}"}
    assert _keys(s3_server, bucket) == expected
    c = s3_server.client()
    for f in pulled.files:
        body = c.get_object(Bucket=bucket, Key=f"gpt-2/models/{NAME}/{f.name}")["Body"].read()
        assert body == (store.release_dir(NAME) / f.name).read_bytes()
    uploaded = json.loads(c.get_object(Bucket=bucket, Key=f"gpt-2/models/{NAME}/{MIRROR_MANIFEST}")["Body"].read())
    assert uploaded == pulled.to_dict()
    assert report.bytes_sent == sum(f.size for f in report.files)


def test_s3_objects_carry_whole_file_sha256_in_metadata(s3_server, bucket, pulled):
    _mirror_s3(s3_server, bucket)
    c = s3_server.client()
    for f in pulled.files:
        head = c.head_object(Bucket=bucket, Key=f"gpt-2/models/{NAME}/{f.name}")
        assert head["Metadata"][SHA256_METADATA] == registry.sha256_file(store.release_dir(NAME) / f.name)


def test_s3_multipart_parts_carry_sha256_checksums_the_store_kept(s3_server, bucket, pulled):
    part = 5 * MiB  # S3's minimum part size; the tiny data file (~13 MB) becomes 3 parts
    _mirror_s3(s3_server, bucket, part_size=part)
    data = (store.release_dir(NAME) / DATA).read_bytes()
    parts = [data[i:i + part] for i in range(0, len(data), part)]
    assert len(parts) >= 2
    head = s3_server.client().head_object(Bucket=bucket, Key=f"gpt-2/models/{NAME}/{DATA}", ChecksumMode="ENABLED")
    composite = base64.b64encode(hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()).decode()
    assert head["ChecksumSHA256"] == f"{composite}-{len(parts)}"
    assert head["ETag"].strip('"').endswith(f"-{len(parts)}")


def test_s3_converted_formats_go_under_their_folder(s3_server, bucket, pulled):
    st = gpt2hub.convert(NAME, "safetensors").path
    gg = gpt2hub.convert(NAME, "gguf").path
    report = _mirror_s3(s3_server, bucket, formats=["gguf", "safetensors"])
    assert report.formats == ["safetensors", "gguf"]
    keys = _keys(s3_server, bucket)
    expected = {f"gpt-2/models/{NAME}/safetensors/{p.name}" for p in st.iterdir()} | {f"gpt-2/models/{NAME}/gguf/{gg.name}"}
    assert expected <= keys
    assert f"gpt-2/models/{NAME}/{DATA}" not in keys  # original not asked for
    body = s3_server.client().get_object(Bucket=bucket, Key=f"gpt-2/models/{NAME}/gguf/{gg.name}")["Body"].read()
    assert body == gg.read_bytes()


def test_s3_default_formats_are_the_original_and_every_conversion(s3_server, bucket, pulled):
    gpt2hub.convert(NAME, "pytorch")
    report = _mirror_s3(s3_server, bucket, dry_run=True)
    assert report.formats == ["original", "pytorch"]


# --- S3: skipping, resuming -------------------------------------------------------------------

def test_s3_second_mirror_sends_no_bytes(s3_server, bucket, pulled, s3_requests):
    first = _mirror_s3(s3_server, bucket)
    assert first.bytes_sent > 0 and s3_requests.sent_data()
    before = {k: s3_server.client().head_object(Bucket=bucket, Key=k)["ETag"] for k in _keys(s3_server, bucket)}
    s3_requests.ops.clear()
    second = _mirror_s3(s3_server, bucket)
    assert second.bytes_sent == 0
    assert {f.action for f in second.files} == {"skipped"}
    assert s3_requests.sent_data() == []
    assert s3_requests.ops and set(s3_requests.ops) <= {"HeadBucket", "HeadObject"}
    after = {k: s3_server.client().head_object(Bucket=bucket, Key=k)["ETag"] for k in _keys(s3_server, bucket)}
    assert after == before


def test_s3_object_with_other_bytes_of_same_size_is_sent_again(s3_server, bucket, pulled):
    _mirror_s3(s3_server, bucket)
    key = f"gpt-2/models/{NAME}/encoder.json"
    local = (store.release_dir(NAME) / "encoder.json").read_bytes()
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"x" * len(local))
    report = _mirror_s3(s3_server, bucket)
    assert [f.dest for f in report.files if f.action == "sent"] == [key]
    assert s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read() == local


def test_s3_interrupted_multipart_upload_is_aborted_and_redone(s3_server, bucket, pulled):
    c = s3_server.client()
    key = f"gpt-2/models/{NAME}/{DATA}"
    stale = c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    c.upload_part(Bucket=bucket, Key=key, UploadId=stale, PartNumber=1, Body=b"\0" * (5 * MiB))
    report = _mirror_s3(s3_server, bucket, part_size=5 * MiB)
    assert report.aborted_uploads == [key]
    assert c.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert c.get_object(Bucket=bucket, Key=key)["Body"].read() == (store.release_dir(NAME) / DATA).read_bytes()


class Interrupt(BaseException):
    """Stands for Ctrl-C or a dropped connection in the middle of an upload."""


def test_s3_interrupted_upload_resumes_from_the_parts_the_store_holds(s3_server, bucket, pulled, s3_requests):
    import boto3

    part = 5 * MiB
    size = (store.release_dir(NAME) / DATA).stat().st_size

    def fail_after_part_one(params, **kwargs):
        if params["PartNumber"] > 1:
            raise Interrupt()

    boto3.DEFAULT_SESSION.events.register("provide-client-params.s3.UploadPart", fail_after_part_one)
    with pytest.raises(Interrupt):
        _mirror_s3(s3_server, bucket, part_size=part)
    boto3.DEFAULT_SESSION.events.unregister("provide-client-params.s3.UploadPart", fail_after_part_one)
    s3_requests.ops.clear()
    report = _mirror_s3(s3_server, bucket, part_size=part)
    data = next(f for f in report.files if f.dest.endswith(DATA))
    assert data.action == "sent" and data.resumed_bytes == part
    assert s3_requests.ops.count("UploadPart") == -(-size // part) - 1
    assert "CreateMultipartUpload" not in s3_requests.ops and report.aborted_uploads == []
    c = s3_server.client()
    assert c.get_object(Bucket=bucket, Key=data.dest)["Body"].read() == (store.release_dir(NAME) / DATA).read_bytes()
    assert c.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_s3_dry_run_sends_nothing(s3_server, bucket, pulled, s3_requests):
    report = _mirror_s3(s3_server, bucket, dry_run=True)
    assert {f.action for f in report.files} == {"send"}
    assert report.bytes_to_send == sum(f.size for f in report.files)
    assert s3_requests.sent_data() == []
    assert _keys(s3_server, bucket) == set()


def test_s3_dry_run_lists_what_would_be_skipped(s3_server, bucket, pulled, s3_requests):
    _mirror_s3(s3_server, bucket)
    key = f"gpt-2/models/{NAME}/checkpoint"
    s3_server.client().delete_object(Bucket=bucket, Key=key)
    s3_requests.ops.clear()
    report = _mirror_s3(s3_server, bucket, dry_run=True)
    assert [f.dest for f in report.files if f.action == "send"] == [key]
    assert {f.action for f in report.files if f.dest != key} == {"skip"}
    assert s3_requests.sent_data() == []


# --- S3: pulled back --------------------------------------------------------------------------

def _fresh_home(monkeypatch, tmp_path, manifest: registry.ReleaseManifest) -> None:
    """Another machine: an empty home that knows the release from its manifest only."""
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "other-home"))
    (store.home() / "manifests").mkdir(parents=True)
    registry.write_manifest(manifest, store.home() / "manifests" / f"{NAME}.json")


def test_pull_from_the_s3_mirror_gives_identical_bytes(s3_server, bucket, pulled, tmp_path, monkeypatch):
    from gpt2hub.pulling import pull

    _mirror_s3(s3_server, bucket)
    originals = {f.name: (store.release_dir(NAME) / f.name).read_bytes() for f in pulled.files}
    _fresh_home(monkeypatch, tmp_path, pulled)
    pull(NAME, sources=[f"s3://{bucket}/gpt-2/models"], endpoint_url=s3_server.endpoint_url)
    assert {name: (store.release_dir(NAME) / name).read_bytes() for name in originals} == originals


def test_pull_of_a_release_unknown_here_uses_the_manifest_the_mirror_published(s3_server, bucket, pulled, tmp_path,
                                                                               monkeypatch):
    from gpt2hub.pulling import pull

    _mirror_s3(s3_server, bucket)
    originals = {f.name: (store.release_dir(NAME) / f.name).read_bytes() for f in pulled.files}
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "bare-home"))
    with pytest.raises(UnknownRelease):
        registry.resolve(NAME)
    pull(NAME, sources=[f"s3://{bucket}/gpt-2/models"], endpoint_url=s3_server.endpoint_url)
    assert {name: (store.release_dir(NAME) / name).read_bytes() for name in originals} == originals
    # saved under <home>/manifests for later commands, as the mirror's word only (issue 10)
    assert registry.resolve(NAME).to_dict() == pulled.from_mirror().to_dict()


def test_pull_of_an_unknown_name_without_a_mirror_manifest_lists_the_known_names(s3_server, bucket, tmp_path,
                                                                                  monkeypatch):
    from gpt2hub.pulling import pull

    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "bare-home"))
    with pytest.raises(UnknownRelease, match="known: 124M"):
        pull("no-such-release", sources=[f"s3://{bucket}/gpt-2/models"], endpoint_url=s3_server.endpoint_url)
    assert not (store.home() / "manifests").exists()


def test_corrupted_object_in_the_mirror_is_caught_by_pull(s3_server, bucket, pulled, tmp_path, monkeypatch):
    from gpt2hub.pulling import pull

    _mirror_s3(s3_server, bucket)
    key = f"gpt-2/models/{NAME}/{DATA}"
    c = s3_server.client()
    data = bytearray(c.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped, metadata kept: only the content is wrong
    c.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=c.head_object(Bucket=bucket, Key=key)["Metadata"])
    _fresh_home(monkeypatch, tmp_path, pulled)
    with pytest.raises(DownloadError):
        pull(NAME, sources=[f"s3://{bucket}/gpt-2/models"], endpoint_url=s3_server.endpoint_url)
    assert not (store.release_dir(NAME) / DATA).exists()


# --- S3: failures -----------------------------------------------------------------------------

def test_s3_missing_bucket_is_one_line_error(s3_server, pulled):
    with pytest.raises(MirrorError, match=r"^s3://no-such-bucket-here: no such bucket$"):
        _mirror_s3(s3_server, "no-such-bucket-here")


def test_s3_unreachable_endpoint_is_one_line_error(pulled):
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(MirrorError, match="cannot connect to " + url) as e:
        gpt2hub.mirror(NAME, "s3://bucket/prefix", endpoint_url=url)
    assert "\n" not in str(e.value)


def test_s3_release_not_pulled_is_an_error(home, tiny_release, s3_server, bucket):
    _register(tiny_release)
    with pytest.raises(MirrorError, match=r"tiny is not pulled .* run `gpt2hub pull tiny` first"):
        _mirror_s3(s3_server, bucket)


def test_format_not_converted_is_an_error(pulled):
    with pytest.raises(MirrorError, match=r"tiny has no gguf conversion .* run `gpt2hub convert tiny --to gguf` first"):
        gpt2hub.mirror(NAME, "s3://bucket/p", formats=["original", "gguf"], dry_run=True)


def test_local_file_changed_since_pull_is_refused(s3_server, bucket, pulled):
    path = store.release_dir(NAME) / "hparams.json"
    path.write_bytes(path.read_bytes().replace(b"{", b" "))  # same size, other bytes
    with pytest.raises(MirrorError, match=r"hparams.json: sha256 .* differs from the verified"):
        _mirror_s3(s3_server, bucket)


def test_second_mirror_trusts_the_sha256s_of_unchanged_files(s3_server, bucket, pulled, monkeypatch):
    from gpt2hub import hashes

    gpt2hub.convert(NAME, "safetensors")
    _mirror_s3(s3_server, bucket)  # pull remembered the originals' sha256; this hashes the conversion
    monkeypatch.setattr(hashes, "sha256", lambda *a: pytest.fail("an unchanged file was hashed again"))
    assert {f.action for f in _mirror_s3(s3_server, bucket).files} == {"skipped"}


def test_a_file_changed_with_its_mtime_put_back_is_hashed_again(s3_server, bucket, pulled):
    _mirror_s3(s3_server, bucket)
    path = store.release_dir(NAME) / "hparams.json"
    st = path.stat()
    path.write_bytes(path.read_bytes().replace(b"{", b" "))  # same size, other bytes...
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and the old mtime: only ctime tells
    with pytest.raises(MirrorError, match=r"hparams.json: sha256 .* differs from the verified"):
        _mirror_s3(s3_server, bucket)


class SeaweedWithIdentities(SeaweedS3):
    """SeaweedFS that knows one identity (test/test, full rights), so any other key is refused."""

    def command(self) -> list[str]:
        config = self.workdir / "s3-identities.json"
        config.write_text(json.dumps({"identities": [{
            "name": "test", "credentials": [{"accessKey": "test", "secretKey": "test"}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        return [*super().command(), f"-s3.config={config}"]


@pytest.mark.heavy
def test_s3_denied_access_is_one_line_error(pulled, tmp_path, monkeypatch):
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not installed")
    with SeaweedWithIdentities(tmp_path / "auth-s3").start() as server:
        server.client().create_bucket(Bucket="guarded")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "intruder")
        with pytest.raises(MirrorError, match=r"^s3://guarded/p: access denied by the store \(\w+\); check the credentials") as e:
            gpt2hub.mirror(NAME, "s3://guarded/p", endpoint_url=server.endpoint_url)
        assert "test-secret-never-printed" not in str(e.value)
        assert _keys(server, "guarded") == set()


def test_unknown_format_is_an_error(pulled):
    with pytest.raises(MirrorError, match=r"^unknown format safetensor; formats: original, safetensors, pytorch, gguf, llmc, onnx, tf$"):
        gpt2hub.mirror(NAME, "s3://bucket/p", formats=["safetensor"], dry_run=True)


def test_hub_only_options_on_s3_are_an_error(pulled):
    with pytest.raises(MirrorError, match="apply to hf:// destinations only"):
        gpt2hub.mirror(NAME, "s3://bucket/p", revision="v1", dry_run=True)


@pytest.mark.parametrize("dest", ["s3://", "hf://just-a-name", "gs://bucket/x", "/a/folder"])
def test_bad_destination_is_an_error(pulled, dest):
    with pytest.raises(MirrorError, match="not a mirror destination"):
        gpt2hub.mirror(NAME, dest, dry_run=True)


def test_cli_mirror_prints_json_report(s3_server, bucket, pulled):
    r = CliRunner().invoke(main, ["mirror", NAME, f"s3://{bucket}/m", "--endpoint-url", s3_server.endpoint_url, "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["destination"] == f"s3://{bucket}/m" and report["bytes_sent"] == report["bytes_to_send"] > 0
    assert "test-secret-never-printed" not in r.output


def test_cli_missing_bucket_exits_1_with_one_line(s3_server, pulled):
    r = CliRunner().invoke(main, ["mirror", NAME, "s3://no-such-bucket-cli/x", "--endpoint-url", s3_server.endpoint_url])
    assert r.exit_code == 1
    assert r.output == "gpt2hub: error: s3://no-such-bucket-cli: no such bucket\n"


# --- Hugging Face Hub (stand-in server) -------------------------------------------------------



@pytest.fixture
def converted(pulled) -> dict[str, Path]:
    """The pulled release converted to safetensors (a folder) and GGUF (a file) by gpt2hub.convert."""
    return {"safetensors": gpt2hub.convert(NAME, "safetensors").path,
            "gguf": gpt2hub.convert(NAME, "gguf").path}


def test_hub_mirror_makes_one_commit_with_weights_card_and_original(hub, converted, pulled):
    """Tests the HTTP calls huggingface_hub makes against a stand-in server (tests/hubserver.py), not the real Hub."""
    report = gpt2hub.mirror(NAME, "hf://org/gpt2-tiny", formats=["original", "safetensors", "gguf"])
    state = hub.state
    assert list(state.repos) == ["org/gpt2-tiny"]
    assert len(state.commits) == 1 and state.commits[0].oid == report.commit
    files = state.commits[0].files
    weights = {p.name: p for p in converted["safetensors"].iterdir()} | {converted["gguf"].name: converted["gguf"]}
    originals = {f"original/{f.name}": store.release_dir(NAME) / f.name for f in pulled.files}
    assert set(files) == {"README.md", f"original/{MIRROR_MANIFEST}", *weights, *originals}
    assert files["model.safetensors"]["kind"] == "lfs" and files[f"original/{DATA}"]["kind"] == "lfs"
    for path, local in (weights | originals).items():
        assert state.file("org/gpt2-tiny", path) == local.read_bytes(), path


def test_hub_readme_front_matter_names_release_and_hashes(hub, converted, pulled):
    """Tests the README huggingface_hub commits to a stand-in server (tests/hubserver.py), not the real Hub."""
    gpt2hub.mirror(NAME, "hf://org/gpt2-tiny")
    readme = hub.state.file("org/gpt2-tiny", "README.md").decode()
    front, body = readme.removeprefix("---\n").split("\n---\n", 1)
    meta = yaml.safe_load(front)
    assert meta["license"] == "mit" and meta["library_name"] == "transformers"
    assert {"gpt2", "safetensors"} <= set(meta["tags"])
    assert meta["gpt2hub"]["release"] == NAME and meta["gpt2hub"]["formats"] == ["safetensors"]
    assert meta["gpt2hub"]["original_sha256"] == {f.name: f.sha256 for f in pulled.files}
    assert "WebText" in body and "staged release" in body.lower()
    from huggingface_hub import ModelCard

    card = ModelCard(readme)  # huggingface_hub's own parser of model cards
    assert card.data.license == "mit" and card.data.library_name == "transformers"
    assert set(hub.state.commits[0].files) == {"README.md", *(p.name for p in converted["safetensors"].iterdir())}


def test_hub_private_repo_on_a_new_branch(hub, converted):
    """Tests the HTTP calls huggingface_hub makes against a stand-in server, not the real Hub."""
    gpt2hub.mirror(NAME, "hf://org/private-tiny", private=True, revision="v1")
    repo = hub.state.repos["org/private-tiny"]
    assert repo.private
    assert [c.revision for c in hub.state.commits] == ["v1"]
    assert "model.safetensors" in repo.branches["v1"] and "model.safetensors" not in repo.branches["main"]


def test_hub_second_mirror_uploads_no_lfs_bytes(hub, converted):
    """Tests the HTTP calls huggingface_hub makes against a stand-in server, not the real Hub."""
    gpt2hub.mirror(NAME, "hf://org/gpt2-tiny")
    puts = [r for r in hub.state.requests if r[0] == "PUT"]
    gpt2hub.mirror(NAME, "hf://org/gpt2-tiny")
    assert [r for r in hub.state.requests if r[0] == "PUT"] == puts


def test_hub_missing_token_is_one_line_error(hub, converted, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(MirrorError, match=r"^hf://org/x: no Hugging Face token; set HF_TOKEN or run `hf auth login`$"):
        gpt2hub.mirror(NAME, "hf://org/x")
    assert hub.state.requests == []


def test_hub_rejected_token_is_one_line_error(hub, converted, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(MirrorError, match=r"rejected the token \(401\)"):
        gpt2hub.mirror(NAME, "hf://org/x")


def test_hub_unreachable_endpoint_is_one_line_error(hub, converted):
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(MirrorError, match="cannot connect to the Hub at " + url):
        gpt2hub.mirror(NAME, "hf://org/x", endpoint_url=url)


def test_hub_dry_run_contacts_nothing(hub, converted):
    report = gpt2hub.mirror(NAME, "hf://org/x", formats=["safetensors", "original"], dry_run=True)
    assert {f.dest for f in report.files} >= {"README.md", "model.safetensors", f"original/{DATA}"}
    assert hub.state.requests == []


def test_cli_mirror_to_hub_prints_the_commit(hub, converted):
    """Tests the HTTP calls huggingface_hub makes against a stand-in server, not the real Hub."""
    r = CliRunner().invoke(main, ["mirror", NAME, "hf://org/cli-tiny", "--quiet"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1].startswith(f"hf://org/cli-tiny: committed {hub.state.commits[0].oid} in ")
