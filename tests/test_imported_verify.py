"""`verify`, `sample` and `mirror` on imported releases of every source kind (#21 item 7): each output proven exact
against that release's original, whatever its kind, and every consumer judged against a float64 reference read
from that original.

Sources are written by the programs that write them for users: transformers' save_pretrained (f32 and bf16),
nanoGPT's torch.save (gpt2hub.testing.nanogpt), llm.c's train_gpt2.py layout (gpt2hub.testing.llmc_source) and
gguf-py (gpt2hub's GGUF writer is gguf-py's GGUFWriter), f16 and q8_0. One store, imported and converted once
for the module; tests that damage a file restore it.
"""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from gpt2hub import registry, store
from gpt2hub.registry import sha256_file
from tests.checks import invoke, isolate

pytest.importorskip("torch")
N_LAYER, N_EMBD, N_HEAD, N_CTX = 2, 64, 4, 64  # SHAPES["tiny"]
# Each imported kind and what it converts to here (a nanoGPT run computes the exact GELU, which GGUF cannot hold).
TARGETS = {"hf": [("safetensors", "f32")], "hf-bf16": [("safetensors", "bf16")],
           "nanogpt": [("safetensors", "f32")], "llmc": [("safetensors", "f32"), ("gguf", "f16")],
           "gguf-f16": [("safetensors", "f32"), ("gguf", "f16")], "gguf-q8_0": [("safetensors", "f32")]}
KIND = {"hf": "hf", "hf-bf16": "hf", "nanogpt": "nanogpt", "llmc": "llmc", "gguf-f16": "gguf", "gguf-q8_0": "gguf"}


def _hf_folder(tiny_release: Path, folder: Path, dtype: str) -> Path:
    """The tiny release's weights in transformers' GPT2LMHeadModel, saved by save_pretrained in `dtype`, with GPT-2's
    tokenizer files as the Hub's GPT-2 repos carry them."""
    pytest.importorskip("transformers")
    from gpt2hub.testing.hf import save_as_hf

    return save_as_hf(tiny_release, folder, dtype)


@pytest.fixture(scope="module")
def sources(tiny_release, tmp_path_factory) -> dict[str, Path]:
    """One checkpoint per label of TARGETS, as users get them."""
    pytest.importorskip("gguf")
    from gpt2hub.testing.llmc_source import write_llmc
    from gpt2hub.testing.nanogpt import GPTConfig, write_ckpt

    root = tmp_path_factory.mktemp("sources")
    nanogpt = root / "nanogpt" / "ckpt.pt"
    nanogpt.parent.mkdir()
    write_ckpt(nanogpt, GPTConfig(block_size=N_CTX, vocab_size=50304, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD))
    return {"hf": _hf_folder(tiny_release, root / "hf", "float32"),
            "hf-bf16": _hf_folder(tiny_release, root / "hf-bf16", "bfloat16"),
            "nanogpt": nanogpt,
            "llmc": write_llmc(tiny_release, root / "llmc"),
            **{f"gguf-{d}": gpt2hub.convert(tiny_release, to="gguf", dtype=d, out=root / f"tiny-{d}.gguf").path
               for d in ("f16", "q8_0")}}


@pytest.fixture(scope="module")
def imported(sources, tiny_release, tmp_path_factory):
    """Every source imported into one fresh home (GPT-2's vocabulary given by --vocab where a source carries none,
    never found in tiktoken's cache) and converted to its TARGETS: the home."""
    home = tmp_path_factory.mktemp("imported") / "home"
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, home)
        mp.delenv("GPT2HUB_MANIFESTS", raising=False)
        mp.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("no-tiktoken-cache")))
        for label, path in sources.items():
            gpt2hub.import_checkpoint(path, label, vocab=tiny_release if label in ("nanogpt", "llmc") else None)
            for fmt, dtype in TARGETS[label]:
                gpt2hub.convert(label, to=fmt, dtype=dtype)  # no --vocab: import keeps GPT-2's beside the file
        yield home


def _tamper(path: Path, needle: str) -> tuple[str, int, bytes]:
    """Add 1.0 to the first value of the first tensor of a safetensors file whose name holds `needle`:
    (its name, the byte offset changed, the bytes it held)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    name = next(k for k in header if needle in k)
    offset = 8 + n + header[name]["data_offsets"][0]
    dtype = {"F32": np.float32, "BF16": np.uint16}[header[name]["dtype"]]
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(4)
        if dtype is np.float32:
            new = np.float32(np.frombuffer(old, np.float32)[0] + 1).tobytes()
        else:
            new = (np.frombuffer(old, np.uint16) ^ np.uint16(0x4000)).tobytes()  # an exponent bit flipped
        f.seek(offset)
        f.write(new)
    return name, offset, old


@pytest.mark.parametrize("label", list(TARGETS))
def test_verify_proves_every_output_against_the_imported_original_and_runs_every_consumer(imported, label):
    report = gpt2hub.verify(label)  # the default prompt, tokenized by the original's own vocabulary
    assert report.passed, report.to_text()
    # Each output's exact proof against this release's original, whatever its kind.
    weights = {r.format: r for r in report.files if r.what == "weights"}
    assert set(weights) == {f for f, _ in TARGETS[label]}
    for fmt, dtype in TARGETS[label]:
        assert weights[fmt].passed and weights[fmt].detail.startswith(f"all {4 + 12 * N_LAYER} tensors: "), weights[fmt]
        want = {"f32": "f32 bit-identical", "bf16": "bf16 = source rounded", "f16": "f16 = source rounded"}[dtype]
        assert want in weights[fmt].detail
    assert all(r.passed for r in report.files if r.what == "metadata")
    # Every consumer (gpt2hub.model on the original as its kind reads it, and each output's) judged against the
    # float64 reference read from the original; OpenAI's TF graph only where the original is OpenAI's layout.
    consumers = {(r.format, r.consumer.split(" (")[0]) for r in report.rows}
    assert {("original", "gpt2hub"), ("original", "gpt2hub KV cache")} <= consumers
    assert {f for f, _ in consumers} == {"original"} | {f for f, _ in TARGETS[label]}
    assert not any(c == "tensorflow" for _, c in consumers)
    assert any("TensorFlow (OpenAI's graph) runs on OpenAI's layout only" in n for n in report.notes)
    if label == "gguf-q8_0":  # the original holds quantized weights: the outputs hold them dequantized, and say so
        assert any(n.startswith("original (gguf): dequantized from GGUF: 9 tensors Q8_0") for n in report.notes)
    assert all(r.status == "PASS" for r in report.rows), report.to_text()
    # Integrity: the store's files against the sha256 measured at import (the user's own, never "published").
    integrity = {c.name: c for c in report.integrity}
    assert all(c.passed for c in integrity.values())
    files = [f.name for f in registry.resolve(label).files]
    assert all("sha256 matches" in integrity[n].detail and "you measured yourself" in integrity[n].detail
               for n in files), [integrity[n].detail for n in files]
    assert integrity["checkpoint"].detail.startswith(f"opened as {KIND[label]}: all ")
    assert integrity["hparams"].passed
    assert report.tokenization and all(t.passed for t in report.tokenization), report.to_text()


@pytest.mark.parametrize("label", ["hf-bf16", "nanogpt", "llmc", "gguf-q8_0"])  # one of each kind
def test_one_tampered_tensor_of_an_output_fails_verify_naming_it(imported, label):
    path = store.release_dir(label, "safetensors") / "model.safetensors"
    name, offset, old = _tamper(path, "mlp.c_fc.weight")
    try:
        report = gpt2hub.verify(label, formats="safetensors", tokens=4)
        assert not report.passed
        failed = [r for r in report.files if r.what == "weights" and not r.passed]
        assert len(failed) == 1 and failed[0].detail.startswith(name), failed
    finally:
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(old)


def test_a_changed_original_fails_its_sha256_row(imported):
    path = store.release_dir("nanogpt") / "ckpt.pt"
    data = path.read_bytes()
    try:
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        report = gpt2hub.verify("nanogpt", formats="safetensors", tokens=4)
        assert not report.passed
        row = next(c for c in report.integrity if c.name == "ckpt.pt")
        assert not row.passed and "sha256" in row.detail
    finally:
        path.write_bytes(data)


@pytest.mark.parametrize("label", list(TARGETS))
def test_sample_works_on_every_imported_kind(imported, label):
    s = gpt2hub.sample(label, prompt="Hello, world", length=4, seed=1)
    assert len(s.texts) == 1 and s.texts[0]
    r = invoke("sample", label, "--prompt", "Hello", "--length", "3", "--seed", "1")
    assert r.exit_code == 0, r.output


def test_import_keeps_gpt2s_vocabulary_beside_a_file_that_carries_none(imported, tiny_release):
    for label in ("nanogpt", "llmc"):
        m = registry.resolve(label)
        files = {f.name: f for f in m.files}
        for name in ("encoder.json", "vocab.bpe"):
            assert sha256_file(store.release_dir(label) / name) == sha256_file(tiny_release / name)
            assert files[name].status == "measured" and "does not carry" in files[name].note
    assert not (store.release_dir("gguf-f16") / "encoder.json").exists()  # a GGUF carries its own
    r = invoke("convert", "nanogpt", "--to", "pytorch")  # no --vocab needed again
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("label", ["nanogpt", "gguf-q8_0"])
def test_mirror_then_pull_on_a_second_home_and_verify(imported, aws, s3_server, tmp_path, monkeypatch, label):
    pytest.importorskip("boto3")
    bucket = f"imported-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    dest = f"s3://{bucket}/models"
    # mirror proves the conversion against the imported original before it uploads a byte
    report = gpt2hub.mirror(label, dest, formats=["original", "safetensors"], endpoint_url=s3_server.endpoint_url)
    checks = {f.source.name: f.check for f in report.files if f.format == "safetensors"}
    assert checks["model.safetensors"].startswith("exact weight proof against the original checkpoint: all ")
    mine = {p.name: sha256_file(p) for p in store.release_dir(label).iterdir() if p.is_file()}

    isolate(monkeypatch, tmp_path / "teammate")  # a second machine: an empty home, nothing in tiktoken's cache
    r = invoke("pull", label, "--source", dest, "--endpoint-url", s3_server.endpoint_url, "--quiet")
    assert r.exit_code == 0, r.output
    m = registry.resolve(label)
    assert m.kind == KIND[label] and all(f.status == "mirror" for f in m.files)
    theirs = {p.name: sha256_file(p) for p in store.release_dir(label).iterdir() if p.is_file()}
    assert {n: d for n, d in theirs.items() if not n.startswith(".")} == \
        {n: d for n, d in mine.items() if not n.startswith(".")}
    gpt2hub.convert(label, to="safetensors")
    report = gpt2hub.verify(label, tokens=8)
    assert report.passed, report.to_text()
    assert any(r.what == "weights" and r.passed for r in report.files)


def test_the_tokenizer_of_a_vocabulary_with_added_tokens_knows_them(tiny_release):
    from gpt2hub.tokenizer import vocab_encoding
    from gpt2hub.vocabulary import Vocab

    vocab = Vocab.from_files(tiny_release / "encoder.json", tiny_release / "vocab.bpe",
                             ((50257, "<|pad|>", True), (50258, "<|user|>", False)))
    enc = vocab_encoding(vocab)
    assert enc.encode("Hi<|user|>", allowed_special="all") == [17250, 50258]
    assert enc.decode([50257]) == "<|pad|>" and enc.n_vocab == 50259
