"""The Hugging Face GPT-2 folders people hold beyond OpenAI's shape, read by gpt2hub.hf_source: bf16/f16 weights,
transformers 5's tokenizer.json alone, fine-tunes with added tokens, untied heads, n_inner, eps, exact GELU; and
GPT-2's own vocabulary for a folder without tokenizer files (gpt2hub.vocab_fallback).

Every folder is written by transformers' save_pretrained (tokenizers by transformers' GPT2Tokenizer); the reader
must give the hparams the config means and, tensor by tensor, the values transformers itself loads from the folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from gpt2hub import source_tensors
from gpt2hub.converters.hf import reference_names
from gpt2hub.errors import ConversionError
from gpt2hub.hf_source import HfCheckpoint
from gpt2hub.layout import GELU_EXACT, GELU_TANH
from gpt2hub.source_kinds import OpenOptions
from gpt2hub.tfcheckpoint import Checkpoint
from gpt2hub.vocab_fallback import gpt2_vocab
from tests.checks import invoke, one_line_error

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_LAYER, N_EMBD, N_HEAD, N_CTX = 2, 64, 4, 64  # SHAPES["tiny"]
ADDED = ["<|pad|>", "<|sep|>"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """A fresh home and an empty tiktoken cache: no GPT-2 vocabulary anywhere unless a test puts one there."""
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GPT2HUB_MANIFESTS", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    return tmp_path / "home"


def _config(**changes):
    fields = dict(n_layer=N_LAYER, n_embd=N_EMBD, n_head=N_HEAD, n_positions=N_CTX, vocab_size=50257)
    return transformers.GPT2Config(**{**fields, **changes})


def _model(release: Path, **config):
    """GPT2LMHeadModel holding the tiny release's weights (an untied head, if any, stays transformers' own)."""
    model = transformers.GPT2LMHeadModel(_config(**config))
    params = dict(model.named_parameters())
    with Checkpoint(release) as ckpt, torch.no_grad():
        for tf, name in reference_names(N_LAYER).items():
            value = ckpt.tensor(tf)
            value = value[0] if value.ndim == 3 else value  # Conv1D [1, in, out] -> (in, out)
            params["transformer." + name][: value.shape[0]].copy_(torch.from_numpy(np.array(value)))
    return model


def _tokenizer(release: Path):
    """transformers' own GPT-2 tokenizer over the release's encoder.json and vocab.bpe."""
    vocab = json.loads((release / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(m.split(" ")) for m in (release / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:] if m]
    return transformers.GPT2Tokenizer(vocab=vocab, merges=merges)


def _hf_files(release: Path, folder: Path) -> Path:
    """vocab.json + merges.txt, as the Hub's GPT-2 repos carry them."""
    shutil.copyfile(release / "encoder.json", folder / "vocab.json")
    shutil.copyfile(release / "vocab.bpe", folder / "merges.txt")
    return folder


@pytest.fixture(scope="module")
def folders(tiny_release, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-variants")
    made = {}
    for name, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        _model(tiny_release).to(dtype).save_pretrained(root / name)
        made[name] = _hf_files(tiny_release, root / name)
    state = {k: v.to(torch.bfloat16) for k, v in _model(tiny_release).state_dict().items()}
    (root / "bf16-bin").mkdir()
    _config(dtype="bfloat16").save_pretrained(root / "bf16-bin")
    torch.save(state, root / "bf16-bin" / "pytorch_model.bin")
    made["bf16-bin"] = _hf_files(tiny_release, root / "bf16-bin")

    _model(tiny_release).save_pretrained(root / "tokenizer-json")
    _tokenizer(tiny_release).save_pretrained(root / "tokenizer-json")  # transformers 5: tokenizer.json only
    made["tokenizer-json"] = root / "tokenizer-json"

    for name, multiple in (("added", None), ("added-padded", 8)):
        tokenizer, model = _tokenizer(tiny_release), _model(tiny_release)
        tokenizer.add_special_tokens({"pad_token": ADDED[0], "additional_special_tokens": ADDED[1:]})
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=multiple)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        made[name] = root / name

    for name, config in (("untied", {"tie_word_embeddings": False}), ("n_inner", {"n_inner": 3 * N_EMBD}),
                         ("eps", {"layer_norm_epsilon": 1e-6}), ("gelu", {"activation_function": "gelu"}),
                         ("by-layer", {"scale_attn_by_inverse_layer_idx": True, "reorder_and_upcast_attn": True})):
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(_config(**config)).save_pretrained(root / name)
        made[name] = _hf_files(tiny_release, root / name)
    return made


def _held_by_transformers(folder: Path) -> dict[str, np.ndarray]:
    """Every parameter as transformers loads the folder, in float32 (bf16/f16 widen exactly)."""
    model = transformers.GPT2LMHeadModel.from_pretrained(folder)
    return {name: t.detach().float().numpy() for name, t in model.state_dict().items()}


def _read_back(ckpt: HfCheckpoint) -> dict[str, np.ndarray]:
    """Every tensor the reader presents, decoded by gpt2hub.source_tensors, under transformers' names."""
    names = {tf: "transformer." + hf for tf, hf in reference_names(ckpt.hparams.n_layer).items()}
    names["model/lm_head"] = "lm_head.weight"
    return {names[tf]: source_tensors.read(ckpt.data_paths, e) for tf, e in ckpt.entries.items()}


def _assert_reader_holds_what_transformers_holds(folder: Path) -> HfCheckpoint:
    with HfCheckpoint(folder) as ckpt:
        read, held = _read_back(ckpt), _held_by_transformers(folder)
        if ckpt.hparams.tied:
            held.pop("lm_head.weight")  # transformers' tied head is wte itself
        assert read.keys() == held.keys()
        for name, value in held.items():
            assert np.array_equal(read[name].reshape(value.shape), value), name
        return ckpt


def _safetensors_f32(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    with safe_open(path / "model.safetensors", "pt") as f:
        return {n.removeprefix("transformer."): f.get_tensor(n).float().numpy() for n in f.keys()}


# --- bf16 and f16 weights --------------------------------------------------------------------------

@pytest.mark.parametrize("kind, dtype_name", [("bf16", "bfloat16"), ("f16", "float16"), ("bf16-bin", "bfloat16")])
def test_a_narrow_folder_converts_to_f32_holding_the_widened_values_exactly(folders, tmp_path, kind, dtype_name):
    r = gpt2hub.convert(folders[kind], to="safetensors", out=tmp_path / "out")
    assert any(f"weights are {dtype_name}: float32 outputs hold them widened exactly" in n for n in r.notes), r.notes
    source = _held_by_transformers(folders[kind])
    out = _safetensors_f32(r.path)
    assert out.keys() == {k.removeprefix("transformer.") for k in source} - {"lm_head.weight"}
    for name, value in out.items():
        assert np.array_equal(value, source["transformer." + name]), name


def test_a_bf16_folder_converts_to_bf16_bit_for_bit(folders, tmp_path):
    from safetensors import safe_open

    r = gpt2hub.convert(folders["bf16"], to="safetensors", dtype="bf16", out=tmp_path / "out")
    with safe_open(folders["bf16"] / "model.safetensors", "pt") as src, safe_open(r.path / "model.safetensors", "pt") as out:
        for name in out.keys():
            a, b = src.get_tensor("transformer." + name), out.get_tensor(name)
            assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a.view(torch.int16), b.view(torch.int16)), name


def test_narrow_tensors_are_presented_in_their_own_encoding_not_copied(folders):
    with HfCheckpoint(folders["f16"]) as ckpt:
        assert {e.encoding for e in ckpt.entries.values()} == {"F16"}
        assert not any(e.transposed for e in ckpt.entries.values())
    _assert_reader_holds_what_transformers_holds(folders["bf16-bin"])


# --- tokenizer.json, added tokens ---------------------------------------------------------------------

def test_a_transformers_5_folder_with_only_tokenizer_json_converts_with_the_original_vocabulary(folders, tiny_release,
                                                                                              tmp_path, home):
    folder = folders["tokenizer-json"]
    assert not (folder / "vocab.json").exists() and (folder / "tokenizer.json").is_file()
    before = sorted(p.name for p in folder.iterdir())
    r = gpt2hub.convert(folder, to="safetensors", out=tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == before  # the derived files went to the vocabulary cache
    assert json.loads((r.path / "vocab.json").read_text()) == json.loads((tiny_release / "encoder.json").read_text())
    merges = lambda p: [m for m in p.read_text(encoding="utf-8").split("\n")[1:] if m]  # noqa: E731
    assert merges(r.path / "merges.txt") == merges(tiny_release / "vocab.bpe")
    with HfCheckpoint(folder) as ckpt:
        assert ckpt.vocab.added == () and ckpt.vocab.n_tokens == 50257
        assert ckpt.vocab.encoder_json.is_relative_to(home / ".cache" / "vocab")


def test_a_home_that_cannot_keep_the_derived_files_only_costs_a_temporary_folder(folders, home):
    home.mkdir(parents=True)
    (home / ".cache").write_text("not a folder")  # every write under the home's cache fails
    with HfCheckpoint(folders["tokenizer-json"]) as ckpt:
        assert ckpt.vocab.n_tokens == 50257 and ckpt.vocab.encoder_json.is_file()
        assert not ckpt.vocab.encoder_json.is_relative_to(home)


def test_a_fine_tune_with_two_added_tokens_lists_them(folders):
    ckpt = _assert_reader_holds_what_transformers_holds(folders["added"])
    assert ckpt.vocab.added == ((50257, ADDED[0], True), (50258, ADDED[1], True))
    assert ckpt.vocab.n_tokens == ckpt.hparams.n_vocab == 50259
    assert ckpt.vocab.all_tokens[-2:] == ADDED and len(ckpt.vocab.tokens) == 50257
    assert any("2 added tokens (ids 50257..50258): <|pad|>, <|sep|>" in n for n in ckpt.notes)


def test_added_tokens_are_read_beside_vocab_json_from_each_file_transformers_kept_them_in(folders, tiny_release, tmp_path):
    folder = Path(shutil.copytree(folders["added"], tmp_path / "both"))
    _hf_files(tiny_release, folder)
    with HfCheckpoint(folder) as ckpt:
        assert ckpt.vocab.encoder_json == folder / "vocab.json"
        assert ckpt.vocab.added == ((50257, ADDED[0], True), (50258, ADDED[1], True))
    (folder / "tokenizer.json").unlink()
    decoder = {"50256": {"content": "<|endoftext|>", "special": True}, "50257": {"content": ADDED[0], "special": True},
               "50258": {"content": ADDED[1], "special": False}}  # transformers 4's tokenizer_config.json
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    with HfCheckpoint(folder) as ckpt:
        assert ckpt.vocab.added == ((50257, ADDED[0], True), (50258, ADDED[1], False))
    (folder / "tokenizer_config.json").unlink()
    (folder / "added_tokens.json").write_text(json.dumps({ADDED[1]: 50258, ADDED[0]: 50257}))  # older transformers
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": ADDED[0]}}))
    with HfCheckpoint(folder) as ckpt:
        assert ckpt.vocab.added == ((50257, ADDED[0], True), (50258, ADDED[1], False))
    (folder / "added_tokens.json").write_text(json.dumps({ADDED[0]: 50257, ADDED[1]: 50260}))
    with pytest.raises(ConversionError, match=r"added_tokens.json: added token ids \[50257, 50260\]"):
        HfCheckpoint(folder)


def test_embedding_rows_past_the_tokens_are_kept_and_said(folders):
    ckpt = _assert_reader_holds_what_transformers_holds(folders["added-padded"])
    assert ckpt.hparams.n_vocab == 50264 and ckpt.vocab.n_tokens == 50259
    assert any("wte has 50,264 rows for 50,259 tokens" in n for n in ckpt.notes), ckpt.notes


def test_more_tokens_than_embedding_rows_is_refused(folders, tmp_path):
    folder = Path(shutil.copytree(folders["tokenizer-json"], tmp_path / "unresized"))
    data = json.loads((folder / "tokenizer.json").read_text())
    data["added_tokens"].append({"id": 50257, "content": "<|pad|>", "special": True})
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ConversionError, match=r"50,258 tokens but wte only 50,257 rows"):
        HfCheckpoint(folder)


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "not GPT-2's"),
    (lambda d: d["model"].update(type="WordPiece"), "model type is 'WordPiece'"),
    (lambda d: d["model"]["merges"].__setitem__(0, ["a", "b", "c"]), "merge ['a', 'b', 'c'] is not a pair"),
    (lambda d: d["model"]["vocab"].pop("<|endoftext|>"), "tokenizer.json: model.vocab/merges:"),
])
def test_a_tokenizer_json_that_is_not_gpt2s_byte_level_bpe_is_refused_in_one_line(folders, tmp_path, change, needle):
    folder = Path(shutil.copytree(folders["tokenizer-json"], tmp_path / "odd"))
    data = json.loads((folder / "tokenizer.json").read_text())
    change(data)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ConversionError, match="tokenizer.json") as e:
        HfCheckpoint(folder)
    assert needle in str(e.value) and "\n" not in str(e.value)


# --- config fields honoured ----------------------------------------------------------------------

@pytest.mark.parametrize("kind, variant", [
    ("untied", {"tied": False}),
    ("n_inner", {"n_inner": 3 * N_EMBD}),
    ("eps", {"eps": 1e-6}),
    ("gelu", {"activation": GELU_EXACT}),
    ("by-layer", {"attn_scale_by_layer": True}),
])
def test_a_config_field_is_read_into_hparams_and_every_tensor_equals_transformers(folders, kind, variant):
    ckpt = _assert_reader_holds_what_transformers_holds(folders[kind])
    assert ckpt.hparams.variant() == variant
    assert ckpt.hparams.to_dict() == {"n_vocab": 50257, "n_ctx": N_CTX, "n_embd": N_EMBD, "n_head": N_HEAD,
                                      "n_layer": N_LAYER, **variant}


def test_an_untied_head_is_presented_as_model_lm_head(folders):
    with HfCheckpoint(folders["untied"]) as ckpt:
        head = ckpt.entries["model/lm_head"]
        assert head.shape == (50257, N_EMBD) and not head.transposed and ckpt.ignored == []


def test_reorder_and_upcast_attn_is_accepted_and_said(folders):
    with HfCheckpoint(folders["by-layer"]) as ckpt:
        assert any("reorder_and_upcast_attn" in n for n in ckpt.notes)


def test_gelu_pytorch_tanh_and_an_explicit_4x_n_inner_are_gpt2_itself(folders, tmp_path):
    folder = Path(shutil.copytree(folders["eps"], tmp_path / "plain"))
    config = json.loads((folder / "config.json").read_text())
    config.update(activation_function="gelu_pytorch_tanh", n_inner=4 * N_EMBD, layer_norm_epsilon=1e-5)
    (folder / "config.json").write_text(json.dumps(config))
    with HfCheckpoint(folder) as ckpt:
        assert ckpt.hparams.variant() == {} and ckpt.hparams.activation == GELU_TANH


@pytest.mark.parametrize("config, needle", [
    ({"activation_function": "relu"}, "config.json: activation_function is 'relu'; gpt2hub converts gelu_new"),
    ({"scale_attn_weights": False}, "config.json: scale_attn_weights is False"),
])
def test_a_saved_config_gpt2hub_cannot_express_is_refused_in_one_line(tiny_release, tmp_path, config, needle):
    folder = tmp_path / "refused"
    _model(tiny_release, **config).save_pretrained(folder)
    _hf_files(tiny_release, folder)
    one_line_error(invoke("convert", str(folder), "--to", "safetensors"), needle)
    assert not (tmp_path / "refused-safetensors").exists()


# --- GPT-2's own vocabulary for a folder without one -------------------------------------------------

@pytest.fixture
def bare(folders, tmp_path) -> Path:
    """An HF folder of GPT-2's 50257 rows with no tokenizer files."""
    folder = Path(shutil.copytree(folders["bf16"], tmp_path / "bare"))
    for name in ("vocab.json", "merges.txt"):
        (folder / name).unlink()
    return folder


def _tokens(folder: Path) -> list[str]:
    data = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    return sorted(data, key=data.__getitem__)


def test_the_vocabulary_comes_from_vocab_dir(bare, real_vocab_folder, tmp_path):
    r = gpt2hub.convert(bare, to="safetensors", out=tmp_path / "out", vocab=real_vocab_folder)
    assert any(f"GPT-2's vocabulary from --vocab {real_vocab_folder}" in n for n in r.notes), r.notes
    assert json.loads((r.path / "vocab.json").read_text()) == json.loads((real_vocab_folder / "encoder.json").read_text())


def test_the_vocabulary_comes_from_a_pulled_openai_release(bare, real_vocab_folder, home):
    original = home / "124M" / "original"
    original.mkdir(parents=True)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(real_vocab_folder / name, original / name)
    with HfCheckpoint(bare) as ckpt:
        assert ckpt.vocab.encoder_json == original / "encoder.json" and ckpt.vocab.tokens == _tokens(real_vocab_folder)
        assert any("GPT-2's vocabulary from the pulled release 124M" in n for n in ckpt.notes)


def test_a_pulled_release_whose_files_are_not_openais_is_not_taken(bare, real_vocab_folder, home):
    original = home / "124M" / "original"
    original.mkdir(parents=True)
    shutil.copyfile(real_vocab_folder / "vocab.bpe", original / "vocab.bpe")
    encoder = json.loads((real_vocab_folder / "encoder.json").read_text())
    (original / "encoder.json").write_text(json.dumps(encoder, indent=1))  # the same tokens, not OpenAI's bytes
    with pytest.raises(ConversionError, match="no tokenizer files"):
        HfCheckpoint(bare)


def test_the_vocabulary_comes_from_tiktokens_cache(bare, real_vocab_folder, tmp_path, home):
    gpt2hub.tiktoken(real_vocab_folder)  # what `gpt2hub tiktoken DIR` leaves where tiktoken caches its gpt2 files
    vocab, said = gpt2_vocab(OpenOptions(), "unused")
    assert said == f"GPT-2's vocabulary from tiktoken's cache ({tmp_path / 'tiktoken-cache'})"
    assert vocab.tokens == _tokens(real_vocab_folder) and vocab.encoder_json.is_relative_to(home / ".cache" / "vocab")
    with HfCheckpoint(bare) as ckpt:
        assert ckpt.vocab.key == vocab.key


def test_no_vocabulary_anywhere_is_one_line_naming_the_three_ways(bare):
    result = invoke("convert", str(bare), "--to", "safetensors")
    one_line_error(result, "bare: no tokenizer files", "--vocab DIR", "gpt2hub pull 124M --only tokenizer", "tiktoken's cache")
    assert not (bare.parent / "bare-safetensors").exists()


def test_a_vocab_dir_that_is_not_gpt2s_is_refused(bare, tmp_path):
    from gpt2hub.testing.vocab import generated_vocab

    small = tmp_path / "small"
    small.mkdir()
    encoder, merges = generated_vocab()
    (small / "encoder.json").write_text(encoder)
    (small / "vocab.bpe").write_text(merges)
    with pytest.raises(ConversionError, match=r"--vocab .*small: .* tokens .*not GPT-2's 50,257"):
        gpt2_vocab(OpenOptions(vocab=small), "x")
    with pytest.raises(ConversionError, match="no encoder.json and vocab.bpe"):
        gpt2_vocab(OpenOptions(vocab=tmp_path), "x")


def test_a_folder_without_tokenizer_files_and_more_rows_than_gpt2_is_refused(folders, real_vocab_folder, tmp_path):
    folder = Path(shutil.copytree(folders["added"], tmp_path / "bare-added"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ConversionError, match="50,259 embedding rows are not GPT-2's 50,257 tokens"):
        HfCheckpoint(folder, OpenOptions(vocab=real_vocab_folder))
