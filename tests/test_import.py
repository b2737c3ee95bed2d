"""`gpt2hub import PATH --name NAME`: any checkpoint kind into the store as a release of its own, then every command.

Sources are written by the programs that write them for users: TensorFlow (the tiny release), transformers'
save_pretrained, llm.c's train_gpt2.py layout (gpt2hub.testing.llmc_source), nanoGPT's torch.save
(gpt2hub.testing.nanogpt) and gguf-py (gpt2hub's own GGUF writer is gguf-py's GGUFWriter).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from gpt2hub import registry, source_kinds, store
from gpt2hub.manifest import ReleaseManifest
from gpt2hub.registry import sha256_file
from tests.checks import invoke, isolate, one_line_error

N_LAYER, N_EMBD, N_HEAD, N_CTX = 2, 64, 4, 64  # SHAPES["tiny"]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    isolate(monkeypatch, tmp_path / "home")
    monkeypatch.delenv("GPT2HUB_MANIFESTS", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def hf_folder(tiny_release, tmp_path_factory) -> Path:
    """The tiny release's weights in transformers' GPT2LMHeadModel, saved by save_pretrained, with GPT-2's
    tokenizer files as the Hub's GPT-2 repos carry them (vocab.json, merges.txt)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from gpt2hub.testing.hf import save_as_hf

    return save_as_hf(tiny_release, tmp_path_factory.mktemp("hf") / "my-gpt2")


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _manifest(name: str) -> ReleaseManifest:
    return ReleaseManifest.from_file(store.home() / "manifests" / f"{name}.json")


# --- a TF release: every command on it ---------------------------------------------------------------------

def test_a_tf_release_lands_as_given_with_a_manifest_of_the_sha256_measured_here(home, tiny_release):
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tiny_release.iterdir()}
    result = invoke("import", str(tiny_release), "--name", "mine")
    assert result.exit_code == 0, result.output
    original = home / "mine" / "original"
    assert result.stdout.splitlines()[-2] == str(original)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tiny_release.iterdir()} == before  # untouched
    assert {n: d for n, d in _digests(original).items()} == _digests(tiny_release)
    assert all(os.stat(original / n).st_ino != before[n][0] for n in before)  # copies, not links
    m = _manifest("mine")
    assert m.kind == "tf" and "kind" not in m.to_dict()  # OpenAI's layout, as every manifest without a kind
    assert {f.name: (f.size, f.sha256, f.status) for f in m.files} == {
        n: ((tiny_release / n).stat().st_size, d, "measured") for n, d in _digests(tiny_release).items()}
    assert all("measured by gpt2hub import" in f.note for f in m.files)
    assert m.hparams.to_dict() == json.loads((tiny_release / "hparams.json").read_text()) | m.hparams.variant()
    assert len(m.tensors) == 1 + 1 + 2 + N_LAYER * 12 and all(t["file"] == "model.ckpt.data-00000-of-00001"
                                                             for t in m.tensors)


def test_imported_manifests_match_the_manifest_schema(home, tiny_release, hf_folder):
    jsonschema = pytest.importorskip("jsonschema")
    from importlib import resources

    schema = json.loads(resources.files("gpt2hub.manifests").joinpath("manifest.schema.json").read_text())
    for source, name in ((tiny_release, "mine"), (hf_folder, "hf-mine")):
        gpt2hub.import_checkpoint(source, name)
        data = json.loads((home / "manifests" / f"{name}.json").read_text())
        assert [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(data)] == []


def test_list_info_convert_verify_du_and_rm_work_on_an_imported_release(home, tiny_release):
    pytest.importorskip("torch")
    gpt2hub.import_checkpoint(tiny_release, "mine")
    listed = {r["name"]: r for r in gpt2hub.list_releases()}
    assert listed["mine"]["state"] == "verified" and listed["mine"]["parameters"] == _manifest("mine").parameters
    info = invoke("info", "mine")
    assert info.exit_code == 0 and "measured" in info.stdout and "published" not in info.stdout
    r = gpt2hub.convert("mine", to="safetensors")
    assert r.path == home / "mine" / "safetensors"
    report = gpt2hub.verify("mine", formats="original,safetensors", tokens=8)
    assert report.passed, report.to_text()
    integrity = {c.name: c.detail for c in report.integrity}
    assert "sha256 you measured yourself" in integrity["model.ckpt.data-00000-of-00001"]
    assert len(gpt2hub.sample("mine", prompt="Hello", length=4, seed=1).texts) == 1
    assert {u.name for u in gpt2hub.disk_usage()} == {"mine"}
    removed = gpt2hub.remove("mine")
    assert [e.format for e in removed.removed] == ["safetensors"] and not (home / "mine" / "safetensors").exists()
    gpt2hub.remove("mine", everything=True)
    assert not (home / "mine").exists() and store.original_state("mine") == "absent"


def test_link_hard_links_the_users_files(home, tiny_release, tmp_path):
    mine = tmp_path / "copy"
    shutil.copytree(tiny_release, mine)
    r = gpt2hub.import_checkpoint(mine, "linked", link=True)
    assert all(f.linked for f in r.files)
    for f in r.files:
        assert os.stat(mine / f.name).st_ino == os.stat(r.path / f.name).st_ino


# --- other kinds ---------------------------------------------------------------------------------------------

def test_an_hf_folder_saved_by_transformers_imports_and_converts_in_the_store(home, hf_folder, tiny_converted):
    r = gpt2hub.import_checkpoint(hf_folder, "hf-mine")
    assert (r.kind, r.path) == ("hf", home / "hf-mine" / "original")
    assert {f.name for f in r.files} == {p.name for p in hf_folder.iterdir()}
    assert _manifest("hf-mine").kind == "hf" and _manifest("hf-mine").to_dict()["kind"] == "hf"
    from gpt2hub.release import locate

    assert locate("hf-mine", kinds=None).kind == "hf"
    out = gpt2hub.convert("hf-mine", to="safetensors").path
    assert out == home / "hf-mine" / "safetensors"
    from safetensors.numpy import load_file

    ours, theirs = load_file(out / "model.safetensors"), load_file(tiny_converted.parent / "original-safetensors" /
                                                                   "model.safetensors")
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def _file_kind_sources(tiny_release: Path, root: Path) -> dict[str, Path]:
    """One file per one-file source kind registered here, written by the program users write it with."""
    out = {}
    names = source_kinds.names()
    if "llmc" in names:
        from gpt2hub.testing.llmc_source import write_llmc

        out["llmc"] = write_llmc(tiny_release, root / "llmc")
    if "gguf" in names:
        pytest.importorskip("gguf")
        out["gguf"] = gpt2hub.convert(tiny_release, to="gguf", dtype="f32", out=root / "tiny-f32.gguf").path
    if "nanogpt" in names:
        pytest.importorskip("torch")
        from gpt2hub.testing.nanogpt import GPTConfig, write_ckpt

        out["nanogpt"] = root / "nanogpt" / "ckpt.pt"
        out["nanogpt"].parent.mkdir(parents=True)
        write_ckpt(out["nanogpt"], GPTConfig(block_size=N_CTX, vocab_size=50304, n_layer=N_LAYER, n_head=N_HEAD,
                                             n_embd=N_EMBD))
    return out


def test_one_file_kinds_import_as_the_file_inside_original(home, tiny_release, tmp_path):
    sources = _file_kind_sources(tiny_release, tmp_path / "sources")
    if not sources:
        pytest.skip("no one-file source kind registered")
    for kind, path in sources.items():
        name = f"mine-{kind}"
        r = gpt2hub.import_checkpoint(path, name, vocab=tiny_release)
        assert (r.kind, r.path) == (kind, home / name / "original" / path.name), kind
        assert sha256_file(r.path) == sha256_file(path)
        from gpt2hub.release import locate

        assert locate(name, kinds=None).original == r.path
        if kind == "llmc":  # the tokenizer file beside the model travels with it
            assert (home / name / "original" / "gpt2_tokenizer.bin").is_file()
        out = gpt2hub.convert(name, to="safetensors", vocab=tiny_release).path
        assert out == home / name / "safetensors"
    listed = {r["name"]: r["state"] for r in gpt2hub.list_releases()}
    assert all(listed[f"mine-{k}"] == "verified" for k in sources)


# --- refusals: nothing lands ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, needle", [
    ("../escape", "path separator"), ("a/b", "path separator"), ("..", "'..'"), (".hidden", "starts with a dot"),
    ("manifests", "gpt2hub uses"), ("124M", "OpenAI's release 124M"), ("GPT2", "OpenAI's release 124M"),
    ("1.5b", "OpenAI's release 1558M"),
])
def test_a_name_that_escapes_or_shadows_a_shipped_release_is_refused(home, tiny_release, name, needle):
    one_line_error(invoke("import", str(tiny_release), "--name", name), needle)
    assert not home.exists() or not any(p.name != "manifests" for p in home.iterdir())


def test_an_existing_name_needs_force_which_replaces_it_and_drops_its_conversions(home, tiny_release, hf_folder):
    gpt2hub.import_checkpoint(tiny_release, "mine")
    gpt2hub.convert("mine", to="safetensors")
    one_line_error(invoke("import", str(hf_folder), "--name", "mine"), "already here", "--force")
    assert _manifest("mine").kind == "tf"
    r = invoke("import", str(hf_folder), "--name", "mine", "--force")
    assert r.exit_code == 0, r.output
    assert _manifest("mine").kind == "hf" and not (home / "mine" / "safetensors").exists()
    assert _digests(home / "mine" / "original") == _digests(hf_folder)
    assert [p.name for p in (home / "mine").iterdir() if p.name.startswith(".original")] == []


def test_an_unreadable_source_is_refused_before_anything_lands(home, tmp_path, tiny_release):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    one_line_error(invoke("import", str(junk), "--name", "x"), "not a checkpoint gpt2hub reads", "notes.txt")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_release, broken)
    data = broken / "model.ckpt.data-00000-of-00001"
    os.truncate(data, data.stat().st_size // 2)
    one_line_error(invoke("import", str(broken), "--name", "x"), "truncated")
    one_line_error(invoke("import", str(tmp_path / "absent"), "--name", "x"), "no such file or folder")
    assert not (home / "x").exists() and not (home / "manifests" / "x.json").exists()


def test_the_stores_own_copy_cannot_be_imported_over_itself(home, tiny_release):
    gpt2hub.import_checkpoint(tiny_release, "mine")
    one_line_error(invoke("import", str(home / "mine" / "original"), "--name", "mine", "--force"), "inside the store")
    assert store.original_state("mine") == "verified"


# --- the round trip through a mirror: import -> convert -> verify -> mirror -> pull elsewhere -> verify ------

@pytest.mark.parametrize("kind", ["tf", "hf"])
def test_import_convert_verify_mirror_then_pull_on_a_second_home_and_verify(
        home, aws, tiny_release, hf_folder, s3_server, tmp_path, monkeypatch, kind):
    pytest.importorskip("boto3")
    pytest.importorskip("torch")
    source = tiny_release if kind == "tf" else hf_folder
    gpt2hub.import_checkpoint(source, "team-model")
    gpt2hub.convert("team-model", to="safetensors")
    if kind == "tf":  # verify reads a TF original; other kinds' verify belongs to their source's module
        assert gpt2hub.verify("team-model", formats="original,safetensors", tokens=8).passed
    bucket = f"import-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    dest = f"s3://{bucket}/models"
    gpt2hub.mirror("team-model", dest, formats=["original"], endpoint_url=s3_server.endpoint_url)

    isolate(monkeypatch, tmp_path / "teammate")  # a second machine: an empty home
    assert "team-model" not in {m.name for m in registry.releases()}
    r = invoke("pull", "team-model", "--source", dest, "--endpoint-url", s3_server.endpoint_url, "--quiet")
    assert r.exit_code == 0, r.output
    m = registry.resolve("team-model")
    assert m.kind == kind and all(f.status == "mirror" for f in m.files)  # the mirror's word, never more
    assert _digests(store.release_dir("team-model")) == _digests(source) | {}
    out = gpt2hub.convert("team-model", to="safetensors").path
    assert out == tmp_path / "teammate" / "team-model" / "safetensors"
    if kind == "tf":
        assert gpt2hub.verify("team-model", formats="original,safetensors", tokens=8).passed


def test_an_imported_release_mirrors_to_a_hub_repo_with_a_card_that_never_calls_it_openais(home, hub, tiny_release):
    pytest.importorskip("huggingface_hub")
    gpt2hub.import_checkpoint(tiny_release, "mine")
    gpt2hub.convert("mine", to="safetensors")
    gpt2hub.mirror("mine", "hf://acme/mine", formats=["safetensors", "original"])
    card = hub.state.file("acme/mine", "README.md").decode()
    assert "**Not verified as OpenAI's:**" in card and "does not claim to hold OpenAI's weights" in card
    data = "model.ckpt.data-00000-of-00001"
    assert hub.state.file("acme/mine", f"original/{data}") == (tiny_release / data).read_bytes()
