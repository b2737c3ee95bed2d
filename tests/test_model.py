"""gpt2hub.model: the reference GPT-2 against TensorFlow running the original graph, its KV cache,
and its loaders for every format gpt2hub writes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gpt2hub import model as M  # noqa: E402
from gpt2hub.errors import ConversionError, Gpt2hubError  # noqa: E402

TOKENS = [464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688, 290, 2688, 27262, 13]


def logits_of(model, tokens=TOKENS, past=None):
    with torch.inference_mode():
        out, present = model(torch.tensor([tokens]), past)
    return out[0].double().numpy(), present


@pytest.fixture(scope="module")
def reference(tiny_release):
    return M.from_checkpoint(tiny_release, dtype=torch.float64)


def test_float64_logits_equal_tensorflow_running_the_original_graph(tiny_release, reference):
    pytest.importorskip("tensorflow")
    from gpt2hub.verification.original_graph import tf_transcription as tf_original_graph

    ours, _ = logits_of(reference)
    theirs = tf_original_graph(tiny_release, TOKENS)
    assert ours.shape == theirs.shape == (len(TOKENS), 50257)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


def test_float32_logits_match_tensorflow_float32_graph(tiny_release):
    pytest.importorskip("tensorflow")
    from gpt2hub.verification.original_graph import tf_transcription as tf_original_graph

    ours, _ = logits_of(M.from_checkpoint(tiny_release, dtype=torch.float32))
    np.testing.assert_allclose(ours, tf_original_graph(tiny_release, TOKENS, dtype="float32"), rtol=0, atol=1e-5)


def test_kv_cache_continuation_equals_one_pass(reference):
    full, _ = logits_of(reference)
    first, past = logits_of(reference, TOKENS[:5])
    second, past = logits_of(reference, TOKENS[5:11], past)  # several queries over a cache: lower-right mask
    third, _ = logits_of(reference, TOKENS[11:12], past)  # one query
    np.testing.assert_allclose(np.concatenate([first, second, third]), full[:12], rtol=0, atol=1e-12)


def test_cache_holds_keys_and_values_per_layer(reference):
    _, past = logits_of(reference, TOKENS[:7])
    cfg = reference.config
    assert len(past) == cfg.n_layer
    assert tuple(past[0][0].shape) == (1, cfg.n_head, 7, cfg.head_dim)


def test_a_later_token_does_not_change_earlier_logits(reference):
    a, _ = logits_of(reference, TOKENS[:6])
    b, _ = logits_of(reference, TOKENS[:5] + [50256])
    np.testing.assert_array_equal(a[:5], b[:5])
    assert np.abs(a[5] - b[5]).max() > 1e-3


def _mapped_file(address: int) -> str | None:
    """The file a process memory address is mapped from (Linux /proc/self/maps), or None."""
    for line in open("/proc/self/maps"):
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) > 5 else None
    return None


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_checkpoint_loads_zero_copy_in_float32(tiny_release):
    from gpt2hub.tfcheckpoint import Checkpoint

    model = M.from_checkpoint(tiny_release)
    assert model.wte.weight.dtype == torch.float32
    np.testing.assert_array_equal(model.wte.weight.numpy(), Checkpoint(tiny_release).tensor("model/wte"))
    data_file = str((tiny_release / "model.ckpt.data-00000-of-00001").resolve())
    assert _mapped_file(model.h[1].mlp.c_proj.weight.data_ptr()) == data_file  # the memory map itself, not a copy


@pytest.mark.parametrize("output", ["original-safetensors", "original-pytorch", "original-f32.gguf"])
def test_lossless_formats_load_the_checkpoint_weights_exactly(tiny_converted, output):
    want = dict(M.from_checkpoint(tiny_converted).named_parameters())
    got = dict(M.load(tiny_converted.parent / output).named_parameters())
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("dtype, atol", [("f16", 1e-3), ("bf16", 1e-2), ("q8_0", 2e-3)])
def test_narrow_gguf_files_dequantize_close_to_the_checkpoint(tiny_converted, dtype, atol):
    want = dict(M.from_checkpoint(tiny_converted).named_parameters())
    got = dict(M.load(tiny_converted.parent / f"original-{dtype}.gguf").named_parameters())
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=0, atol=atol, err_msg=name)
    assert not torch.equal(got["h.0.mlp.c_fc.weight"], want["h.0.mlp.c_fc.weight"])  # really narrowed


def test_config_json_eps_reaches_the_model(tiny_converted, tmp_path):
    folder = shutil.copytree(tiny_converted.parent / "original-safetensors", tmp_path / "st")
    config = json.loads((folder / "config.json").read_text())
    config["layer_norm_epsilon"] = 1e-3
    (folder / "config.json").write_text(json.dumps(config))
    model = M.load(folder)
    assert model.h[0].ln_1.eps == model.ln_f.eps == 1e-3
    good, _ = logits_of(M.load(tiny_converted.parent / "original-safetensors"))
    assert np.abs(logits_of(model)[0] - good).max() > 1e-3


def test_unknown_activation_in_config_json_is_an_error(tiny_converted, tmp_path):
    folder = shutil.copytree(tiny_converted.parent / "original-safetensors", tmp_path / "st")
    config = json.loads((folder / "config.json").read_text())
    config["activation_function"] = "swish"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="activation 'swish'"):
        M.load(folder)


def test_missing_tensor_is_named(tiny_converted, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = shutil.copytree(tiny_converted.parent / "original-safetensors", tmp_path / "st")
    tensors = load_file(folder / "model.safetensors")
    del tensors["h.1.mlp.c_fc.bias"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ConversionError, match=r"1 tensors missing, e.g. h.1.mlp.c_fc.bias"):
        M.load(folder)


def test_folder_of_no_known_format_is_an_error(tmp_path):
    with pytest.raises(ConversionError, match="not a TF checkpoint folder, an HF model folder, a .gguf file, an llm.c folder or an ONNX model folder"):
        M.load(tmp_path)


def test_positions_beyond_n_ctx_are_an_error(reference):
    with pytest.raises(Gpt2hubError, match="exceed the model's context of 64"):
        logits_of(reference, [1] * 65)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_one_line_error():
    with pytest.raises(Gpt2hubError, match=r"^--device cuda: PyTorch .* has no CUDA device; use --device cpu$"):
        M.resolve_device("cuda")


def test_unknown_device_is_a_one_line_error():
    with pytest.raises(Gpt2hubError, match="--device tpu: not a device name"):
        M.resolve_device("tpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_float32_matches_the_cpu_reference(tiny_release, reference):
    model = M.from_checkpoint(tiny_release, device=M.resolve_device("cuda"))
    with torch.inference_mode():
        out = model(torch.tensor([TOKENS], device="cuda"))[0][0].double().cpu().numpy()
    np.testing.assert_allclose(out, logits_of(reference)[0], rtol=0, atol=1e-5)


def _float64_model_after_tensorflow(folder: str) -> list[str]:
    """issue 15's reduced case, in a fresh process: TensorFlow writes a release, then the float64 model loads."""
    from gpt2hub.testing.release import SHAPES, write_release

    release = write_release(folder, **SHAPES["tiny"])  # TensorFlow runs in this process
    model = M.from_checkpoint(release, dtype=torch.float64)
    return [str(model.dtype), str(model.wte.weight.device)]


def test_float64_model_loads_in_a_process_that_ran_tensorflow(tmp_path):
    pytest.importorskip("tensorflow")
    from gpt2hub import isolation

    # torch 2.14's meta-device normal_ imported triton, which crashed (SIGSEGV) beside TensorFlow.
    assert isolation.run(_float64_model_after_tensorflow, (str(tmp_path / "tiny"),)) == ["torch.float64", "cpu"]


def test_loading_runs_no_random_initialisation(tiny_release, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint's module was randomly initialised")

    for name in ("normal_", "uniform_", "kaiming_uniform_", "xavier_uniform_", "trunc_normal_"):
        monkeypatch.setattr(torch.nn.init, name, refuse)
    model = M.from_checkpoint(tiny_release, dtype=torch.float64)
    assert model.wte.weight.dtype == torch.float64
