"""The release registry: shipped manifests, user manifests, and `create_manifest`."""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from gpt2hub.errors import CheckpointError, ManifestError, UnknownRelease
from gpt2hub.layout import HParams, tensor_layout
from gpt2hub.registry import OPENAI_FILES, ReleaseManifest, create_manifest, releases, resolve, write_manifest
from gpt2hub.tfcheckpoint import read_index
from gpt2hub.testing.release import REAL_FIXTURES
from tests.checks import one_line

jsonschema = pytest.importorskip("jsonschema")

MANIFESTS = resources.files("gpt2hub.manifests")
SHIPPED = sorted(e.name for e in MANIFESTS.iterdir() if e.name.endswith(".json") and not e.name.endswith(".schema.json"))
DATA = "model.ckpt.data-00000-of-00001"
needs_real = pytest.mark.skipif(REAL_FIXTURES is None, reason="../shared/fixtures/openai-124M-real not present")


def shipped(name: str) -> dict:
    return json.loads(MANIFESTS.joinpath(name).read_text())


@pytest.fixture(scope="module")
def schema_validator():
    schema = json.loads(MANIFESTS.joinpath("manifest.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No user manifests leak in from the machine running the tests."""
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GPT2HUB_MANIFESTS", raising=False)


def valid_manifest() -> dict:
    return shipped("124M.json")


# --- shipped manifests -------------------------------------------------------------------------

def test_four_releases_are_shipped():
    assert SHIPPED == ["124M.json", "1558M.json", "355M.json", "774M.json"]
    assert [m.name for m in releases()] == ["124M", "355M", "774M", "1558M"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_manifest_matches_schema(name, schema_validator):
    errors = [e.message for e in schema_validator.iter_errors(shipped(name))]
    assert errors == []


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_manifest_lists_the_seven_openai_files(name):
    assert sorted(f["name"] for f in shipped(name)["files"]) == sorted(OPENAI_FILES)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_manifest_parameters_match_hparams(name):
    data = shipped(name)
    assert data["parameters"] == HParams.from_dict(data["hparams"]).parameters


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_data_size_is_four_bytes_per_parameter(name):
    data = shipped(name)
    size = next(f["size"] for f in data["files"] if f["name"] == DATA)
    assert size == 4 * data["parameters"] == sum(t["size"] for t in data["tensors"])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_tensors_packed_in_bytewise_sorted_order(name):
    tensors = shipped(name)["tensors"]
    assert [t["name"] for t in tensors] == sorted((t["name"] for t in tensors), key=str.encode)
    offset = 0
    for t in tensors:
        assert t["offset"] == offset, t["name"]
        offset += t["size"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_tensor_count_is_4_plus_12_per_layer(name):
    data = shipped(name)
    assert len(data["tensors"]) == 4 + 12 * data["hparams"]["n_layer"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_tensors_equal_layout_from_hparams(name):
    data = shipped(name)
    assert data["tensors"] == tensor_layout(HParams.from_dict(data["hparams"]))


def test_124M_files_all_published_with_sha256():
    m = resolve("124M")
    assert all(f.status == "published" and f.sha256 and f.size for f in m.files)


@pytest.mark.parametrize("name", ["774M", "1558M"])
def test_derived_sizes_are_marked_expected(name):
    m = resolve(name)
    for f in (DATA, "model.ckpt.index"):
        assert m.file(f).status == "expected" and m.file(f).sha256 is None


@needs_real
def test_124M_tensor_table_equals_real_index():
    entries = read_index(REAL_FIXTURES / "model.ckpt.index")[1]
    real = [{"name": e.name, "shape": list(e.shape), "dtype": e.dtype_name, "offset": e.offset, "size": e.size}
            for e in entries.values()]
    assert list(resolve("124M").tensors) == real


@needs_real
@pytest.mark.parametrize("file", [f for f in OPENAI_FILES if f != DATA])
def test_124M_small_file_records_match_real_files(file):
    record = resolve("124M").file(file)
    real = (REAL_FIXTURES / file).read_bytes()
    assert (record.size, record.sha256) == (len(real), hashlib.sha256(real).hexdigest())


# --- names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("alias,name", [
    ("124M", "124M"), ("117M", "124M"), ("gpt2", "124M"), ("345M", "355M"), ("gpt2-medium", "355M"),
    ("774M", "774M"), ("gpt2-large", "774M"), ("1.5B", "1558M"), ("gpt2-xl", "1558M"), ("GPT2-XL", "1558M"),
    ("1558m", "1558M"), ("Small", "124M"),
])
def test_alias_resolves(alias, name):
    assert resolve(alias).name == name


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownRelease) as e:
        resolve("gpt2-chatbot")
    msg = one_line(e)
    assert "'gpt2-chatbot'" in msg and all(n in msg for n in ("124M", "355M", "774M", "1558M", "1.5B"))


def test_no_name_is_an_unknown_release():
    with pytest.raises(UnknownRelease, match="known:") as e:
        resolve(None)
    one_line(e)


# --- user manifests ----------------------------------------------------------------------------

def user_manifest(name: str = "tiny-ft", aliases=("my-tiny",)) -> dict:
    data = valid_manifest()
    data.update(name=name, aliases=list(aliases), folders=[name], parameters=data["parameters"] + 1)
    return data


def test_manifest_in_GPT2HUB_MANIFESTS_is_known(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "tiny-ft.json").write_text(json.dumps(user_manifest()))
    monkeypatch.setenv("GPT2HUB_MANIFESTS", str(folder))
    m = resolve("MY-TINY")
    assert m.name == "tiny-ft" and m.path == folder / "tiny-ft.json"


def test_manifest_in_home_manifests_is_known(tmp_path):
    folder = tmp_path / "home" / "manifests"
    folder.mkdir(parents=True)
    (folder / "tiny-ft.json").write_text(json.dumps(user_manifest()))
    assert "tiny-ft" in [m.name for m in releases()]


def test_user_manifest_cannot_replace_a_shipped_one(tmp_path, capsys):
    folder = tmp_path / "home" / "manifests"
    folder.mkdir(parents=True)
    data = user_manifest("124M", aliases=("mirror-small",))
    (folder / "124M.json").write_text(json.dumps(data))
    assert resolve("124M").aliases == ("117M", "small", "gpt2")  # the shipped registry is the root of trust
    assert [m.name for m in releases()].count("124M") == 1
    assert "124M.json: 124M already names another release" in capsys.readouterr().err


def test_manifest_file_argument_is_used_directly(tmp_path):
    path = tmp_path / "elsewhere.json"
    path.write_text(json.dumps(user_manifest()))
    assert resolve("tiny-ft", manifest=path).path == path
    assert resolve(None, manifest=path).name == "tiny-ft"


def test_manifest_file_for_another_name_is_refused(tmp_path):
    path = tmp_path / "elsewhere.json"
    path.write_text(json.dumps(user_manifest()))
    with pytest.raises(UnknownRelease, match="describes 'tiny-ft'") as e:
        resolve("124M", manifest=path)
    one_line(e)


def test_manifest_file_claiming_a_shipped_alias_is_refused(tmp_path):
    path = tmp_path / "elsewhere.json"
    path.write_text(json.dumps(user_manifest(aliases=("GPT2",))))  # 124M's alias, in other case
    with pytest.raises(ManifestError, match="GPT2 already names a shipped release") as e:
        resolve(None, manifest=path)
    one_line(e)


def test_the_shipped_manifest_itself_may_be_given_as_a_file(tmp_path):
    path = tmp_path / "124M.json"
    path.write_text(json.dumps(shipped("124M.json")))
    assert resolve("gpt2", manifest=path).name == "124M"


# --- malformed manifests -----------------------------------------------------------------------

def write_broken(tmp_path: Path, change) -> Path:
    data = valid_manifest()
    change(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change,fact", [
    (lambda d: d.pop("name"), "missing 'name'"),
    (lambda d: d.pop("hparams"), "missing 'hparams'"),
    (lambda d: d.pop("files"), "missing 'files'"),
    (lambda d: d.pop("tensors"), "missing 'tensors'"),
    (lambda d: d["hparams"].pop("n_head"), "n_head"),
    (lambda d: d["hparams"].update(n_head=7), "divisible"),
    (lambda d: d["files"][0].update(sha256="DD1B025D"), "sha256"),
    (lambda d: d["files"][0].update(sha256="dd1b" * 15), "sha256"),
    (lambda d: d["files"][0].update(size=-1), "size"),
    (lambda d: d["files"][0].update(status="verified"), "status"),
    (lambda d: d["tensors"][0].pop("offset"), "tensors[0]"),
    (lambda d: d.update(name="../evil"), "plain folder name"),
    (lambda d: d.update(aliases="gpt2"), "aliases"),
    (lambda d: d.update(parameters="124M"), "parameters"),
])
def test_malformed_manifest_is_a_one_line_manifest_error(tmp_path, change, fact):
    path = write_broken(tmp_path, change)
    with pytest.raises(ManifestError) as e:
        ReleaseManifest.from_file(path)
    msg = one_line(e)
    assert str(path) in msg and fact in msg


def test_manifest_with_bad_json_is_a_manifest_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"name": "x",')
    with pytest.raises(ManifestError, match="not a readable JSON manifest") as e:
        ReleaseManifest.from_file(path)
    assert str(path) in one_line(e)


def test_manifest_that_is_not_an_object_is_a_manifest_error(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[]")
    with pytest.raises(ManifestError, match="JSON object") as e:
        ReleaseManifest.from_file(path)
    one_line(e)


def test_missing_manifest_file_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest file") as e:
        resolve("124M", manifest=tmp_path / "absent.json")
    one_line(e)


def test_broken_user_manifest_is_one_warning_not_a_broken_tool(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "oops.json").write_text("{")
    (folder / "tiny-ft.json").write_text(json.dumps(user_manifest()))
    monkeypatch.setenv("GPT2HUB_MANIFESTS", str(folder))
    assert {"124M", "355M", "774M", "1558M", "tiny-ft"} == {m.name for m in releases()}
    assert resolve("124M").name == "124M"
    err = [line for line in capsys.readouterr().err.splitlines() if "oops.json" in line]
    assert len(err) == 1 and err[0].startswith("gpt2hub: warning: skipping a manifest:")


# --- create_manifest ---------------------------------------------------------------------------

def test_created_manifest_measures_every_file(tiny_release):
    m = create_manifest(tiny_release, "tiny")
    assert sorted(f.name for f in m.files) == sorted(OPENAI_FILES)
    for f in m.files:
        data = (tiny_release / f.name).read_bytes()
        assert (f.size, f.sha256, f.status) == (len(data), hashlib.sha256(data).hexdigest(), "measured"), f.name


def test_created_manifest_takes_hparams_from_hparams_json(tiny_release):
    m = create_manifest(tiny_release, "tiny")
    assert m.hparams == HParams.from_file(tiny_release / "hparams.json")
    assert m.parameters == m.hparams.parameters


def test_created_manifest_layout_is_read_from_index(tiny_release):
    m = create_manifest(tiny_release, "tiny")
    entries = read_index(tiny_release / "model.ckpt.index")[1]
    assert [(t["name"], t["offset"], t["size"], tuple(t["shape"])) for t in m.tensors] == [
        (e.name, e.offset, e.size, e.shape) for e in entries.values()]
    assert list(m.tensors) == tensor_layout(m.hparams)


def test_created_manifest_matches_schema_and_round_trips(tiny_release, tmp_path, schema_validator):
    m = create_manifest(tiny_release, "tiny", aliases=["tiny-alias"])
    path = write_manifest(m, tmp_path / "tiny.json")
    assert [e.message for e in schema_validator.iter_errors(json.loads(path.read_text()))] == []
    assert ReleaseManifest.from_file(path) == m


def test_created_manifest_infers_hparams_without_hparams_json(tiny_release, tmp_path):
    folder = shutil.copytree(tiny_release, tmp_path / "nohparams")
    (folder / "hparams.json").unlink()
    real = HParams.from_file(tiny_release / "hparams.json")
    inferred = create_manifest(folder, "tiny").hparams
    assert (inferred.n_vocab, inferred.n_ctx, inferred.n_embd, inferred.n_layer) == (
        real.n_vocab, real.n_ctx, real.n_embd, real.n_layer)
    assert inferred.n_head == max(1, real.n_embd // 64)  # 64-dim heads unless told
    assert create_manifest(folder, "tiny", n_head=real.n_head).hparams == real


def test_create_manifest_on_a_file_is_a_manifest_error(tiny_release):
    with pytest.raises(ManifestError, match="not a folder") as e:
        create_manifest(tiny_release / "hparams.json", "tiny")
    one_line(e)


def test_create_manifest_without_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint") as e:
        create_manifest(tmp_path, "empty")
    one_line(e)


def test_unknown_format_in_the_api_is_a_one_line_error():
    import gpt2hub
    from gpt2hub.errors import Gpt2hubError

    with pytest.raises(Gpt2hubError, match="unknown format 'onyx'") as e:
        gpt2hub.path("124M", "onyx")
    one_line(e)

