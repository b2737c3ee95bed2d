"""`gpt2hub convert ckpt.pt`: a nanoGPT checkpoint, written by torch.save of train.py's dict, as a source.

The checkpoints come from gpt2hub.testing.nanogpt: a module with nanoGPT's layout (nn.Linear (out, in), exact GELU,
tied head, optional biases) trained one AdamW step and saved as train.py saves it. Each output is compared tensor by
tensor with the module's own state dict, and transformers' logits with the module's float64 forward.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

import gpt2hub
from gpt2hub.errors import ConversionError
from gpt2hub.testing.release import REAL_FIXTURES
from tests.checks import invoke, one_line, one_line_error

torch = pytest.importorskip("torch")
nanogpt = pytest.importorskip("gpt2hub.testing.nanogpt")

GPT2_VOCAB = 50257
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # nn.Linear
IDS = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 50256, 0, 50255, 1, 2, 3]
# nanoGPT checkpoints: (GPTConfig changes, write_ckpt options)
VARIANTS = {
    "compiled-nobias-padded": (dict(bias=False, vocab_size=50304), dict(compiled=True)),
    "bias-maskbuffers-50257": (dict(bias=True, vocab_size=50257), dict(mask_buffer=True)),
    "untied-nobias-padded": (dict(bias=False, vocab_size=50304), dict(tied=False)),
}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GPT2HUB_MANIFESTS", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def vocab() -> Path:
    if REAL_FIXTURES is None:  # in CI, tests.ci stops the session before this
        pytest.skip("../shared/fixtures/openai-124M-real absent: nanoGPT checkpoints need GPT-2's vocabulary")
    return REAL_FIXTURES


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, tuple[Path, "nanogpt.GPT"]]:
    """Each variant's ckpt.pt (in a folder of its own, as train.py's out_dir) and the module it saved."""
    found = {}
    for name, (config, options) in VARIANTS.items():
        folder = tmp_path_factory.mktemp(name)
        model = nanogpt.write_ckpt(folder / "ckpt.pt", nanogpt.GPTConfig(block_size=32, **config), **options)
        found[name] = (folder / "ckpt.pt", model)
    return found


def _expected(model: "nanogpt.GPT") -> dict[str, np.ndarray]:
    """What an HF-layout output must hold, from nanoGPT's own state dict: Conv1D (in, out) weights, GPT-2's 50257
    rows of wte, zeros for the biases of a bias=False model, lm_head only when untied."""
    state = {k: v.detach().numpy() for k, v in model.state_dict().items() if not k.endswith(".attn.bias")}
    tied = model.lm_head.weight is model.transformer.wte.weight
    out = {}
    for key, value in state.items():
        name = key.removeprefix("transformer.")
        if name == "lm_head.weight" and tied:
            continue
        if name.endswith(TRANSPOSED):
            value = value.T
        if name in ("wte.weight", "lm_head.weight"):
            value = value[:GPT2_VOCAB]
        out[name] = np.ascontiguousarray(value)
    if not model.config.bias:
        for key, value in list(out.items()):
            if key.endswith((".weight",)) and not key.startswith(("wte", "wpe", "lm_head")):
                bias = key.removesuffix(".weight") + ".bias"
                out[bias] = np.zeros(value.shape[-1] if key.endswith(TRANSPOSED) else value.shape[0], np.float32)
    return out


def _assert_same(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(found) == sorted(expected)
    for name, value in expected.items():
        assert found[name].dtype == np.float32 and found[name].shape == value.shape, name
        assert np.array_equal(found[name].view(np.uint32), value.view(np.uint32)), name


def _convert(path: Path, vocab: Path, to: str, out: Path, **kw):
    return gpt2hub.convert(path, to=to, out=out, vocab=vocab, **kw)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_safetensors_tensor_is_nanogpts_exactly(made, vocab, tmp_path, variant):
    from safetensors.numpy import load_file

    path, model = made[variant]
    r = _convert(path, vocab, "safetensors", tmp_path / "out")
    assert r.source_kind == "nanogpt" and r.hparams["activation"] == "gelu_exact"
    _assert_same(load_file(r.path / "model.safetensors"), _expected(model))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pytorch_tensor_is_nanogpts_exactly(made, vocab, tmp_path, variant):
    path, model = made[variant]
    r = _convert(path, vocab, "pytorch", tmp_path / "out")
    state = torch.load(r.path / "pytorch_model.bin", weights_only=True)
    _assert_same({k: v.numpy() for k, v in state.items()}, _expected(model))


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformers_logits_equal_nanogpts_float64_forward(made, vocab, tmp_path, variant):
    transformers = pytest.importorskip("transformers")
    path, model = made[variant]
    r = _convert(path, vocab, "safetensors", tmp_path / "out")
    config = json.loads((r.path / "config.json").read_text())
    assert config["activation_function"] == "gelu" and config["vocab_size"] == GPT2_VOCAB
    assert config["tie_word_embeddings"] is (variant != "untied-nobias-padded")
    hf = transformers.GPT2LMHeadModel.from_pretrained(r.path).eval()
    with torch.no_grad():
        got = hf(torch.tensor([IDS])).logits[0].double().numpy()
        f32 = model.eval()(torch.tensor([IDS]))[0].double().numpy()[:, :GPT2_VOCAB]
    want = nanogpt.forward64(model, IDS)[:, :GPT2_VOCAB]
    noise = np.abs(f32 - want).max()  # nanoGPT's own float32 forward against its float64 one
    assert 0 < noise < 1e-4
    assert np.abs(got - want).max() <= 4 * noise


def test_the_report_says_what_was_dropped_zeroed_and_where_the_vocabulary_came_from(made, vocab, tmp_path):
    path, _ = made["compiled-nobias-padded"]
    result = invoke("convert", str(path), "--to", "safetensors", "--out", str(tmp_path / "out"), "--vocab", str(vocab))
    assert result.exit_code == 0, result.output
    for said in ("bias=False: zero biases written", "rows 50257..50303 of wte", "47 padding rows",
                 f"GPT-2's vocabulary from --vocab {vocab}", "model_args in ckpt.pt", "ignored 5 non-model variables"):
        assert said in result.stderr, result.stderr
    assert "gelu_exact" in result.stderr


def test_a_target_computing_the_tanh_gelu_is_refused_in_one_line(made, vocab, tmp_path):
    path, _ = made["compiled-nobias-padded"]
    result = invoke("convert", str(path), "--to", "tf", "--out", str(tmp_path / "out"), "--vocab", str(vocab))
    one_line_error(result, "gelu_exact")
    assert not (tmp_path / "out").exists()


# --- refusals ------------------------------------------------------------------------------------

def _refused(path: Path, vocab: Path | None, *needles: str, from_: str | None = None) -> str:
    args = ["convert", str(path), "--to", "safetensors", "--out", str(path.parent / "out")]
    args += ["--vocab", str(vocab)] if vocab else []
    args += ["--from", from_] if from_ else []
    line = one_line_error(invoke(*args), *needles)
    assert not (path.parent / "out").exists()
    return line


class _WritesAFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_ckpt_whose_pickle_would_write_a_file_is_refused_having_run_nothing(made, vocab, tmp_path):
    path, _ = made["bias-maskbuffers-50257"]
    marker = tmp_path / "pwned"
    checkpoint = torch.load(path, weights_only=True)
    evil = tmp_path / "evil" / "ckpt.pt"
    evil.parent.mkdir()
    torch.save({**checkpoint, "config": {"dataset": _WritesAFile(marker)}}, evil)
    _refused(evil, vocab, "not a nanoGPT checkpoint gpt2hub reads", "open is not part of a plain state dict",
             "nothing was run")
    assert not marker.exists()


def _torch_zip(path: Path, pkl: bytes) -> Path:
    """A zip laid out as torch.save lays one out (<stem>/data.pkl, version, byteorder), holding `pkl`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ckpt/data.pkl", pkl)
        zf.writestr("ckpt/byteorder", "little")
        zf.writestr("ckpt/version", "3\n")
    return path


def _exec_gadget(marker: Path) -> bytes:
    """train.py's dict keys around `builtins.exec("open(marker, 'w').close()")`, in raw pickle opcodes."""
    def text(s: str) -> bytes:
        data = s.encode()
        return b"X" + struct.pack("<I", len(data)) + data

    code = f"open({str(marker)!r}, 'w').close()"
    return (b"\x80\x02}(" + text("model") + b"}" + text("model_args") + b"}" + text("iter_num")
            + b"cbuiltins\nexec\n" + b"(" + text(code) + b"tR" + b"u.")


def test_a_crafted_exec_gadget_in_a_torch_zip_is_refused_having_run_nothing(vocab, tmp_path):
    marker = tmp_path / "pwned"
    pkl = _exec_gadget(marker)
    pickle.loads(pkl)  # the gadget is live: an ordinary unpickler writes the marker
    assert marker.exists()
    marker.unlink()
    evil = _torch_zip(tmp_path / "evil" / "ckpt.pt", pkl)
    _refused(evil, vocab, "builtins.exec is not part of a plain state dict")
    _refused(evil, vocab, "builtins.exec", from_="nanogpt")
    assert not marker.exists()


def test_a_pickle_asking_for_a_huge_memo_is_refused_without_allocating_it(vocab, tmp_path):
    pkl = b"\x80\x02}r" + struct.pack("<I", 0xFFFFFFF0) + b"."  # LONG_BINPUT 4,294,967,280
    path = _torch_zip(tmp_path / "memo" / "ckpt.pt", pkl.replace(b"}", b"}X\x0a\x00\x00\x00model_args", 1))
    _refused(path, vocab, "memo index")


def test_a_meta_pkl_beside_the_checkpoint_is_refused_without_being_read(made, vocab, tmp_path):
    path, _ = made["compiled-nobias-padded"]
    run = tmp_path / "shakespeare_char"
    run.mkdir()
    shutil.copyfile(path, run / "ckpt.pt")
    marker = tmp_path / "pwned"
    (run / "meta.pkl").write_bytes(_exec_gadget(marker))  # read as a pickle, it would write the marker
    line = _refused(run / "ckpt.pt", vocab, "meta.pkl", "GPT-2's vocabulary only", "character-level")
    assert not marker.exists()
    assert len(line) < 400


def test_a_run_with_its_own_vocabulary_size_is_refused_in_one_line(vocab, tmp_path):
    path = tmp_path / "char" / "ckpt.pt"
    path.parent.mkdir()
    nanogpt.write_ckpt(path, nanogpt.GPTConfig(vocab_size=65, block_size=8, n_layer=1))
    _refused(path, vocab, "vocab_size 65 is not GPT-2's", "GPT-2's vocabulary only")


def _resaved(made, tmp_path: Path, change) -> Path:
    path, _ = made["bias-maskbuffers-50257"]
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    out = tmp_path / "changed" / "ckpt.pt"
    out.parent.mkdir()
    torch.save(checkpoint, out)
    return out


@pytest.mark.parametrize("change, needles", [
    (lambda c: c["model_args"].update(n_kv_head=2), ("model_args has n_kv_head", "not a field of nanoGPT's GPTConfig")),
    (lambda c: c["model_args"].pop("block_size"), ("model_args has no block_size",)),
    (lambda c: c["model_args"].update(n_embd="64"), ("model_args n_embd is '64', not an int",)),
    (lambda c: c["model_args"].update(n_head=5), ("n_embd 64 is not divisible by n_head 5",)),
    (lambda c: c["model_args"].update(n_layer=3), ("of GPT's tensors missing, e.g. transformer.h.2.", "n_layer 3")),
    (lambda c: c["model_args"].update(bias=False), ("holds transformer.h.0.ln_1.bias but model_args says bias=False",)),
    (lambda c: c["model"].update({"transformer.h.0.attn.c_attn.weight": torch.zeros(64, 64)}),
     ("attn.c_attn.weight has shape [64, 64], model_args implies [192, 64]",)),
    (lambda c: c["model"].update({"transformer.h.0.attn.bias": torch.ones(1, 1, 32, 32)}), ("not the causal mask",)),
    (lambda c: c["model"].update({"transformer.h.0.attn.c_attn.weight": torch.zeros(192, 64, dtype=torch.int64)}),
     ("is I64, not float32",)),
    (lambda c: c["model"].update({"transformer.rope.freqs": torch.zeros(4)}), ("'transformer.rope.freqs', not a tensor of",)),
    (lambda c: c["model"].pop("lm_head.weight"), ("no lm_head.weight",)),
    (lambda c: c.pop("model_args"), ("not a checkpoint gpt2hub reads", "accepted with --from nanogpt")),
    (lambda c: c["config"].update(model_args=c.pop("model_args")), ("its pickle holds", "not train.py's dict")),
])
def test_a_model_args_or_state_dict_gpt2hub_cannot_honour_is_refused_in_one_line(made, vocab, tmp_path, change, needles):
    _refused(_resaved(made, tmp_path, change), vocab, *needles, from_="nanogpt")


def test_a_plain_state_dict_is_no_nanogpt_checkpoint(made, vocab, tmp_path):
    path, model = made["bias-maskbuffers-50257"]
    plain = tmp_path / "plain" / "ckpt.pt"
    plain.parent.mkdir()
    torch.save(model.state_dict(), plain)
    _refused(plain, vocab, "not a checkpoint gpt2hub reads", "a nanoGPT ckpt.pt")
    _refused(plain, vocab, "accepted with --from nanogpt: a nanoGPT ckpt.pt", from_="nanogpt")


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_checkpoint_is_refused_in_one_line(made, vocab, tmp_path, keep):
    path, _ = made["bias-maskbuffers-50257"]
    cut = tmp_path / "cut" / "ckpt.pt"
    cut.parent.mkdir()
    data = path.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep)])
    _refused(cut, vocab, "not a nanoGPT checkpoint gpt2hub reads", "truncated")


def test_a_record_shorter_than_its_tensor_is_refused_in_one_line(made, vocab, tmp_path):
    path, _ = made["bias-maskbuffers-50257"]
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:16] if info.filename.endswith("/data/0") else data)
    bad = tmp_path / "short" / "ckpt.pt"
    bad.parent.mkdir()
    bad.write_bytes(buf.getvalue())
    _refused(bad, vocab, "bytes of a 16-byte record")


def test_a_pickle_beyond_the_size_limit_is_refused_before_it_is_read(vocab, tmp_path, monkeypatch):
    from gpt2hub import torch_zip

    monkeypatch.setattr(torch_zip, "MAX_PICKLE_BYTES", 64)
    path = _torch_zip(tmp_path / "big" / "ckpt.pt", b"\x80\x02}X\x0a\x00\x00\x00model_args" + b"N" * 100 + b".")
    _refused(path, vocab, "beyond gpt2hub's limit")


def test_open_reads_no_weights_and_presents_every_tensor_as_a_byte_range(made, vocab):
    from gpt2hub import source_kinds
    from gpt2hub.layout import tensor_shapes
    from gpt2hub.source_tensors import ZEROS

    path, _ = made["compiled-nobias-padded"]
    kind = source_kinds.detect(path)
    assert kind is not None and kind.name == "nanogpt"
    with kind.open(path, source_kinds.OpenOptions(vocab=vocab)) as ckpt:
        assert set(ckpt.entries) == set(tensor_shapes(ckpt.hparams))
        assert ckpt.hparams.tied and ckpt.hparams.n_vocab == GPT2_VOCAB and ckpt.hparams.n_ctx == 32
        assert ckpt.entries["model/h0/attn/c_attn/w"].transposed
        assert ckpt.entries["model/h1/mlp/c_fc/b"].encoding == ZEROS
        assert ckpt.entries["model/wte"].size == GPT2_VOCAB * 64 * 4
        assert len(ckpt.ignored) < 10  # summarised, not one name per optimizer tensor


def test_a_missing_checkpoint_is_one_line(tmp_path):
    from gpt2hub.nanogpt_source import NanoGptCheckpoint
    from gpt2hub.source_kinds import OpenOptions

    with pytest.raises(ConversionError) as e:
        NanoGptCheckpoint(tmp_path / "ckpt.pt", OpenOptions())
    assert "no such file" in one_line(e)


def test_an_lm_head_saved_as_a_copy_of_wte_is_tied(made, vocab, tmp_path):
    def copied(c):
        c["model"]["lm_head.weight"] = c["model"]["transformer.wte.weight"].clone()

    r = _convert(_resaved(made, tmp_path, copied), vocab, "safetensors", tmp_path / "out")
    assert r.hparams.get("tied", True) and "lm_head.weight (a copy of wte)" in r.ignored
    assert json.loads((r.path / "config.json").read_text())["tie_word_embeddings"] is True


def test_half_precision_weights_convert_widened_exactly(made, vocab, tmp_path):
    from safetensors.numpy import load_file

    path, model = made["bias-maskbuffers-50257"]

    def halved(c):
        c["model"] = {k: v if k.endswith(".attn.bias") else v.half() for k, v in c["model"].items()}

    r = _convert(_resaved(made, tmp_path, halved), vocab, "safetensors", tmp_path / "out")
    want = {k: v.astype(np.float16).astype(np.float32) for k, v in _expected(model).items()}
    _assert_same(load_file(r.path / "model.safetensors"), want)


REBUILD = (b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000"
           b"X\x03\x00\x00\x00cpuK\x04tQK\x00K\x04\x85K\x01\x85tR")  # a float32 tensor of 4, as torch.save pickles it


@pytest.mark.parametrize("build, needles", [
    (REBUILD + b"N}X\x05\x00\x00\x00shapeX\x03\x00\x00\x00abcs\x86b", ("setting the state of TensorRef",)),
    (b"ccollections\nOrderedDict\nN}X\x0b\x00\x00\x00__getitem__" + REBUILD + b"s\x86b", ("setting __getitem__ on StateDict",)),
    (b"ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__)s\x86b", ("setting the state of _RebuildTensor",)),
])
def test_a_pickle_rewriting_the_readers_objects_with_build_is_refused(vocab, tmp_path, build, needles):
    """BUILD sets attributes of an object already made: a checked tensor's fields, or the reader's own classes."""
    pkl = b"\x80\x02}(X\x0a\x00\x00\x00model_argsK\x00X\x01\x00\x00\x00x" + build + b"u."
    _refused(_torch_zip(tmp_path / "build" / "ckpt.pt", pkl), vocab, "not a nanoGPT checkpoint gpt2hub reads", *needles)
