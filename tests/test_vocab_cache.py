"""The vocabulary cache: tokenizer.json and config facts built once per vocabulary, never trusted blindly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import gpt2hub
from gpt2hub import vocab_cache
from gpt2hub.converters import hf
from gpt2hub.tokenizer import ENDOFTEXT
from gpt2hub.vocabulary import Vocab


@pytest.fixture
def release(tiny_release, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    return Path(shutil.copytree(tiny_release, tmp_path / "tiny"))


def _fresh_tokenizer_json(release: Path) -> str:
    class _Source:
        vocab = Vocab(release / "encoder.json", release / "vocab.bpe")

    return json.dumps(hf.tokenizer_json(_Source()), ensure_ascii=False) + "\n"


def test_second_conversion_reuses_the_tokenizer_json(release, tmp_path, monkeypatch):
    first = gpt2hub.convert(release, to="safetensors", out=tmp_path / "a").path
    monkeypatch.setattr(hf, "tokenizer_json", lambda source: pytest.fail("tokenizer.json built twice"))
    monkeypatch.setattr(Vocab, "_parsed", property(lambda self: pytest.fail("vocabulary parsed twice")))
    second = gpt2hub.convert(release, to="pytorch", out=tmp_path / "b").path
    monkeypatch.undo()
    text = (first / "tokenizer.json").read_text(encoding="utf-8")
    assert text == (second / "tokenizer.json").read_text(encoding="utf-8") == _fresh_tokenizer_json(release)
    config = json.loads((second / "config.json").read_text())
    assert config["eos_token_id"] == json.loads((release / "encoder.json").read_text())[ENDOFTEXT]


def test_a_tampered_cache_entry_is_rebuilt(release, tmp_path):
    gpt2hub.convert(release, to="safetensors", out=tmp_path / "a").path
    [entry] = (Path(gpt2hub.store.home()) / vocab_cache.CACHE).glob("*/tokenizer.json")
    entry.write_text('{"model": {"vocab": {"evil": 0}}}\n')
    out = gpt2hub.convert(release, to="safetensors", out=tmp_path / "b").path
    assert (out / "tokenizer.json").read_text(encoding="utf-8") == _fresh_tokenizer_json(release)
    assert entry.read_text(encoding="utf-8") == _fresh_tokenizer_json(release)


def test_a_changed_vocabulary_is_a_new_key(release):
    v = Vocab.from_folder(release)
    before = v.key
    (release / "vocab.bpe").write_text((release / "vocab.bpe").read_text() + "\n")
    assert Vocab.from_folder(release).key != before


def test_an_unwritable_cache_only_costs_time(release, tmp_path):
    home = Path(gpt2hub.store.home())
    home.mkdir(parents=True)
    (home / ".cache").write_text("not a folder")  # every cache write fails
    out = gpt2hub.convert(release, to="safetensors", out=tmp_path / "a").path
    assert (out / "tokenizer.json").read_text(encoding="utf-8") == _fresh_tokenizer_json(release)
