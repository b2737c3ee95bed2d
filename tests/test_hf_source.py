"""`gpt2hub convert HFDIR`: a Hugging Face GPT-2 folder, written by transformers (and torch.save), as a source.

The folders hold the tiny release's own weights, copied into transformers' GPT2LMHeadModel / GPT2Model, so every
output of an HF folder must be bit-identical, tensor by tensor, to the output of the tiny release itself.
transformers 5 always saves safetensors (`safe_serialization` is gone) and keeps the tokenizer in tokenizer.json
only; pytorch_model.bin is written with torch.save of the state dict (as transformers 4 saved it), and the
tokenizer files as the Hub's GPT-2 repos carry them (vocab.json, merges.txt: encoder.json and vocab.bpe renamed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from gpt2hub.converters.hf import reference_names
from gpt2hub.tfcheckpoint import Checkpoint
from tests.checks import invoke, one_line_error

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_LAYER, N_EMBD, N_HEAD, N_CTX = 2, 64, 4, 64  # SHAPES["tiny"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GPT2HUB_MANIFESTS", raising=False)
    return tmp_path / "home"


def _config(**changes):
    fields = dict(n_layer=N_LAYER, n_embd=N_EMBD, n_head=N_HEAD, n_positions=N_CTX, vocab_size=50257)
    return transformers.GPT2Config(**{**fields, **changes})


def _model(release: Path, base: bool = False, **config):
    """GPT2LMHeadModel (or GPT2Model) holding the tiny release's weights."""
    model = (transformers.GPT2Model if base else transformers.GPT2LMHeadModel)(_config(**config))
    params = dict(model.named_parameters())
    prefix = "" if base else "transformer."
    with Checkpoint(release) as ckpt, torch.no_grad():
        for tf, name in reference_names(N_LAYER).items():
            value = ckpt.tensor(tf)
            value = value[0] if value.ndim == 3 else value  # Conv1D [1, in, out] -> (in, out)
            params[prefix + name].copy_(torch.from_numpy(np.array(value)))
    return model


def _tokenizer_files(release: Path, folder: Path) -> Path:
    shutil.copyfile(release / "encoder.json", folder / "vocab.json")
    shutil.copyfile(release / "vocab.bpe", folder / "merges.txt")
    return folder


def _saved(release: Path, folder: Path, **save) -> Path:
    _model(release).save_pretrained(folder, **save)
    return _tokenizer_files(release, folder)


def _torch_saved(release: Path, folder: Path, shards: int = 1) -> Path:
    """pytorch_model.bin (or its shards and index) as transformers 4 wrote it: torch.save of the state dict."""
    model = _model(release)
    model.config.save_pretrained(folder)
    state = model.state_dict()  # lm_head.weight included: the same storage as wte
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        names, weight_map = list(state), {}
        for k in range(shards):
            file = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
            part = {n: state[n] for n in names[k::shards]}
            torch.save(part, folder / file)
            weight_map.update(dict.fromkeys(part, file))
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return _tokenizer_files(release, folder)


@pytest.fixture(scope="module")
def folders(tiny_release, tmp_path_factory):
    """One folder per way an HF GPT-2 checkpoint is laid out, each holding the tiny release's weights."""
    root = tmp_path_factory.mktemp("hf")
    return {
        "safetensors": _saved(tiny_release, root / "safetensors"),
        "sharded": _saved(tiny_release, root / "sharded", max_shard_size="4MB"),
        "base": _tokenizer_files(tiny_release, _saved_base(tiny_release, root / "base")),
        "bin": _torch_saved(tiny_release, root / "bin"),
        "bin-sharded": _torch_saved(tiny_release, root / "bin-sharded", shards=3),
    }


def _saved_base(release: Path, folder: Path) -> Path:
    _model(release, base=True).save_pretrained(folder)
    return folder


def _safetensors(folder: Path) -> dict[str, bytes]:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "np") as f:
        return {n: (f.get_tensor(n).dtype.str, f.get_tensor(n).shape, f.get_tensor(n).tobytes()) for n in f.keys()}


def _gguf(path: Path) -> dict[str, tuple]:
    from gguf import GGUFReader

    return {t.name: (int(t.tensor_type), tuple(int(d) for d in t.shape), bytes(t.data.tobytes()))
            for t in GGUFReader(path).tensors}


# --- the folders written by transformers and torch convert exactly -----------------------------------

def test_the_folders_are_laid_out_as_their_writers_lay_them_out(folders):
    assert len(list(folders["sharded"].glob("model-*.safetensors"))) > 1
    assert len(list(folders["bin-sharded"].glob("pytorch_model-*.bin"))) == 3
    assert (folders["sharded"] / "model.safetensors.index.json").is_file()
    from safetensors import safe_open

    with safe_open(folders["base"] / "model.safetensors", "np") as f:
        assert "wte.weight" in f.keys() and not any(k.startswith("transformer.") for k in f.keys())
    with safe_open(folders["safetensors"] / "model.safetensors", "np") as f:
        assert "transformer.wte.weight" in f.keys()


@pytest.mark.parametrize("kind", ["safetensors", "sharded", "base", "bin", "bin-sharded"])
def test_an_hf_folder_converts_to_safetensors_bit_identical_to_the_tf_release(folders, tiny_converted, tmp_path, kind):
    r = gpt2hub.convert(folders[kind], to="safetensors", out=tmp_path / "out")
    assert r.source_kind == "hf" and r.hparams_from == "config.json" and r.tensors == 4 + 12 * N_LAYER
    assert r.hparams == {"n_vocab": 50257, "n_ctx": N_CTX, "n_embd": N_EMBD, "n_head": N_HEAD, "n_layer": N_LAYER}
    assert _safetensors(r.path) == _safetensors(tiny_converted.parent / "original-safetensors")


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_an_hf_folder_converts_to_gguf_f32_tensor_by_tensor_as_the_tf_release(folders, tiny_converted, tmp_path, kind):
    pytest.importorskip("gguf")
    r = gpt2hub.convert(folders[kind], to="gguf", dtype="f32", out=tmp_path)
    assert _gguf(r.path) == _gguf(tiny_converted.parent / "original-f32.gguf")


def test_an_hf_folder_converts_to_pytorch_with_the_tf_releases_tensor_bytes(folders, tiny_converted, tmp_path):
    from gpt2hub.converters.hf import zip_tensors

    def tensors(folder: Path) -> dict[str, tuple]:
        found = {}
        with open(folder / "pytorch_model.bin", "rb") as f:
            for t in zip_tensors(folder / "pytorch_model.bin"):
                f.seek(t.offset)
                found[t.name] = (t.encoding, t.shape, f.read(t.nbytes))
        return found

    r = gpt2hub.convert(folders["bin-sharded"], to="pytorch", out=tmp_path / "out")
    assert tensors(r.path) == tensors(tiny_converted.parent / "original-pytorch")


def test_hparams_file_is_refused_for_an_hf_folder(folders, tmp_path):
    (tmp_path / "hparams.json").write_text("{}")
    one_line_error(invoke("convert", str(folders["base"]), "--to", "safetensors", "--hparams", str(tmp_path / "hparams.json")),
                   "--hparams applies to TF checkpoints", "config.json")


def test_the_output_goes_beside_the_folder_and_names_the_hf_files_as_its_source(folders, tiny_converted, tmp_path):
    import hashlib

    from safetensors import safe_open

    folder = tmp_path / "my-gpt2"
    shutil.copytree(folders["sharded"], folder)
    result = invoke("convert", str(folder), "--to", "safetensors", "--quiet")
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "my-gpt2-safetensors"
    assert f"at {out}" in result.stdout
    with safe_open(out / "model.safetensors", "np") as f:
        meta = f.metadata()
    shards = sorted(folder.glob("model-*.safetensors"))
    assert meta["source_kind"] == "hf" and meta["source_release"] == "my-gpt2"
    assert meta["source_file"] == ",".join(p.name for p in shards)
    assert meta["source_sha256"] == ",".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in shards)
    assert (out / "vocab.json").read_bytes() == (folder / "vocab.json").read_bytes()
    assert invoke("convert", str(folder), "--to", "gguf", "--quiet").exit_code == 0
    assert (tmp_path / "my-gpt2-f32.gguf").is_file()


def test_the_api_names_the_source_kinds_locate_detects():
    from gpt2hub import source_kinds

    assert gpt2hub.SOURCE_KINDS == source_kinds.names() and {"tf", "hf"} <= set(gpt2hub.SOURCE_KINDS)


def test_from_hf_forces_the_kind_and_from_tf_refuses_an_hf_folder(folders, tmp_path):
    assert gpt2hub.convert(folders["base"], to="safetensors", out=tmp_path / "a", from_="hf").source_kind == "hf"
    line = one_line_error(invoke("convert", str(folders["base"]), "--to", "safetensors", "--from", "tf"),
                          "not a checkpoint gpt2hub reads", "it holds config.json with model_type 'gpt2' and files",
                          "accepted with --from tf: a TensorFlow checkpoint folder (*.index)")
    assert "Hugging Face" not in line


def test_the_tied_head_saved_as_wte_is_ignored_as_the_causal_mask_buffers_are(folders, tmp_path, tiny_converted):
    """An older save: lm_head.weight beside wte (tied), and the attn.bias / attn.masked_bias buffers."""
    from safetensors.numpy import save_file

    from gpt2hub.converters.hf import safetensors_tensors

    folder = tmp_path / "old"
    shutil.copytree(folders["base"], folder)
    tensors = {t.name: np.fromfile(t.path, "<f4", t.nbytes // 4, offset=t.offset).reshape(t.shape)
               for t in safetensors_tensors(folder / "model.safetensors")}
    tensors["lm_head.weight"] = tensors["wte.weight"]
    for i in range(N_LAYER):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((N_CTX, N_CTX), np.float32))[None, None]
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    r = gpt2hub.convert(folder, to="safetensors", out=tmp_path / "out")
    assert r.ignored == sorted(["lm_head.weight", *(f"h.{i}.attn.{b}" for i in range(N_LAYER) for b in ("bias", "masked_bias"))])
    assert _safetensors(r.path) == _safetensors(tiny_converted.parent / "original-safetensors")

    tensors["h.1.attn.bias"] = np.ones((1, 1, N_CTX, N_CTX), np.float32)  # not causal
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    one_line_error(invoke("convert", str(folder), "--to", "safetensors", "--out", str(tmp_path / "x")),
                   "h.1.attn.bias is not the causal mask")
    tensors["h.1.attn.bias"] = np.tril(np.ones((N_CTX, N_CTX), np.float32))[None, None]
    tensors["lm_head.weight"] = tensors["wte.weight"] * 2  # a head that is not wte, config tying it
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    one_line_error(invoke("convert", str(folder), "--to", "safetensors", "--out", str(tmp_path / "y")),
                   "lm_head.weight differs from wte", "tie_word_embeddings")


# --- refusals, one line each, nothing written ------------------------------------------------------

def _refused(folder: Path, *needles: str) -> str:
    result = invoke("convert", str(folder), "--to", "safetensors")
    line = one_line_error(result, *needles)
    assert not (folder.parent / f"{folder.name}-safetensors").exists()
    return line


@pytest.mark.parametrize("config, needle", [
    ({"activation_function": "relu"}, "activation_function is 'relu'; gpt2hub converts gelu_new"),
    ({"scale_attn_weights": False}, "scale_attn_weights is False"),
    ({"add_cross_attention": True}, "add_cross_attention is True"),
    # values no GPT-2 has
    ({"layer_norm_epsilon": 0.5}, "layer_norm_epsilon must be a number in (0, 0.1], got '0.5'"),
    ({"n_inner": -3}, "n_inner must be a positive integer, got '-3'"),
    ({"tie_word_embeddings": "no"}, "tie_word_embeddings is 'no', not true or false"),
    ({"n_ctx": 32}, "n_ctx is 32 but n_positions is 64"),
])
def test_a_config_field_gpt2hub_cannot_honour_is_refused_naming_it(folders, tmp_path, config, needle):
    folder = tmp_path / "odd"
    shutil.copytree(folders["base"], folder)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, **config}))
    _refused(folder, "config.json: " + needle)


def test_a_vocab_size_that_is_not_wtes_rows_is_refused_naming_the_shapes(folders, tmp_path):
    folder = tmp_path / "added"
    shutil.copytree(folders["base"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 50258}))
    _refused(folder, "wte.weight has shape [50257, 64], config.json implies [50258, 64]")


def test_a_folder_without_tokenizer_files_and_no_gpt2_vocabulary_anywhere_names_the_three_ways(folders, tmp_path,
                                                                                              monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-tiktoken-cache"))
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(folders["base"], folder)
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()
    _refused(folder, "no-tokenizer: no tokenizer files (vocab.json + merges.txt or tokenizer.json)",
             "pass --vocab DIR", "gpt2hub pull 124M --only tokenizer", "tiktoken's cache")


def test_a_folder_with_half_a_vocabulary_is_refused(folders, tmp_path):
    folder = tmp_path / "half"
    shutil.copytree(folders["base"], folder)
    (folder / "merges.txt").unlink()
    _refused(folder, "vocab.json without merges.txt (and no tokenizer.json)")


def test_a_folder_that_is_neither_names_what_it_looked_like_and_what_is_accepted(tmp_path):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "README.txt").write_text("hello")
    (folder / "weights.bin").write_bytes(b"\0" * 16)
    _refused(folder, "not a checkpoint gpt2hub reads: it holds files README.txt, weights.bin;",
             "accepted: a TensorFlow checkpoint folder (*.index)", "a Hugging Face GPT-2 folder (config.json with model_type gpt2")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _refused(folder, "config.json with model_type 'llama'", "a Hugging Face GPT-2 folder")


class _WritesAFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pytorch_model_bin_whose_pickle_would_run_code_is_refused_having_run_nothing(folders, tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(folders["bin"], folder)
    marker = tmp_path / "pwned"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "payload": _WritesAFile(marker)}, folder / "pytorch_model.bin")
    _refused(folder, "pytorch_model.bin: not a PyTorch state dict", "open is not part of a plain state dict")
    assert not marker.exists()
