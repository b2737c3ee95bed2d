"""Trust, round 2 (issue 19): `verify` runs no one's code, and every file it reads from the store is bounded.

Each test plays the attacker with real parts: a meta graph built by TensorFlow, crafted llm.c and config.json
files beside a real release, the real CLI. A crafted file that could still make memory grow is verified in a
subprocess under an address-space limit and a timeout, so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2hub.layout import HPARAM_MAX
from gpt2hub.testing.release import REAL_FIXTURES
from tests.checks import invoke as cli, isolate

HAS_TF = importlib.util.find_spec("tensorflow") is not None
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
GUARD_BYTES = 6 << 30  # address space of a guarded verify: far above a tiny release's needs
GUARD_SECONDS = 300


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """A fresh home, no internet (https to a dead proxy), none of gpt2hub's switches set."""
    isolate(monkeypatch, tmp_path / "home")


def guarded_verify(*args: str) -> subprocess.CompletedProcess:
    """`gpt2hub verify ARGS --json` in a subprocess limited to GUARD_BYTES of address space and GUARD_SECONDS."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (GUARD_BYTES, GUARD_BYTES))

    return subprocess.run([sys.executable, "-c", "from gpt2hub.cli import main; main()", "verify", *args, "--json"],
                          capture_output=True, text=True, timeout=GUARD_SECONDS, preexec_fn=limit)


def report_of(result) -> dict:
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def copy_release(tiny_release: Path, tmp_path: Path) -> Path:
    original = tmp_path / "r" / "original"
    shutil.copytree(tiny_release, original)
    return original


# --- 1. no graph from a file runs unless it is OpenAI's or pure tensor math -------------------------

def hostile_meta(release: Path, marker: Path, how: str) -> None:
    """model.ckpt.meta with OpenAI's names (Placeholder -> model/MatMul_2:0) whose logits depend on an op writing
    `marker`: tf.io.write_file ("write_file"), or a SaveV2 of the graph's own ("save": an op OpenAI's graph holds)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    hp = json.loads((release / "hparams.json").read_text())
    graph = tf.Graph()
    with graph.as_default():
        X = v1.placeholder(tf.int32, [1, hp["n_ctx"]])
        with v1.variable_scope("model"):
            wte = v1.get_variable("wte", [hp["n_vocab"], hp["n_embd"]], use_resource=False)
        with tf.name_scope("model/"):
            if how == "write_file":
                effect = tf.io.write_file(str(marker), "written by a graph that verify ran")
            else:
                effect = tf.raw_ops.SaveV2(prefix=str(marker), tensor_names=["x"], shape_and_slices=[""], tensors=[wte])
            with tf.control_dependencies([effect]):
                h = tf.gather(wte, X[0])
            tf.matmul(h, wte, transpose_b=True, name="MatMul_2")
        saver = v1.train.Saver([wte])
        v1.train.export_meta_graph(str(release / "model.ckpt.meta"), graph=graph, saver_def=saver.as_saver_def())


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow not installed")
@pytest.mark.parametrize("how, why", [("write_file", "op WriteFile (model/WriteFile) is not pure tensor math"),
                                      ("save", "model/MatMul_2 depends on SaveV2 (model/SaveV2)")])
def test_a_meta_graph_that_writes_a_file_is_never_run(tiny_release, tmp_path, how, why):
    original = copy_release(tiny_release, tmp_path)
    marker = tmp_path / "marker"
    hostile_meta(original, marker, how)
    result = cli("verify", str(original), "--formats", "original", "--json")
    assert not list(tmp_path.glob("marker*")), "verify ran the meta graph's file write"
    tf_row, = [r for r in json.loads(result.stdout)["rows"] if r["consumer"] == "tensorflow"]
    assert tf_row["dtype"] == "f64" and tf_row["status"] == "PASS", tf_row
    assert tf_row["note"] == ("a transcription of openai/gpt-2 src/model.py (model.ckpt.meta not run: its sha256 "
                              f"is not one OpenAI published and {why})")


@pytest.mark.skipif(not HAS_TF or REAL_FIXTURES is None, reason="needs TensorFlow and ../shared/fixtures")
def test_openais_real_meta_graph_passes_the_allowlist_on_its_own():
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    from gpt2hub.verification.original_graph import graph_logits_tensor, read_meta_graph, unsafe_dependency, unsafe_op

    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString((REAL_FIXTURES / "model.ckpt.meta").read_bytes())
    assert unsafe_op(meta) is None  # so 355M-1558M graphs (same code, no published sha256) still run
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(meta, clear_devices=True)
    X, logits = graph_logits_tensor(graph, 50257)
    assert unsafe_dependency(graph, logits, saver) is None
    assert read_meta_graph(REAL_FIXTURES)[1] == "its sha256 is OpenAI's published one"


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow not installed")
def test_a_meta_graph_that_is_not_a_protobuf_is_not_run(tiny_release, tmp_path):
    from gpt2hub.verification.original_graph import read_meta_graph

    original = copy_release(tiny_release, tmp_path)
    (original / "model.ckpt.meta").write_bytes(b"\xff" * 64)
    meta, why = read_meta_graph(original)
    assert meta is None and why.startswith("model.ckpt.meta is not a MetaGraphDef")


# --- 2. llm.c header hparams by the manifests' caps ---------------------------------------------------

def crafted_llmc(root: Path, ints: list[int]) -> Path:
    """DIR-llmc beside a release: a tokenizer file and a model file that is only a header (the size it implies)."""
    from converters.llmc import HEADER_INTS, MODEL_MAGIC, TOKENIZER_FILE

    out = root.parent / f"{root.name}-llmc"
    out.mkdir()
    (out / TOKENIZER_FILE).write_bytes(b"\0" * HEADER_INTS * 4)
    header = [MODEL_MAGIC, 3, *ints]
    (out / "gpt2_r.bin").write_bytes(struct.pack(f"<{HEADER_INTS}i", *header, *[0] * (HEADER_INTS - len(header))))
    return out


@pytest.mark.parametrize("ints, why", [
    ([64, 1000, 2**31 - 1, 4, 0, 1024], "n_embd must be a positive integer, got '0'"),
    ([64, 1000, HPARAM_MAX["n_layer"] + 1, 1, 1, 1024], f"n_layer {HPARAM_MAX['n_layer'] + 1:,} is beyond"),
    ([64, 1000, 2, 4, 64, 2**31 - 1], "padded_vocab_size 2,147,483,647 is not between"),
])
def test_an_llmc_header_beyond_the_caps_is_one_line(tiny_release, tmp_path, ints, why):
    original = copy_release(tiny_release, tmp_path)
    crafted_llmc(original, ints)
    result = guarded_verify(str(original), "--formats", "llmc")
    report = report_of(result)
    assert result.returncode == 1
    weights, = [f for f in report["files"] if f["format"] == "llmc" and f["what"] == "weights"]
    assert not weights["passed"] and "header " + why in weights["detail"] and "\n" not in weights["detail"]
    row, = [r for r in report["rows"] if r["format"] == "llmc"]
    assert row["status"] == "FAIL" and "header " + why in row["note"]


# --- 3. config.json hparams by the same caps ----------------------------------------------------------

@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed")
def test_a_config_json_beyond_the_caps_is_refused_before_transformers_builds_it(tiny_converted, tmp_path):
    original = tmp_path / "r" / "original"
    shutil.copytree(tiny_converted, original)
    shutil.copytree(tiny_converted.parent / "original-safetensors", tmp_path / "r" / "original-safetensors")
    config = tmp_path / "r" / "original-safetensors" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "n_layer": 100_000_000}))
    result = guarded_verify(str(original), "--formats", "safetensors")
    report = report_of(result)
    assert result.returncode == 1
    why = "config.json: n_layer 100,000,000 is beyond gpt2hub's limit of 1,024"
    row, = [r for r in report["rows"] if r["format"] == "safetensors"]
    assert row["status"] == "FAIL" and why in row["note"], row
    assert any(why in f["detail"] for f in report["files"] if f["format"] == "safetensors")


def test_config_json_keys_are_named_as_config_json_names_them(tmp_path):
    from converters.hf import read_config
    from gpt2hub.errors import ConversionError

    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 50257, "n_positions": 1 << 30, "n_embd": 64,
                                                      "n_head": 4, "n_layer": 2}))
    with pytest.raises(ConversionError, match=r"config.json: n_positions 1,073,741,824 is beyond gpt2hub's limit"):
        read_config(tmp_path)


# --- 4. consumer children: a wall-time and an address-space limit ------------------------------------

@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed")
def test_a_consumer_past_its_time_limit_is_an_error_naming_the_limit(tiny_converted, monkeypatch):
    monkeypatch.setenv("GPT2HUB_CONSUMER_TIMEOUT", "0.5")
    result = cli("verify", str(tiny_converted), "--formats", "safetensors", "--json")
    assert result.exit_code == 1
    row, = [r for r in json.loads(result.stdout)["rows"] if r["format"] == "safetensors"]
    assert row["status"] == "ERROR" and row["note"].startswith(
        "transformers: stopped after 0.5 s (GPT2HUB_CONSUMER_TIMEOUT)"), row


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed")
def test_a_consumer_past_its_memory_limit_is_an_error_naming_the_limit(tiny_converted, monkeypatch):
    monkeypatch.setenv("GPT2HUB_CONSUMER_MEMORY", "0.25")  # GiB: less than importing torch maps
    result = cli("verify", str(tiny_converted), "--formats", "safetensors", "--json")
    assert result.exit_code == 1
    row, = [r for r in json.loads(result.stdout)["rows"] if r["format"] == "safetensors"]
    assert row["status"] == "ERROR" and "0.25 GiB of address space (GPT2HUB_CONSUMER_MEMORY)" in row["note"], row


@pytest.mark.parametrize("var", ["GPT2HUB_CONSUMER_TIMEOUT", "GPT2HUB_CONSUMER_MEMORY"])
def test_consumer_limits_are_validated_before_verify_starts(tiny_converted, monkeypatch, var):
    monkeypatch.setenv(var, "soon")
    result = cli("verify", str(tiny_converted), "--formats", "safetensors")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == f"gpt2hub: error: ${var}: not a number ('soon')\n"
