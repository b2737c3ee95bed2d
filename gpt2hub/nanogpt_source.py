"""A nanoGPT `ckpt.pt` read in place as a GPT-2 checkpoint (karpathy/nanoGPT train.py's torch.save).

The file is a torch.save zip of train.py's dict: `model` (GPT's state_dict), `model_args` (n_layer, n_head, n_embd,
block_size, bias, vocab_size, dropout), `optimizer`, `iter_num`, `best_val_loss`, `config`. Its pickle is read by
gpt2hub.torch_zip (tensor rebuilds and plain containers only: never executed), and every weight is presented as a
byte range of the zip under OpenAI's name: nn.Linear weights stored (out, in), a `bias=False` model's biases as
zeros, the vocabulary's padding rows (50304 = 50257 padded) left out. nanoGPT's nn.GELU() is the exact erf form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import lazy, torch_zip, vocab_fallback
from .errors import ConversionError
from .layout import GELU_EXACT, SCOPE, HParams, tensor_shapes
from .source_kinds import OpenOptions, SourceKind
from .source_tensors import ZEROS, SourceTensor, same_bytes, stored_shape
from .stored import Stored

np = lazy.module("numpy")

KIND = "nanogpt"
COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper: train.py with compile=True saves every key under it
GPT2_VOCAB, PADDED_VOCAB = 50257, 50304  # GPT-2's tokens; train.py's default vocab_size, padded for speed
EPS = 1e-5  # nanoGPT's LayerNorm: F.layer_norm(..., 1e-5)
# model_args of nanoGPT's GPTConfig; dropout is training-only (read and set aside).
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")
TRAINING_ONLY_ARGS = ("dropout",)
HEAD = "lm_head.weight"  # tied to wte by nanoGPT's GPT: the same storage, listed under both names
MASK = ".attn.bias"  # the causal mask buffer [1, 1, block_size, block_size] of runs without flash attention
MAX_MASK_BYTES = 64 << 20
# nanoGPT's state_dict names -> OpenAI's variable names ("{i}": the block).
GLOBAL_NAMES = {
    "transformer.wte.weight": "wte",
    "transformer.wpe.weight": "wpe",
    "transformer.ln_f.weight": "ln_f/g",
    "transformer.ln_f.bias": "ln_f/b",
}
BLOCK_NAMES = {
    "ln_1.weight": "ln_1/g",
    "ln_1.bias": "ln_1/b",
    "attn.c_attn.weight": "attn/c_attn/w",
    "attn.c_attn.bias": "attn/c_attn/b",
    "attn.c_proj.weight": "attn/c_proj/w",
    "attn.c_proj.bias": "attn/c_proj/b",
    "ln_2.weight": "ln_2/g",
    "ln_2.bias": "ln_2/b",
    "mlp.c_fc.weight": "mlp/c_fc/w",
    "mlp.c_fc.bias": "mlp/c_fc/b",
    "mlp.c_proj.weight": "mlp/c_proj/w",
    "mlp.c_proj.bias": "mlp/c_proj/b",
}
# nn.Linear keeps weights (out, in); OpenAI's Conv1D (in, out).
LINEAR_WEIGHTS = ("attn/c_attn/w", "attn/c_proj/w", "mlp/c_fc/w", "mlp/c_proj/w")


def is_nanogpt(path: Path) -> bool:
    """A zip whose data.pkl names `model_args` (train.py's dict), or a zip too damaged to tell (open says why)."""
    if not torch_zip.is_torch_zip(path):
        return False
    data = torch_zip.data_pkl(path)
    return data is None or (b"model_args" in data and b"model" in data)


def _names(n_layer: int) -> dict[str, str]:
    """nanoGPT's state_dict name -> OpenAI's full variable name, for n_layer blocks."""
    names = {k: SCOPE + v for k, v in GLOBAL_NAMES.items()}
    for i in range(n_layer):
        names.update({f"transformer.h.{i}.{k}": f"{SCOPE}h{i}/{v}" for k, v in BLOCK_NAMES.items()})
    return names


class NanoGptCheckpoint:
    """A nanoGPT ckpt.pt as converters read a checkpoint (see gpt2hub.source_kinds): `.entries`, `.data_paths`,
    `.index_path`, `.hparams`, `.vocab`, `.hparams_from`, `.ignored`, `.notes`."""

    def __init__(self, path: Path | str, options: OpenOptions):
        self.path = Path(path)
        self.data_paths = [self.path]
        self.index_path = self.path
        self.hparams_from = f"model_args in {self.path.name}"
        self.ignored: list[str] = []
        self.notes: list[str] = []
        save = torch_zip.load(self.path, "a nanoGPT checkpoint gpt2hub reads")
        root = save.root
        if not isinstance(root, dict) or not isinstance(root.get("model"), dict) or not isinstance(root.get("model_args"), dict):
            keys = ", ".join(sorted(str(k)[:40] for k in root)[:6]) if isinstance(root, dict) else type(root).__name__
            raise ConversionError(f"{self.path}: not a nanoGPT checkpoint: its pickle holds {keys}, not train.py's "
                                  "dict with 'model' and 'model_args'")
        args = self._model_args(root["model_args"])
        self._refuse_own_vocabulary(args["vocab_size"])
        state = self._state(root["model"])
        self.entries, tied = self._entries(save, state, args)
        self.hparams = HParams(n_vocab=GPT2_VOCAB, n_ctx=args["block_size"], n_embd=args["n_embd"],
                               n_head=args["n_head"], n_layer=args["n_layer"], eps=EPS, activation=GELU_EXACT, tied=tied)
        self.ignored += _summary(self.path, {k: v for k, v in root.items() if k not in ("model", "model_args")})
        self.vocab, said = vocab_fallback.gpt2_vocab(options, f"{self.path}: a nanoGPT checkpoint carries no vocabulary")
        self.notes.append(said)

    def _model_args(self, model_args: dict) -> dict[str, Any]:
        """model_args checked: every field of nanoGPT's GPTConfig present and of its type, nothing unknown."""
        unknown = sorted(str(k)[:40] for k in model_args if k not in MODEL_ARGS + TRAINING_ONLY_ARGS)
        if unknown:
            raise ConversionError(f"{self.path}: model_args has {', '.join(unknown)}, not a field of nanoGPT's "
                                  f"GPTConfig ({', '.join(MODEL_ARGS + TRAINING_ONLY_ARGS)}); gpt2hub converts "
                                  "nanoGPT's GPT only")
        missing = [k for k in MODEL_ARGS if k not in model_args]
        if missing:
            raise ConversionError(f"{self.path}: model_args has no {', '.join(missing)}")
        for key in MODEL_ARGS:
            value, want = model_args[key], bool if key == "bias" else int
            if type(value) is not want:
                raise ConversionError(f"{self.path}: model_args {key} is {str(value)[:40]!r}, not a{'' if want is bool else 'n'} "
                                      f"{want.__name__}")
        for key in TRAINING_ONLY_ARGS:
            if key in model_args:
                self.ignored.append(f"model_args.{key} (training only)")
        try:
            HParams(n_vocab=model_args["vocab_size"], n_ctx=model_args["block_size"], n_embd=model_args["n_embd"],
                    n_head=model_args["n_head"], n_layer=model_args["n_layer"])
        except ConversionError as e:
            why = str(e).removeprefix("hparams: ")
            names = {"n_vocab": "vocab_size", "n_ctx": "block_size"}
            field = why.split()[0]
            raise ConversionError(f"{self.path}: model_args {names.get(field, field)}{why[len(field):]}") from None
        return dict(model_args)

    def _refuse_own_vocabulary(self, vocab_size: int) -> None:
        """gpt2hub converts runs on GPT-2's vocabulary only: every target carries the tokenizer with the weights."""
        why = ("gpt2hub converts nanoGPT runs on GPT-2's vocabulary only (vocab_size 50257, or 50304 padded), "
               "because every output carries its tokenizer and a character-level vocabulary has none GPT-2's tools read")
        if (self.path.parent / "meta.pkl").is_file():
            raise ConversionError(f"{self.path}: meta.pkl beside it: a run with its own vocabulary (e.g. "
                                  f"character-level; vocab_size {vocab_size}); {why}")
        if vocab_size not in (GPT2_VOCAB, PADDED_VOCAB):
            raise ConversionError(f"{self.path}: vocab_size {vocab_size} is not GPT-2's: a run with its own "
                                  f"vocabulary; {why}")

    def _state(self, model: dict) -> dict[str, torch_zip.TensorRef]:
        """The state dict by nanoGPT's names, torch.compile's `_orig_mod.` prefix removed."""
        state: dict[str, torch_zip.TensorRef] = {}
        for key, ref in model.items():
            if not isinstance(key, str) or not isinstance(ref, torch_zip.TensorRef):
                raise ConversionError(f"{self.path}: model holds {str(key)[:60]!r} = a {type(ref).__name__}, "
                                      "not a named tensor")
            name = key.removeprefix(COMPILED_PREFIX)
            if name in state:
                raise ConversionError(f"{self.path}: {name} is stored twice (with and without {COMPILED_PREFIX!r})")
            state[name] = ref
        return state

    def _entries(self, save: torch_zip.TorchSave, state: dict[str, torch_zip.TensorRef],
                 args: dict[str, Any]) -> tuple[dict[str, SourceTensor], bool]:
        """Every GPT-2 tensor as a byte range of the zip (zeros for a bias=False model's biases); whether tied."""
        n_layer, bias, vocab_size = args["n_layer"], args["bias"], args["vocab_size"]
        names = _names(n_layer)
        full = tensor_shapes(HParams(n_vocab=vocab_size, n_ctx=args["block_size"], n_embd=args["n_embd"],
                                     n_head=args["n_head"], n_layer=n_layer))
        shapes = tensor_shapes(HParams(n_vocab=GPT2_VOCAB, n_ctx=args["block_size"], n_embd=args["n_embd"],
                                       n_head=args["n_head"], n_layer=n_layer))
        entries: dict[str, SourceTensor] = {}
        masks = 0
        for name, ref in state.items():
            if name == HEAD:
                continue
            if name.endswith(MASK) and name.removesuffix(MASK) in {f"transformer.h.{i}" for i in range(n_layer)}:
                self._check_mask(save.stored(name, ref), args["block_size"])
                masks += 1
                continue
            tf = names.get(name)
            if tf is None:
                raise ConversionError(f"{self.path}: model holds {name[:80]!r}, not a tensor of nanoGPT's GPT of "
                                      f"n_layer {n_layer} (model_args); gpt2hub converts nanoGPT's GPT only")
            if tf.endswith("/b") and not bias:
                raise ConversionError(f"{self.path}: model holds {name} but model_args says bias=False")
            entries[tf] = self._entry(save.stored(name, ref), tf, full[tf], shapes[tf])
        if masks:
            self.ignored.append(f"transformer.h.*{MASK} ({masks} causal-mask buffers)")
        for tf, shape in shapes.items():
            if tf not in entries and tf.endswith("/b") and not bias:
                entries[tf] = SourceTensor.at(tf, shape, 0, 0, ZEROS)
        missing = [n for n in shapes if n not in entries]
        if missing:
            nano = {v: k for k, v in names.items()}
            raise ConversionError(f"{self.path}: {len(missing)} of GPT's tensors missing, e.g. {nano[missing[0]]} "
                                  f"(model_args says n_layer {n_layer}, bias={bias})")
        if not bias:
            self.notes.append("bias=False: zero biases written")
        if vocab_size != GPT2_VOCAB:
            self.notes.append(f"vocab_size {vocab_size} padded: rows {GPT2_VOCAB}..{vocab_size - 1} of wte (and lm_head) "
                              f"dropped ({vocab_size - GPT2_VOCAB} padding rows, no GPT-2 token's)")
        tied = self._head(save, state, entries, full[SCOPE + "wte"])
        return entries, tied

    def _entry(self, t: Stored, tf: str, full: tuple[int, ...], shape: tuple[int, ...]) -> SourceTensor:
        """One stored tensor checked against the shape model_args implies; padded rows left out of wte."""
        transposed = tf.split("/", 2)[-1] in LINEAR_WEIGHTS
        want = stored_shape(full, transposed)
        if tuple(t.shape) != want:
            raise ConversionError(f"{self.path}: {t.name} has shape {list(t.shape)}, model_args implies {list(want)}")
        if t.encoding not in torch_zip.FLOAT_ENCODINGS:
            raise ConversionError(f"{self.path}: {t.name} is {t.encoding}, not float32, float16 or bfloat16")
        return SourceTensor.at(tf, shape, 0, t.offset, t.encoding, transposed)

    def _head(self, save: torch_zip.TorchSave, state: dict[str, torch_zip.TensorRef],
              entries: dict[str, SourceTensor], wte_shape: tuple[int, ...]) -> bool:
        """Whether lm_head is wte (nanoGPT ties them: one storage); an untied head becomes model/lm_head."""
        ref = state.get(HEAD)
        if ref is None:
            raise ConversionError(f"{self.path}: model has no {HEAD} (nanoGPT's GPT always saves it)")
        head = save.stored(HEAD, ref)
        wte = save.stored("transformer.wte.weight", state["transformer.wte.weight"])
        if (head.offset, head.nbytes, head.encoding, head.shape) == (wte.offset, wte.nbytes, wte.encoding, wte.shape):
            return True
        tf = SCOPE + "lm_head"
        if _same_bytes(self.path, head, wte):
            self.ignored.append(f"{HEAD} (a copy of wte)")
            return True
        entries[tf] = self._entry(head, tf, wte_shape, (GPT2_VOCAB, wte_shape[1]))
        self.notes.append(f"{HEAD} is not wte: the head is untied")
        return False

    def _check_mask(self, t: Stored, block_size: int) -> None:
        """An attn.bias buffer must be the causal mask (ones on and below the diagonal), or the file is refused."""
        shape = tuple(t.shape)
        if len(shape) != 4 or shape[:2] != (1, 1) or shape[2] != shape[3] or shape[2] < block_size:
            raise ConversionError(f"{self.path}: {t.name} has shape {list(shape)}, not the causal mask "
                                  f"[1, 1, {block_size}, {block_size}]")
        if t.nbytes > MAX_MASK_BYTES or t.encoding not in torch_zip.FLOAT_ENCODINGS:
            raise ConversionError(f"{self.path}: {t.name} is a {shape[2]}x{shape[2]} {t.encoding} mask, beyond what "
                                  "gpt2hub checks")
        dtype = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[t.encoding]
        values = np.fromfile(t.path, dtype=dtype, count=shape[2] * shape[2], offset=t.offset).reshape(shape[2], -1)
        ones = np.tril(np.ones(values.shape)) if t.encoding != "BF16" else np.tril(np.full(values.shape, 0x3F80))
        if not np.array_equal(values, ones):
            raise ConversionError(f"{self.path}: {t.name} is not the causal mask; gpt2hub converts causal GPT-2 only")

    def close(self) -> None:
        pass

    def __enter__(self) -> "NanoGptCheckpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summary(path: Path, entries: dict, named: int = 8) -> list[str]:
    """train.py's other entries (optimizer, iter_num, config, ...), each with its tensor count; past `named`, a count."""
    keys = sorted(entries, key=str)
    found = []
    for key in keys[:named]:
        try:
            tensors = sum(1 for _ in torch_zip.walk(entries[key]))
        except ConversionError as e:
            raise ConversionError(f"{path}: {e}") from None
        name = str(key)[:60]
        found.append(f"{name} ({tensors:,} tensor{'s' if tensors > 1 else ''})" if tensors else name)
    return found + ([f"{len(keys) - named:,} more entries"] if len(keys) > named else [])


def _same_bytes(path: Path, a: Stored, b: Stored) -> bool:
    """Whether two tensors of one file hold the same bytes, compared in bounded pieces."""
    if (a.nbytes, a.encoding, a.shape) != (b.nbytes, b.encoding, b.shape):
        return False
    return same_bytes(path, a.offset, path, b.offset, a.nbytes)


SOURCE = SourceKind(name=KIND, rank=20, is_file=True, detect=is_nanogpt, open=NanoGptCheckpoint,
                    accepts="a nanoGPT ckpt.pt (torch.save of train.py's dict: model, model_args, ...)")
