"""Trust, round 2 (issue 19 case 5 and mirror's progress bars): mirror uploads only what it proved.

The attacker changes a converted file after `convert` (one bit of a tensor, a tokenizer file, a planted extra
file) and then asks for a mirror to the loopback Hub stand-in (tests.hubserver) or a real SeaweedFS store
(the `s3_server` fixture): the mirror refuses in one line and nothing is uploaded.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

import gpt2hub
from gpt2hub import registry, store
from gpt2hub.errors import MirrorError
from gpt2hub.integrity import Check, FileCheck
from tests.checks import invoke as cli, one_line

NAME = "tiny"
UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch, aws) -> Path:
    """A fresh home, no gpt2hub switches, and conftest's AWS credentials SeaweedFS accepts (no real AWS config)."""
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    for var in ("GPT2HUB_SOURCE", "GPT2HUB_MANIFESTS", "GPT2HUB_ORIGIN", "GPT2HUB_NO_PUBLIC_MIRRORS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


@pytest.fixture
def pulled(tiny_release) -> registry.ReleaseManifest:
    """The tiny release registered (as `manifest create` writes it) and pulled from a local folder."""
    from gpt2hub.pulling import pull

    m = gpt2hub.create_manifest(tiny_release, NAME)
    (store.home() / "manifests").mkdir(parents=True, exist_ok=True)
    registry.write_manifest(m, store.home() / "manifests" / f"{NAME}.json")
    pull(NAME, sources=[str(tiny_release)])
    return m


@pytest.fixture
def safetensors(pulled) -> Path:
    """The pulled release converted to safetensors: its folder."""
    return gpt2hub.convert(NAME, "safetensors").path


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"trust-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def flip_bit(path: Path, offset: int = -5) -> None:
    """One bit of the file's bytes flipped in place (the end of a safetensors file is tensor data)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def keys(s3_server, bucket: str) -> set[str]:
    return {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])}


def one_error_line(result, *needles: str) -> str:
    lines = [line for line in result.stderr.splitlines() if not line.startswith("gpt2hub: warning:")]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("gpt2hub: error: "), result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# --- a bit flipped after convert ------------------------------------------------------------------

def test_bit_flipped_safetensors_is_refused_in_a_hub_dry_run(hub, safetensors):
    flip_bit(safetensors / "model.safetensors")
    r = cli("mirror", NAME, "hf://org/gpt2-tiny", "--formats", "original,safetensors", "--dry-run", "--quiet")
    one_error_line(r, "model.safetensors", "exact weight proof failed")
    assert "send" not in r.stdout and hub.state.requests == []


def test_bit_flipped_safetensors_is_refused_in_a_real_hub_run(hub, safetensors):
    flip_bit(safetensors / "model.safetensors")
    with pytest.raises(MirrorError, match=r"model\.safetensors: not uploaded: the exact weight proof failed: ") as e:
        gpt2hub.mirror(NAME, "hf://org/gpt2-tiny", formats=["original", "safetensors"])
    one_line(e)
    assert hub.state.commits == [] and hub.state.requests == []


def test_bit_flipped_safetensors_is_refused_by_s3_dry_run_and_real_run(s3_server, bucket, safetensors):
    flip_bit(safetensors / "model.safetensors")
    dest = f"s3://{bucket}/gpt-2"
    for dry_run in (True, False):
        with pytest.raises(MirrorError, match=r"model\.safetensors: not uploaded: the exact weight proof failed"):
            gpt2hub.mirror(NAME, dest, formats=["original", "safetensors"], endpoint_url=s3_server.endpoint_url,
                           dry_run=dry_run)
    assert keys(s3_server, bucket) == set()


def test_a_proof_is_not_trusted_once_the_file_changed(hub, safetensors):
    gpt2hub.mirror(NAME, "hf://org/gpt2-tiny", formats=["safetensors"], dry_run=True)  # proven and remembered
    flip_bit(safetensors / "model.safetensors")
    with pytest.raises(MirrorError, match="exact weight proof failed"):
        gpt2hub.mirror(NAME, "hf://org/gpt2-tiny", formats=["safetensors"])
    assert hub.state.commits == []


def test_a_changed_tokenizer_file_is_refused(hub, safetensors):
    path = safetensors / "tokenizer.json"
    path.write_bytes(path.read_bytes().replace(b'"Hello"', b'"Hellp"', 1))
    with pytest.raises(MirrorError, match=r"tokenizer\.json: not uploaded: differs from the tokenizer\.json convert writes"):
        gpt2hub.mirror(NAME, "hf://org/gpt2-tiny", formats=["safetensors"])
    assert hub.state.commits == []


def test_a_planted_file_in_a_conversion_is_refused(hub, safetensors):
    (safetensors / "modeling_gpt2.py").write_text("import os; os.system('echo owned')\n")
    with pytest.raises(MirrorError, match=r"modeling_gpt2\.py: not uploaded: not a file `gpt2hub convert` writes"):
        gpt2hub.mirror(NAME, "hf://org/gpt2-tiny", formats=["safetensors"], dry_run=True)
    assert hub.state.requests == []


# --- what an intact conversion gets ---------------------------------------------------------------

def test_intact_conversion_uploads_and_the_card_says_what_was_checked_how_and_when(hub, safetensors):
    report = gpt2hub.mirror(NAME, "hf://org/gpt2-tiny", formats=["original", "safetensors"])
    assert hub.state.file("org/gpt2-tiny", "model.safetensors") == (safetensors / "model.safetensors").read_bytes()
    readme = hub.state.file("org/gpt2-tiny", "README.md").decode()
    front, body = readme.removeprefix("---\n").split("\n---\n", 1)
    checked = yaml.safe_load(front)["gpt2hub"]["checked"]
    assert checked["model.safetensors"]["how"].startswith("exact weight proof against the original checkpoint: all ")
    assert re.fullmatch(UTC, checked["model.safetensors"]["at"])
    assert checked["tokenizer.json"]["how"] == "identical to the file convert writes for this release"
    assert set(checked) == {f.dest for f in report.files if f.source is not None}
    assert "## What was checked" in body and re.search(r"\| `model.safetensors` \| exact weight proof .* \| " + UTC, body)
    # The tiny release's hashes are the user's own (manifest create), not OpenAI's: the card must not say otherwise.
    assert "OpenAI's original weights, unchanged" not in readme and "Not verified as OpenAI's" in body
    assert yaml.safe_load(front)["gpt2hub"]["openai_weights_verified"] is False


def test_the_card_claims_openai_weights_only_when_pull_verified_them_against_openai(pulled):
    from gpt2hub import modelcard

    record = {f.name: FileCheck(f.size, f.sha256, Check.PUBLISHED_SHA256) for f in pulled.files}
    verified = modelcard.render(pulled, ["safetensors"], {}, {}, pulled=record)
    assert "these are OpenAI's original weights, unchanged" in verified and "Not verified as OpenAI's" not in verified
    some = dict(record, **{"vocab.bpe": FileCheck(1, None, Check.MIRROR_SHA256)})
    for pulled_record in (some, {}):
        text = modelcard.render(pulled, ["safetensors"], {}, {}, pulled=pulled_record)
        assert "OpenAI's original weights, unchanged" not in text and "Not verified as OpenAI's" in text


def test_each_file_is_proven_once_a_run_and_not_again_while_unchanged(hub, safetensors, monkeypatch):
    from gpt2hub.verification import weights

    gguf = gpt2hub.convert(NAME, "gguf").path
    calls: list[list] = []
    real = weights.prove

    def counted(ckpt, outputs):
        calls.append(list(outputs))
        return real(ckpt, calls[-1])

    monkeypatch.setattr(weights, "prove", counted)
    report = gpt2hub.mirror(NAME, "hf://org/gpt2-tiny", formats=["original", "safetensors", "gguf"], dry_run=True)
    assert len(calls) == 1 and len(calls[0]) == 2  # one pass over the source for both outputs
    assert next(f for f in report.files if f.dest == gguf.name).check.startswith("exact weight proof")
    gpt2hub.mirror(NAME, "hf://org/gpt2-tiny", formats=["original", "safetensors", "gguf"])
    assert len(calls) == 1 and len(hub.state.commits) == 1  # proven before, unchanged since


def test_s3_intact_conversion_is_uploaded_with_its_check_in_the_report(s3_server, bucket, safetensors):
    report = gpt2hub.mirror(NAME, f"s3://{bucket}/gpt-2", formats=["safetensors"], endpoint_url=s3_server.endpoint_url)
    weights = next(f for f in report.files if f.dest.endswith("/model.safetensors"))
    assert weights.action == "sent" and weights.check.startswith("exact weight proof")
    assert weights.dest in keys(s3_server, bucket)
    assert json.loads(json.dumps(report.to_dict()))["files"][0]["check"]


# --- huggingface_hub's progress bars --------------------------------------------------------------

def test_mirror_leaves_progress_bars_off_when_the_caller_turned_them_off(hub, safetensors):
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        gpt2hub.mirror(NAME, "hf://org/gpt2-tiny", formats=["safetensors"])
        assert len(hub.state.commits) == 1
        assert are_progress_bars_disabled()
    finally:
        if not was:
            enable_progress_bars()
