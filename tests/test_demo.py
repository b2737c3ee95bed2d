"""`gpt2hub demo` and its TF-free release builder."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from gpt2hub.testing.release import build_release, random_value
from gpt2hub.testing.server import serve
from gpt2hub.layout import HParams, tensor_shapes
from gpt2hub.tokenizer import encoding
from gpt2hub.testing.release import RELEASE_FILES


def test_build_release_writes_openais_seven_files(tmp_path):
    folder = build_release(tmp_path / "r")
    assert sorted(p.name for p in folder.iterdir()) == sorted(RELEASE_FILES)
    h = HParams.from_file(folder / "hparams.json")
    assert (folder / "hparams.json").read_text() == h.to_json()
    assert (folder / "checkpoint").read_bytes() == (
        b'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')


def test_build_release_checkpoint_is_read_by_tensorflow_bit_for_bit(tmp_path):
    tf = pytest.importorskip("tensorflow")
    folder = build_release(tmp_path / "r", seed=3)
    h = HParams.from_file(folder / "hparams.json")
    reader = tf.train.load_checkpoint(str(folder / "model.ckpt"))
    shapes = reader.get_variable_to_shape_map()
    assert {n: tuple(s) for n, s in shapes.items()} == tensor_shapes(h)
    for name, shape in tensor_shapes(h).items():
        assert np.array_equal(reader.get_tensor(name), random_value(name, shape, seed=3)), name


def test_build_release_vocabulary_loads_in_tiktoken(tmp_path):
    folder = build_release(tmp_path / "r")
    enc = encoding(folder)
    text = "The model's 4 sizes: 124M, 355M  and more."
    assert enc.decode(enc.encode(text)) == text
    assert HParams.from_file(folder / "hparams.json").n_vocab == enc.n_vocab


def test_serve_answers_ranges_and_404_as_xml(tmp_path):
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * 4)
    with serve(tmp_path) as base:
        req = urllib.request.Request(f"{base}/f.bin", headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(req) as r:
            assert r.status == 206 and r.read() == bytes(range(10, 20))
            assert r.headers["Content-Range"] == "bytes 10-19/1024"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/missing.bin")
        assert e.value.code == 404 and e.value.headers["Content-Type"] == "application/xml"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/../../etc/passwd")


def _gpt2hub(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2hub.cli", *args], capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.heavy
def test_demo_runs_every_step_and_exits_zero(kept_demo):
    from gpt2hub.demo import CONVERSIONS

    steps = [line for line in kept_demo.output if line.startswith("[")]
    # build, pull, one step per conversion, verify, sample
    assert len(steps) == 4 + len(CONVERSIONS) and all(line.startswith("[ok]") for line in steps), kept_demo.output
    assert "demo: every step passed" in kept_demo.output and not any("Traceback" in x for x in kept_demo.output)
    assert "gpt2hub-demo/safetensors/model.safetensors" in kept_demo.files
    assert [f for f in kept_demo.files if f.startswith("gpt2hub-demo/gguf/")] == [
        "gpt2hub-demo/gguf/gpt2hub-demo-f16.gguf", "gpt2hub-demo/gguf/gpt2hub-demo-q8_0.gguf"]


@pytest.mark.heavy
def test_a_kept_demo_says_how_to_use_its_store_and_it_works_with_gpt2hub_home_alone(kept_demo):
    """The manifest is in the home's manifests/, so GPT2HUB_HOME=~/demo/home is all a command needs."""
    from gpt2hub.demo import TRY

    assert "manifests/gpt2hub-demo.json" in kept_demo.files
    assert kept_demo.output[-len(TRY) - 4:] == [
        "demo: every step passed", "the demo's store is kept; point gpt2hub at it with:",
        "  export GPT2HUB_HOME=/home/me/demo/home", "then try:", *(f"  gpt2hub {c}" for c in TRY)]
    assert {k for k in kept_demo.run.env if k.startswith("GPT2HUB_")} <= {"GPT2HUB_HOME", "GPT2HUB_STRICT_TESTS"}
    listed = kept_demo.run("gpt2hub list")
    assert listed[1].split()[:5] == ["gpt2hub-demo", "143,936", "586.0", "KB", "verified"], listed
    sampled = kept_demo.run(f"gpt2hub {TRY[-1]}")
    assert sampled[1] == " brown fox jumps over", sampled  # what the demo's own sample step said


def test_demo_in_a_folder_that_cannot_be_made_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _gpt2hub("demo", "--keep", str(blocker / "work"))
    assert r.returncode == 1
    assert r.stderr.startswith("gpt2hub: error:") and r.stderr.strip().count("\n") == 0, r.stderr
