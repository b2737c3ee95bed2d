"""Every HParams variant field (n_inner, eps, exact GELU, an untied head, attention scaled by layer) and added
tokens: carried into each target that can express them, refused in one line naming the field where a target
cannot (nothing written), approximated only with --allow-approximate-activation, and then labelled by verify.

Sources are tiny Hugging Face folders written by transformers' save_pretrained (random weights, a generated
byte-level BPE vocabulary plus added tokens); each output is loaded by its real consumer (transformers,
onnxruntime, llama.cpp) and compared with transformers on the source and with gpt2hub's float64 reference,
within the bound verify uses (SAFETY x the noise of the consumer's arithmetic measured on the same model).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from gpt2hub import converters, source_tensors
from gpt2hub.errors import ConversionError
from gpt2hub.layout import GELU_EXACT, GELU_TANH, HParams
from gpt2hub.testing.release import write_release
from gpt2hub.testing.vocab import generated_vocab
from gpt2hub.verification.references import F32, F64, forward
from gpt2hub.verification.tolerances import SAFETY, arithmetic_of
from tests.checks import invoke, one_line, one_line_error

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_LAYER, N_EMBD, N_HEAD, N_CTX, BASE = 2, 64, 4, 32, 300
IDS = [1, 5, 9, 200, 17, 33, 2, 250, BASE, BASE + 1]  # the two added tokens too
ADDED = {BASE: ("<|pad|>", True), BASE + 1: ("hello world", False)}
EVERY_FIELD = dict(n_inner=3 * N_EMBD, layer_norm_epsilon=1e-6, activation_function="gelu", tie_word_embeddings=False,
                   scale_attn_by_inverse_layer_idx=True)
GGUF_FIELDS = dict(n_inner=3 * N_EMBD, layer_norm_epsilon=1e-6, activation_function="gelu_new", tie_word_embeddings=False)


def _hf_folder(folder: Path, vocab_rows: int, **fields) -> Path:
    """save_pretrained of a random GPT2LMHeadModel with `fields`, GPT-2-style tokenizer files and two added tokens."""
    encoder, bpe = generated_vocab(BASE)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=N_LAYER, n_embd=N_EMBD, n_head=N_HEAD, n_positions=N_CTX,
                                     vocab_size=vocab_rows, bos_token_id=BASE - 1, eos_token_id=BASE - 1, **fields)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(folder)
    (folder / "vocab.json").write_text(encoder)
    (folder / "merges.txt").write_text(bpe)
    decoder = {str(i): {"content": c, "special": s} for i, (c, s) in ADDED.items()}
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    return folder


def _transformers_logits(folder: Path) -> np.ndarray:
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        return model(torch.tensor([IDS])).logits[0].double().numpy()


def _reference(folder: Path, h: HParams | None = None, arithmetic=F32) -> tuple[np.ndarray, float]:
    """gpt2hub's float64 reference of an HF folder as convert reads it (every field of its hparams, or of `h`), and
    the bound verify allows a consumer computing in `arithmetic`: SAFETY x that arithmetic's measured noise."""
    from gpt2hub.hf_source import HfCheckpoint

    ckpt = HfCheckpoint(folder)
    f64, other = forward(lambda n: source_tensors.read(ckpt.data_paths, ckpt.entries[n]), h or ckpt.hparams, IDS,
                         [F64, arithmetic])
    return f64, SAFETY * float(np.abs(other - f64).max())


@pytest.fixture(scope="module")
def every_field(tmp_path_factory) -> Path:
    """An HF folder with every variant field set and two added tokens; its conversions beside it (DIR-<format>)."""
    folder = _hf_folder(tmp_path_factory.mktemp("every") / "hf", BASE + 2, **EVERY_FIELD)
    for fmt in ("safetensors", "pytorch", "onnx"):
        gpt2hub.convert(folder, to=fmt)
    return folder


@pytest.fixture(scope="module")
def gguf_fields(tmp_path_factory) -> Path:
    """n_inner, eps, an untied head, added tokens and two embedding rows past the vocabulary: all GGUF can hold."""
    folder = _hf_folder(tmp_path_factory.mktemp("gguf") / "hf", BASE + 4, **GGUF_FIELDS)
    gpt2hub.convert(folder, to="gguf")
    gpt2hub.convert(folder, to="gguf", dtype="f16")
    return folder


# --- what each format can hold, as data --------------------------------------------------------------------------

BASE_H = HParams(n_vocab=BASE, n_ctx=N_CTX, n_embd=N_EMBD, n_head=N_HEAD, n_layer=N_LAYER)
FIELDS = {"n_inner": 3 * N_EMBD, "eps": 1e-6, "activation": GELU_EXACT, "tied": False, "attn_scale_by_layer": True}
# (format, field) refused; * = converted anyway with --allow-approximate-activation
REFUSED = {("gguf", "activation"): "*", ("gguf", "attn_scale_by_layer"): "",
           **{("llmc", f): "*" if f == "activation" else "" for f in FIELDS},
           **{("tf", f): "" for f in FIELDS}}


@pytest.mark.parametrize("fmt", ["safetensors", "pytorch", "gguf", "llmc", "onnx", "tf"])
@pytest.mark.parametrize("field", list(FIELDS))
def test_each_format_holds_or_refuses_each_field_naming_it(fmt, field):
    h = dataclasses.replace(BASE_H, **{field: FIELDS[field]})
    form = converters.get(fmt)
    if (fmt, field) not in REFUSED:
        assert converters.check_holds(form, h, None) == []
        return
    with pytest.raises(ConversionError) as e:
        converters.check_holds(form, h, None)
    assert one_line(e).startswith(f"--to {fmt} cannot hold {field} {FIELDS[field]} (")
    approximate = REFUSED[(fmt, field)] == "*"
    assert ("pass --allow-approximate-activation" in str(e.value)) == approximate
    if approximate:
        assert converters.check_holds(form, h, None, allow_approximate=True) == [field]
    else:
        with pytest.raises(ConversionError):
            converters.check_holds(form, h, None, allow_approximate=True)


def test_added_tokens_are_refused_where_the_vocabulary_file_has_no_place_for_them(gguf_fields):
    from gpt2hub.hf_source import HfCheckpoint

    ckpt = HfCheckpoint(gguf_fields)
    assert [(i, c, s) for i, c, s in ckpt.vocab.added] == [(i, c, s) for i, (c, s) in ADDED.items()]
    for fmt in ("llmc", "tf"):
        with pytest.raises(ConversionError) as e:
            converters.check_holds(converters.get(fmt), BASE_H, ckpt.vocab)
        assert one_line(e).startswith(f"--to {fmt} cannot hold 2 added tokens ('<|pad|>', ...) (")
    for fmt in ("safetensors", "pytorch", "gguf", "onnx"):
        assert converters.check_holds(converters.get(fmt), BASE_H, ckpt.vocab) == []


# --- refusals through convert and the CLI: one line, nothing written ----------------------------------------------

@pytest.mark.parametrize("fmt, said", [
    ("gguf", "--to gguf cannot hold activation gelu_exact (llama.cpp's gpt2 graph computes GPT-2's tanh GELU); "
             "pass --allow-approximate-activation to convert anyway"),
    ("llmc", "--to llmc cannot hold n_inner 192 (llm.c assumes 4 * n_embd)"),
    ("tf", "--to tf cannot hold n_inner 192 (openai/gpt-2's src/model.py assumes 4 * n_embd)"),
])
def test_convert_refuses_a_field_the_target_cannot_hold_before_writing(every_field, fmt, said):
    before = sorted(p.name for p in every_field.parent.iterdir())
    result = invoke("convert", str(every_field), "--to", fmt)
    assert one_line_error(result) == f"gpt2hub: error: {said}"
    assert sorted(p.name for p in every_field.parent.iterdir()) == before  # no output, no temporary


def test_the_flag_approximates_the_activation_only(every_field):
    with pytest.raises(ConversionError) as e:  # per-layer attention scaling has no approximation in llama.cpp
        gpt2hub.convert(every_field, to="gguf", allow_approximate_activation=True)
    assert one_line(e) == ("--to gguf cannot hold attn_scale_by_layer True (llama.cpp's gpt2 graph has no per-layer "
                           "attention scaling)")
    assert not list(every_field.parent.glob("*.gguf"))


# --- targets that hold every field ------------------------------------------------------------------------------

def test_config_json_carries_every_field(every_field):
    for fmt in ("safetensors", "pytorch", "onnx"):
        config = json.loads((every_field.parent / f"hf-{fmt}" / "config.json").read_text())
        assert {k: config[k] for k in EVERY_FIELD} == EVERY_FIELD, fmt
        assert config["vocab_size"] == BASE + 2
    from gpt2hub.converters.hf import safetensors_tensors

    head = next(t for t in safetensors_tensors(every_field.parent / "hf-safetensors" / "model.safetensors")
                if t.name == "lm_head.weight")
    assert head.shape == (BASE + 2, N_EMBD)


@pytest.mark.parametrize("fmt", ["safetensors", "pytorch"])
def test_transformers_computes_the_source_from_each_hf_output(every_field, fmt):
    f64, bound = _reference(every_field)
    source = _transformers_logits(every_field)
    got = _transformers_logits(every_field.parent / f"hf-{fmt}")
    assert np.abs(source - f64).max() <= bound  # the reference follows every field, as transformers does
    assert np.abs(got - f64).max() <= bound
    assert np.array_equal(got, source)  # the same float32 weights and config: the same arithmetic


def test_onnxruntime_computes_every_field(every_field):
    from gpt2hub.verification.consumers import onnxruntime_logits

    f64, bound = _reference(every_field)
    got = onnxruntime_logits(every_field.parent / "hf-onnx", IDS)
    assert np.abs(got - f64).max() <= bound
    assert np.abs(got - _transformers_logits(every_field)).max() <= bound


def test_gpt2hub_model_follows_every_field_from_the_source_and_each_output(every_field):
    from gpt2hub import model
    from gpt2hub.verification.consumers import gpt2hub_logits

    f64, bound = _reference(every_field)
    for path in (every_field, *(every_field.parent / f"hf-{f}" for f in ("safetensors", "pytorch", "onnx"))):
        full, cached = gpt2hub_logits(path, IDS, "cpu")
        assert np.abs(full - f64).max() <= bound and np.abs(cached - f64).max() <= bound, path
    assert model.load(every_field).config.hparams() == model.load(every_field.parent / "hf-onnx").config.hparams()


def test_sampling_follows_every_field(every_field):
    """gpt2hub's greedy continuation is transformers' greedy generate on the same folder."""
    from gpt2hub import model, sampling

    ours = list(sampling.generate(model.from_source(every_field, "hf"), IDS[:4], 12, sampling.Settings(temperature=0)))
    theirs = transformers.GPT2LMHeadModel.from_pretrained(every_field).generate(
        torch.tensor([IDS[:4]]), max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 4:].tolist()
    assert ours == theirs


def test_added_tokens_reach_the_hf_tokenizer_files(every_field):
    out = every_field.parent / "hf-safetensors"
    added = json.loads((out / "tokenizer.json").read_text())["added_tokens"]
    assert [(t["id"], t["content"], t["special"]) for t in added] == \
        [(BASE - 1, "<|endoftext|>", True)] + [(i, c, s) for i, (c, s) in ADDED.items()]
    decoder = json.loads((out / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {int(i): (t["content"], t["special"]) for i, t in decoder.items()} == {BASE - 1: ("<|endoftext|>", True), **ADDED}
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == BASE + 2
    ids = tokenizer.encode("say hello world<|pad|>")
    assert ids[-2:] == [BASE + 1, BASE]


def test_read_back_declares_every_field_and_verify_finds_no_problem(every_field):
    from gpt2hub.hf_source import HfCheckpoint
    from gpt2hub.verification.outputs import config_problems

    ckpt = HfCheckpoint(every_field)
    for fmt in ("safetensors", "pytorch", "onnx"):
        stored = converters.get(fmt).read_stored(every_field.parent / f"hf-{fmt}", ckpt.hparams, ckpt.vocab)
        assert config_problems(stored, ckpt.hparams) == [] and stored.problems == [], fmt
        assert stored.expected["lm_head.weight"].source == "model/lm_head"
        other = dataclasses.replace(ckpt.hparams, eps=1e-5, attn_scale_by_layer=False)  # a release that differs
        assert config_problems(stored, other) == ["eps is 1e-06, the release has 1e-05",
                                                  "attn_scale_by_layer is True, the release has False"], fmt


# --- GGUF: n_inner, eps, untied head, added tokens, padding ---------------------------------------------------

def test_gguf_carries_n_inner_eps_the_head_and_the_vocabulary(gguf_fields):
    import gguf

    from gpt2hub.ggufheader import read_header

    header = read_header(gguf_fields.parent / "hf-f32.gguf")
    f = header.fields
    assert f["gpt2.feed_forward_length"] == 3 * N_EMBD and np.float32(f["gpt2.attention.layer_norm_epsilon"]) == np.float32(1e-6)
    assert "output.weight" in {t.name for t in header.tensors}
    T = gguf.TokenType
    assert f["tokenizer.ggml.tokens"][BASE - 1:] == ["<|endoftext|>", "<|pad|>", "hello world", f"[PAD{BASE + 2}]",
                                                     f"[PAD{BASE + 3}]"]
    assert f["tokenizer.ggml.token_type"][BASE - 1:] == [T.CONTROL, T.CONTROL, T.USER_DEFINED, T.UNUSED, T.UNUSED]
    assert "gpt2hub.approximated" not in f


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_llama_cpp_computes_the_gguf_exactly_as_the_source(gguf_fields, dtype):
    from gpt2hub.verification.consumers import llama_logits

    path = gguf_fields.parent / f"hf-{dtype}.gguf"
    if dtype == "f32":
        f64, bound = _reference(gguf_fields, arithmetic=arithmetic_of("llama.cpp", dtype))
    else:  # the weights as the file holds them (f16 rounded), in llama.cpp's arithmetic
        from gpt2hub.hf_source import HfCheckpoint
        from gpt2hub.verification.weights import held_weights

        ckpt = HfCheckpoint(gguf_fields)
        stored = converters.get("gguf").read_stored(path, ckpt.hparams, ckpt.vocab)
        _, weights = held_weights(lambda n: source_tensors.read(ckpt.data_paths, ckpt.entries[n]), stored, None)
        f64, other = forward(weights, ckpt.hparams, IDS, [F64, arithmetic_of("llama.cpp", dtype)])
        bound = SAFETY * float(np.abs(other - f64).max())
    got = llama_logits(path, IDS)
    assert np.abs(got - f64).max() <= bound


def test_gguf_reads_back_every_field_and_proves_the_untied_head(gguf_fields):
    from gpt2hub.hf_source import HfCheckpoint
    from gpt2hub.verification.outputs import config_problems

    ckpt = HfCheckpoint(gguf_fields)
    stored = converters.get("gguf").read_stored(gguf_fields.parent / "hf-f32.gguf", ckpt.hparams, ckpt.vocab)
    assert config_problems(stored, ckpt.hparams) == [] and stored.problems == [] and stored.approximated == []
    assert stored.expected["output.weight"].source == "model/lm_head"
    weights = converters.get("gguf").read_weights(gguf_fields.parent / "hf-f32.gguf")
    assert weights.config["n_inner"] == 3 * N_EMBD and weights.config["tied"] is False
    assert np.array_equal(np.asarray(weights.tensors["lm_head.weight"]), source_tensors.read(ckpt.data_paths,
                                                                                            ckpt.entries["model/lm_head"]))


def test_llama_cpp_tokenizes_an_added_token_whole(gguf_fields):
    from gpt2hub.llamacpp import llama_tokenize

    assert llama_tokenize(gguf_fields.parent / "hf-f32.gguf", "say hello world")[-1] == BASE + 1


# --- --allow-approximate-activation: converted, recorded, and verify shows the gap ------------------------------------

@pytest.fixture(scope="module")
def exact_gelu_release(tmp_path_factory) -> Path:
    """A release in OpenAI's layout whose hparams.json says its MLP computes the exact erf GELU (as nanoGPT's)."""
    release = write_release(tmp_path_factory.mktemp("exact") / "exact", n_layer=N_LAYER, n_embd=N_EMBD,
                            n_head=N_HEAD, n_ctx=N_CTX, vocab="generated", seed=1)
    hparams = json.loads((release / "hparams.json").read_text())
    (release / "hparams.json").write_text(json.dumps({**hparams, "activation": GELU_EXACT}))
    return release


def test_approximate_activation_needs_the_flag(exact_gelu_release):
    result = invoke("convert", str(exact_gelu_release), "--to", "llmc")
    one_line_error(result, "--to llmc cannot hold activation gelu_exact (llm.c computes GPT-2's tanh GELU); "
                           "pass --allow-approximate-activation")
    assert not (exact_gelu_release.parent / "exact-llmc").exists()


def test_verify_labels_an_approximated_output_and_shows_its_gap(exact_gelu_release):
    from gpt2hub.ggufheader import read_header

    result = invoke("convert", str(exact_gelu_release), "--to", "gguf", "--allow-approximate-activation")
    assert result.exit_code == 0, result.output
    assert "approximated: activation gelu_exact computed as GPT-2's gelu_tanh" in result.stderr
    gpt2hub.convert(exact_gelu_release, to="llmc", allow_approximate_activation=True)
    gguf_file = exact_gelu_release.parent / "exact-f32.gguf"
    assert read_header(gguf_file).fields["gpt2hub.approximated"] == ["activation gelu_exact"]

    report = gpt2hub.verify(exact_gelu_release, formats=["gguf", "llmc"], tokens=16)
    assert report.passed, report.to_text()
    assert {r.format: r.status for r in report.rows} == {"gguf": "APPROX", "llmc": "APPROX"}
    for row in report.rows:
        assert row.approximate and row.gap_max_abs > 0 and "approximate: activation gelu_exact as gelu_tanh; gap " \
            f"to the exact model max|Δ| {row.gap_max_abs:.2e}" in row.note
    assert all(f.passed for f in report.files)
    assert "APPROX" in report.to_text()
    # The gap is the model's, not noise: the tanh model's reference is far closer to what the consumer computed.
    llmc = next(r for r in report.rows if r.format == "llmc")
    assert llmc.max_abs < llmc.gap_max_abs / 10


def test_verify_fails_an_output_whose_activation_differs_without_the_record(exact_gelu_release, tmp_path):
    """An llm.c folder of the exact-GELU release that does not say it approximates: its metadata fails."""
    import shutil

    folder = exact_gelu_release.parent / "exact-llmc"
    if not folder.exists():
        gpt2hub.convert(exact_gelu_release, to="llmc", allow_approximate_activation=True)
    copy = shutil.copytree(exact_gelu_release, tmp_path / "exact")
    silent = shutil.copytree(folder, tmp_path / "exact-llmc")
    (silent / "gpt2hub-approximated.txt").unlink()
    report = gpt2hub.verify(copy, formats=["llmc"], tokens=8)
    metadata = next(f for f in report.files if f.what == "metadata")
    assert not metadata.passed and "activation is gelu_tanh, the release has gelu_exact" in metadata.detail
    assert not report.passed
