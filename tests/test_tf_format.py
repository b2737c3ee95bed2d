"""--to tf: OpenAI's own layout as an output, byte for byte what TensorFlow writes."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from gpt2hub.converters import tf as tf_format
from gpt2hub.layout import tensor_shapes, HParams
from gpt2hub.testing.release import REAL_FIXTURES
from gpt2hub.tfcheckpoint import Checkpoint, read_index
from gpt2hub.tfwriter import write_checkpoint
from tests.checks import invoke, isolate, pulled_store

DATA, INDEX, META = tf_format.DATA, tf_format.INDEX, tf_format.META
SEVEN = ("checkpoint", "encoder.json", "hparams.json", DATA, INDEX, META, "vocab.bpe")
REAL_DATA_SIZE = 497_759_232  # OpenAI's 124M data file
needs_real = pytest.mark.skipif(REAL_FIXTURES is None, reason="../shared/fixtures/openai-124M-real absent")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def original(tiny_release, tmp_path) -> Path:
    """A private copy of the TF-written tiny release (convert writes beside it: DIR-tf/)."""
    return shutil.copytree(tiny_release, tmp_path / "tiny")


# --- the byte-identical round trip ----------------------------------------------------------------

def test_a_tf_written_release_comes_back_byte_for_byte(original):
    report = gpt2hub.convert(original, to="tf")
    assert report.path == original.parent / "tiny-tf" and report.format == "tf" and report.dtype == "f32"
    assert sorted(p.name for p in report.path.iterdir()) == sorted(SEVEN)
    for name in SEVEN:  # data file and index included: TensorFlow's own bytes
        assert sha256(report.path / name) == sha256(original / name), name
    assert report.notes == [f"{META}: copied from {original / META}"]


def test_the_cli_writes_the_same_bytes(original, tmp_path):
    out = tmp_path / "out"
    result = invoke("convert", str(original), "--to", "tf", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["path"] == str(out)
    assert sha256(out / DATA) == sha256(original / DATA) and sha256(out / INDEX) == sha256(original / INDEX)


def test_tensorflow_reads_every_variable_bit_for_bit(original):
    tf = pytest.importorskip("tensorflow")
    out = gpt2hub.convert(original, to="tf").path
    reader = tf.train.load_checkpoint(str(out / "model.ckpt"))
    shapes = reader.get_variable_to_shape_map()
    want = tensor_shapes(HParams.from_file(original / "hparams.json"))
    assert {n: tuple(s) for n, s in shapes.items()} == want
    with Checkpoint(original) as src:
        for name in want:
            got = reader.get_tensor(name)
            assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), src.tensor(name).view(np.uint32)), name


def test_a_source_without_a_meta_graph_says_so(original):
    (original / META).unlink()
    report = gpt2hub.convert(original, to="tf")
    assert not (report.path / META).exists()
    assert report.notes == [f"{META}: none (the source has no meta graph; {tf_format.LOADERS})"]
    assert sha256(report.path / DATA) == sha256(original / DATA) and tf_format.is_output(report.path)


def test_variables_beyond_the_model_are_left_out_and_so_is_the_meta_graph(original, tiny_release):
    """A training run's checkpoint (a step counter beside the model): the output is the model's TF checkpoint."""
    with Checkpoint(tiny_release) as src:
        tensors = {n: np.array(src.tensor(n)) for n in src.entries}
    tensors["global_step"] = np.array(1000, np.int64)
    for name in ("model.ckpt.index", DATA):
        (original / name).unlink()
    write_checkpoint(original / "model.ckpt", sorted(tensors.items(), key=lambda kv: kv[0].encode()))
    report = gpt2hub.convert(original, to="tf")
    assert report.ignored == ["global_step"]
    assert not (report.path / META).exists() and report.notes[0].startswith(f"{META}: not copied: ")
    for name in (DATA, INDEX):  # the model's variables alone, packed as TensorFlow packs them
        assert sha256(report.path / name) == sha256(tiny_release / name), name


def test_the_output_is_a_release_folder_again(original):
    """Converting the output (a TF checkpoint folder) to tf gives the same bytes once more."""
    first = gpt2hub.convert(original, to="tf").path
    second = gpt2hub.convert(first, to="tf").path
    for name in SEVEN:
        assert sha256(second / name) == sha256(original / name), name


def test_an_hf_folder_source_comes_back_to_tensorflow_bytes(original):
    """OpenAI layout -> safetensors -> tf: the data file and index are TensorFlow's again (needs the HF source)."""
    if importlib.util.find_spec("gpt2hub.hf_source") is None:
        pytest.skip("no HF-folder source in this tree")
    st = gpt2hub.convert(original, to="safetensors").path
    report = gpt2hub.convert(st, to="tf")
    for name in (DATA, INDEX):
        assert sha256(report.path / name) == sha256(original / name), name


# --- OpenAI's real 124M --------------------------------------------------------------------------

@needs_real
def test_openais_real_index_is_written_byte_for_byte_and_the_data_heads_agree(tmp_path):
    """The real release with its data file's first 3 MiB (the rest a hole): the output's index is OpenAI's,
    byte for byte, and its data file starts with OpenAI's 3 MiB (the first tensor whole, its CRC32C as indexed)."""
    from gpt2hub.sstable import crc32c, unmask_crc

    real = tmp_path / "124M"
    real.mkdir()
    for name in ("checkpoint", "encoder.json", "hparams.json", INDEX, META, "vocab.bpe"):
        shutil.copyfile(REAL_FIXTURES / name, real / name)
    head = (REAL_FIXTURES / f"{DATA}.head-3MiB").read_bytes()
    (real / DATA).write_bytes(head)
    os.truncate(real / DATA, REAL_DATA_SIZE)
    out = gpt2hub.convert(real, to="tf").path
    assert (out / INDEX).read_bytes() == (REAL_FIXTURES / INDEX).read_bytes()
    assert sha256(out / INDEX) == "71916f763f9746f9b2a06b12d91996cf1084ae008d0424543d39391c5f2dc687"  # OpenAI's
    assert (out / DATA).stat().st_size == REAL_DATA_SIZE
    with open(out / DATA, "rb") as f:
        assert f.read(len(head)) == head
    first = read_index(out / INDEX)[1]["model/h0/attn/c_attn/b"]
    assert first.offset == 0 and crc32c(head[:first.size]) == unmask_crc(first.crc32c)
    for name in ("checkpoint", "hparams.json", META, "encoder.json", "vocab.bpe"):
        assert (out / name).read_bytes() == (REAL_FIXTURES / name).read_bytes(), name


# --- verify -----------------------------------------------------------------------------------

@pytest.fixture
def store_with_tf(tiny_release, tmp_path, monkeypatch):
    home = pulled_store(tiny_release, tmp_path, [("tf", None)])
    isolate(monkeypatch, home)
    return home


def test_verify_proves_a_tf_output_and_runs_tensorflow_on_it(store_with_tf):
    pytest.importorskip("torch")
    verifying = importlib.import_module("gpt2hub.verifying")
    report = verifying.verify("tiny", formats=["tf"])
    files = [f for f in report.files if f.format == "tf"]
    assert [f.what for f in files] == ["weights", "metadata"] and all(f.passed for f in files), files
    assert files[0].detail.endswith("f32 bit-identical")
    rows = [r for r in report.rows if r.format == "tf"]
    want = "tensorflow" if importlib.util.find_spec("tensorflow") else "gpt2hub (tensorflow not installed)"
    assert [r.consumer for r in rows] == [want] and rows[0].passed, rows
    assert report.passed


def test_verify_fails_a_flipped_byte_and_a_wrong_crc(store_with_tf):
    pytest.importorskip("torch")
    from gpt2hub.verification.outputs import read_back
    from gpt2hub.verification.weights import prove

    out, original = store_with_tf / "tiny" / "tf", store_with_tf / "tiny" / "original"
    hp = HParams.from_file(original / "hparams.json")
    with open(out / DATA, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    o = read_back("tf", out, hp, original)
    with Checkpoint(original) as ckpt:
        (proof,) = prove(ckpt, [(o.stored.tensors, o.stored.expected)])
    assert not proof.passed and proof.failures[0].startswith("model/h0/attn/c_attn/b")

    entries = read_index(out / INDEX)[1]
    from dataclasses import replace

    from gpt2hub.tfwriter import index_bytes

    first = entries["model/h0/attn/c_attn/b"]
    entries[first.name] = replace(first, crc32c=first.crc32c ^ 1)
    (out / INDEX).write_bytes(index_bytes(entries.values()))
    problems = read_back("tf", out, hp, original).problems
    assert any("model/h0/attn/c_attn/b's CRC32C" in p for p in problems), problems


def test_the_formats_fields():
    fmt = gpt2hub.converters.get("tf")
    assert (fmt.dtypes, fmt.consumer, fmt.writes_folder, fmt.tokenizer) == (("f32",), "tensorflow", True, None)
    assert fmt.output_beside(Path("/x/DIR"), "f32") == Path("/x/DIR-tf")
