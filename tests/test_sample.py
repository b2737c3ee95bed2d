"""gpt2hub sample: openai/gpt-2's sampling on gpt2hub.model, greedy parity with transformers and llama.cpp."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from gpt2hub.cli import main  # noqa: E402
from gpt2hub.errors import Gpt2hubError  # noqa: E402

S = importlib.import_module("gpt2hub.sampling")
PROMPT = "The dog was found in a field"
GREEDY = S.Settings(temperature=0)


@pytest.fixture(scope="module")
def sampler(tiny_release):
    return S.Sampler(tiny_release)


def greedy_ours(sampler, context: list[int], n: int) -> list[int]:
    return list(S.generate(sampler.model, context, n, GREEDY))


# --- greedy parity across implementations -----------------------------------------------------------


def test_greedy_tokens_agree_with_transformers_generate(sampler, tiny_converted):
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel.from_pretrained(tiny_converted.parent / "original-safetensors").eval()
    context = sampler.encoding.encode(PROMPT)
    with torch.inference_mode():
        out = model.generate(torch.tensor([context]), do_sample=False, max_new_tokens=24, min_new_tokens=24,
                             pad_token_id=sampler.encoding.eot_token)
    ours = greedy_ours(sampler, context, 24)
    assert len(ours) == 24
    assert out[0, len(context):].tolist() == ours


def test_greedy_tokens_agree_with_llama_cpp(sampler, tiny_converted):
    pytest.importorskip("llama_cpp")
    from gpt2hub.verifying import open_llama

    context = sampler.encoding.encode(PROMPT)
    llm = open_llama(tiny_converted.parent / "original-f32.gguf", n_ctx=64)
    try:
        llm.eval(context)
        theirs = []
        for _ in range(24):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            theirs.append(token)
            llm.eval([token])
    finally:
        llm.close()
    assert greedy_ours(sampler, context, 24) == theirs


# --- sampling ---------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_text(sampler):
    settings = S.Settings(temperature=1.0, top_k=40)
    a = sampler.sample(PROMPT, 20, settings, seed=7)
    b = sampler.sample(PROMPT, 20, settings, seed=7)
    assert a == b and len(a) > 0


def test_another_seed_gives_another_text(sampler):
    settings = S.Settings(temperature=1.0)
    assert sampler.sample(PROMPT, 20, settings, seed=1) != sampler.sample(PROMPT, 20, settings, seed=2)


def test_top_k_1_samples_the_greedy_continuation(sampler):
    context = sampler.encoding.encode(PROMPT)
    sampled = list(S.generate(sampler.model, context, 15, S.Settings(temperature=1.0, top_k=1),
                              torch.Generator().manual_seed(3)))
    assert sampled == greedy_ours(sampler, context, 15)


def test_generation_stops_before_the_stop_token(sampler):
    context = sampler.encoding.encode(PROMPT)
    tokens = greedy_ours(sampler, context, 10)
    stop = tokens[4]
    first = tokens.index(stop)
    assert list(S.generate(sampler.model, context, 10, GREEDY, stop=stop)) == tokens[:first]


def test_unconditional_samples_start_from_endoftext(sampler):
    assert sampler.context(None) == [sampler.encoding.eot_token]


def test_streamed_pieces_make_up_the_returned_text(sampler):
    pieces: list[str] = []
    text = sampler.sample("Hello", 12, S.Settings(top_k=40), seed=5, progress=lambda e: pieces.append(e.text))
    assert "".join(pieces) == text


def test_top_k_keeps_ties_at_the_kth_value():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.5]])
    out = S.top_k_logits(logits, 2)
    assert out.tolist() == [[3.0, S.MASKED, 2.0, 2.0, S.MASKED]]


def test_top_p_excludes_the_token_that_crosses_p_as_openai_does():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    out = S.top_p_logits(logits, 0.85)  # cumulative 0.5, 0.8, 1.0: only the first two are <= 0.85
    assert out[0, 0].item() == S.MASKED and out[0, 1:].tolist() == pytest.approx(logits[0, 1:].tolist())


def test_top_p_keeps_at_least_one_token():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    out = S.top_p_logits(logits, 0.1)
    assert (out > S.MASKED).sum().item() == 1 and out[0, 1] > S.MASKED


# --- the command and its failure paths ----------------------------------------------------------------


def run_cli(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def test_cli_prints_numbered_samples_and_a_seed_repeats_them(tiny_release):
    args = ["sample", str(tiny_release), "--prompt", PROMPT, "--nsamples", "2", "--length", "8", "--seed", "11", "--top-k", "40"]
    first, second = run_cli(*args), run_cli(*args)
    assert first.exit_code == 0, first.output
    assert "SAMPLE 1" in first.output and "SAMPLE 2" in first.output
    assert first.output == second.output


def test_cli_interactive_reads_prompts_until_end_of_input(tiny_release):
    result = run_cli("sample", str(tiny_release), "--interactive", "--length", "4", "--seed", "1", input="Hello\n\nWorld\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("Model prompt >>> ") == 4
    assert result.output.count("SAMPLE 1") == 2 and "Prompt should not be empty!" in result.output


def test_cli_modes_exclude_each_other(tiny_release):
    result = run_cli("sample", str(tiny_release), "--prompt", "x", "--unconditional")
    assert result.exit_code == 1
    assert result.output.strip() == "gpt2hub: error: --prompt, --interactive and --unconditional exclude each other"


def test_length_beyond_the_context_is_a_one_line_error_before_any_output(tiny_release):
    result = run_cli("sample", str(tiny_release), "--length", "100")
    assert result.exit_code == 1
    assert result.output.strip() == "gpt2hub: error: --length 100: must be 1..63 (1 context tokens, n_ctx 64)"


def test_a_release_not_pulled_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path))
    result = run_cli("sample", "355M", "--prompt", "hi")
    assert result.exit_code == 1
    assert result.output.strip() == f"gpt2hub: error: 355M: not pulled (nothing in {tmp_path / '355M' / 'original'}); run: gpt2hub pull 355M"


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_one_line_error(tiny_release):
    result = run_cli("sample", str(tiny_release), "--device", "cuda")
    assert result.exit_code == 1
    assert result.output.strip().startswith("gpt2hub: error: --device cuda: PyTorch")


def test_top_p_outside_0_1_is_an_error():
    with pytest.raises(Gpt2hubError, match=r"--top-p 0.0: must be in \(0, 1\]"):
        S.Settings(top_p=0.0)


def test_negative_temperature_is_an_error():
    with pytest.raises(Gpt2hubError, match="--temperature -1: must be >= 0"):
        S.Settings(temperature=-1)
