"""The Hugging Face GPT-2 folder layout shared by the safetensors and PyTorch outputs.

Names follow transformers' GPT2LMHeadModel checkpoints without the `transformer.` prefix (as
openai-community/gpt2 ships them). Conv1D weights stay (in, out): HF's Conv1D uses the TF layout.
The head is tied to wte and the causal-mask buffers (`attn.bias`) are not parameters, so neither
is written. verify's exact proofs read both weight files back here, in place (headers, never weights).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2hub import lazy
from gpt2hub.errors import ConversionError, load_json
from gpt2hub.layout import HPARAM_KEYS, HParams
from gpt2hub.stored import ITEM_BYTES, Expected, Stored, StoredOutput
from gpt2hub.tokenizer import ENDOFTEXT
from gpt2hub.zipwriter import LOCAL_HEADER

from . import ConvertInput, Rule, TokenizerReader, Weights, expand

if TYPE_CHECKING:
    from gpt2hub.vocabulary import Vocab

# The registry imports every format at start-up; these load when a torch zip is read back.
pickle = lazy.module("pickle")
zipfile = lazy.module("zipfile")

GLOBAL_RULES: dict[str, Rule] = {
    "wte": Rule("wte.weight"),
    "wpe": Rule("wpe.weight"),
    "ln_f/g": Rule("ln_f.weight"),
    "ln_f/b": Rule("ln_f.bias"),
}
BLOCK_RULES: dict[str, Rule] = {
    "ln_1/g": Rule("h.{i}.ln_1.weight"),
    "ln_1/b": Rule("h.{i}.ln_1.bias"),
    "attn/c_attn/w": Rule("h.{i}.attn.c_attn.weight"),
    "attn/c_attn/b": Rule("h.{i}.attn.c_attn.bias"),
    "attn/c_proj/w": Rule("h.{i}.attn.c_proj.weight"),
    "attn/c_proj/b": Rule("h.{i}.attn.c_proj.bias"),
    "ln_2/g": Rule("h.{i}.ln_2.weight"),
    "ln_2/b": Rule("h.{i}.ln_2.bias"),
    "mlp/c_fc/w": Rule("h.{i}.mlp.c_fc.weight"),
    "mlp/c_fc/b": Rule("h.{i}.mlp.c_fc.bias"),
    "mlp/c_proj/w": Rule("h.{i}.mlp.c_proj.weight"),
    "mlp/c_proj/b": Rule("h.{i}.mlp.c_proj.bias"),
}

TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
# config.json key for each GPTConfig field.
CONFIG_KEYS = {
    "n_vocab": "vocab_size", "n_ctx": "n_positions", "n_embd": "n_embd", "n_head": "n_head",
    "n_layer": "n_layer", "eps": "layer_norm_epsilon", "activation": "activation_function",
}
# Tensors in HF files that are not parameters: causal-mask buffers, and the head tied to wte.
SKIPPED = (".attn.bias", ".attn.masked_bias", "lm_head.weight")
# (single weights file, its shard index), in the order a reader prefers them.
WEIGHT_FILES = (("model.safetensors", "model.safetensors.index.json"),
                ("pytorch_model.bin", "pytorch_model.bin.index.json"))


def config(source: ConvertInput, dtype: str) -> dict:
    """config.json: the architecture as transformers' GPT2Config reads it (OpenAI's semantics)."""
    h, eot = source.hparams, source.vocab.eot_id
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": h.n_vocab,
        "n_positions": h.n_ctx,
        "n_ctx": h.n_ctx,
        "n_embd": h.n_embd,
        "n_head": h.n_head,
        "n_layer": h.n_layer,
        "n_inner": None,
        "activation_function": "gelu_new",  # tanh GELU, as openai/gpt-2 src/model.py
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "tie_word_embeddings": True,
        "use_cache": True,
        "torch_dtype": TORCH_DTYPES[dtype],
    }


def tokenizer_json(source: ConvertInput) -> dict:
    """tokenizer.json for the `tokenizers` library: byte-level BPE with GPT-2's pre-tokenizer regex."""
    v = source.vocab
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": v.eot_id, "content": v.tokens[v.eot_id], "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": True, "special": True}],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(v.tokens)},
            "merges": v.merges,
        },
    }


def write_side_files(source: ConvertInput, out: Path, dtype: str) -> None:
    """Everything of the folder but the weights: config, generation config and the tokenizer."""
    v, eot = source.vocab, ENDOFTEXT
    # tokenizer.json unindented: json's indenting encoder is pure Python, 10x slower on 100k entries.
    # It depends on the vocabulary alone, so it is built once per vocabulary (see gpt2hub.vocab_cache).
    (out / "tokenizer.json").write_text(
        v.derived("tokenizer.json", lambda: json.dumps(tokenizer_json(source), ensure_ascii=False) + "\n"), encoding="utf-8")
    files = {
        "config.json": config(source, dtype),
        "generation_config.json": {"bos_token_id": v.eot_id, "eos_token_id": v.eot_id},
        "tokenizer_config.json": {
            "tokenizer_class": "GPT2Tokenizer", "model_max_length": source.hparams.n_ctx,
            "bos_token": eot, "eos_token": eot, "unk_token": eot, "add_prefix_space": False, "add_bos_token": False,
        },
        "special_tokens_map.json": {"bos_token": eot, "eos_token": eot, "unk_token": eot},
    }
    for name, data in files.items():
        (out / name).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(v.encoder_json, out / "vocab.json")
    shutil.copyfile(v.vocab_bpe, out / "merges.txt")


# --- reading a folder back --------------------------------------------------------------------

def reference_names(n_layer: int) -> dict[str, str]:
    """TF variable name -> gpt2hub's parameter name (this layout is the reference): model/h3/mlp/c_fc/w -> h.3.mlp.c_fc.weight."""
    return {tf: rule.name for tf, rule in expand(GLOBAL_RULES, BLOCK_RULES, n_layer).items()}


def is_output(path: Path) -> bool:
    """config.json beside weights transformers reads (an ONNX or other folder may carry a config.json too)."""
    return (path / "config.json").is_file() and any((path / f).is_file() for pair in WEIGHT_FILES for f in pair)


def read_config(folder: Path) -> dict:
    """GPTConfig's fields from config.json; HF's own defaults where a key is absent. The hyperparameters are
    bounded as a manifest's are (HParams' caps), so no reader builds a model of a hostile size from them."""
    path = folder / "config.json"
    data = load_json(path, ConversionError)
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    defaults = {"eps": 1e-5, "activation": "gelu_new"}
    values = {}
    for field, key in CONFIG_KEYS.items():
        if key in data:
            values[field] = data[key]
        elif field in defaults:
            values[field] = defaults[field]
        else:
            raise ConversionError(f"{path}: missing {key}")
    try:
        HParams(**{k: values[k] for k in HPARAM_KEYS})
    except ConversionError as e:  # named by config.json's key: "n_positions 2,000,000 is beyond ..."
        why = str(e).removeprefix("hparams: ")
        field = why.split()[0]
        raise ConversionError(f"{path}: {CONFIG_KEYS.get(field, field)}{why[len(field):]}") from None
    return values


def read_dtype(folder: Path) -> str:
    """The dtype config.json says the weights are stored in (f32 where it cannot be read)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "f32"
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return {v: k for k, v in TORCH_DTYPES.items()}.get(name, name)


def _weight_files(folder: Path) -> list[Path]:
    for single, index in WEIGHT_FILES:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise ConversionError(f"{folder / index}: not a shard index ({e})") from None
            return [folder / f for f in sorted(set(weight_map.values()))]
    raise ConversionError(f"{folder}: no {' or '.join(s for s, _ in WEIGHT_FILES)} (or their shard indexes)")


def _read_file(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise ConversionError(f"{path}: no such file (named in the shard index)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise ConversionError(f"{path}: not a PyTorch state dict ({type(e).__name__}: {e})") from None


def read_weights(folder: Path) -> Weights:
    """config.json and the weights (model.safetensors or pytorch_model.bin, or their shards) as torch tensors."""
    config = read_config(folder)
    tensors = {}
    for path in _weight_files(folder):
        for name, t in _read_file(path).items():
            name = name.removeprefix("transformer.")
            if not name.endswith(SKIPPED):
                tensors[name] = t
    return Weights(config, tensors)


def _tokenizer_file(folder: Path) -> Path | None:
    return folder / "tokenizer.json" if (folder / "tokenizer.json").is_file() else None


def _tokenizer_ids(path: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids


TOKENIZER = TokenizerReader("tokenizers", "tokenizers", _tokenizer_file, _tokenizer_ids)

# The fields every HF-folder format shares: what loads it, how it is read back.
# config.json keys that change GPT-2's semantics in transformers, and the value OpenAI's model needs (HF's default if absent)
SEMANTICS = {"tie_word_embeddings": True, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
             "reorder_and_upcast_attn": False}
ENCODINGS = {"f32": "F32", "f16": "F16", "bf16": "BF16"}  # dtype -> encoding of every tensor (gguf-py's type names)
STORAGE_ENCODINGS = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16"}  # torch's storage types


def read_stored(folder: Path, hparams: HParams, vocab: Vocab) -> StoredOutput:
    """What the folder stores (from the safetensors header or the torch zip's pickle, no weights read) and what
    each tensor must be: the source tensor, same layout, in the folder's dtype; config semantics as GPT-2's."""
    dtype = read_dtype(folder)
    data = load_json(folder / "config.json", ConversionError)
    problems = [f"{key} is {data[key]!r}, GPT-2 needs {want!r}" for key, want in SEMANTICS.items() if data.get(key, want) != want]
    encoding = ENCODINGS.get(dtype, dtype)
    expected = {rule.name: Expected(tf, encoding, rule.transpose)
                for tf, rule in expand(GLOBAL_RULES, BLOCK_RULES, hparams.n_layer).items()}
    tensors = {}
    for path in _weight_files(folder):
        for t in safetensors_tensors(path) if path.suffix == ".safetensors" else zip_tensors(path):
            name = t.name.removeprefix("transformer.")
            if not name.endswith(SKIPPED):
                tensors[name] = Stored(name, t.encoding, t.shape, t.path, t.offset, t.nbytes)
    return StoredOutput(dtype, read_config(folder), tensors, expected, problems)


# --- the weight files, read in place: names, encodings, shapes and byte ranges, no weight loaded --------

def safetensors_tensors(path: Path) -> list[Stored]:
    """Every tensor of a .safetensors file, from its header alone (the weights are read later)."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file (named in the shard index)")
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(path.stat().st_size - 8, 100 << 20):
            raise ConversionError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ConversionError(f"{path}: the safetensors header is not JSON ({e})") from None
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] not in ENCODINGS.values() or not 0 <= start <= end:  # safetensors names F32/F16/BF16 as gguf-py
            raise ConversionError(f"{path}: {name}: dtype {info['dtype']} or byte range {start}..{end} is not readable")
        tensors.append(Stored(name, info["dtype"], tuple(info["shape"]), path, 8 + n + start, end - start))
    return tensors


@dataclass(frozen=True)
class _TensorRef:
    key: str
    encoding: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, shape, stride, *_):
    _, storage_type, key, _location, _numel = storage
    return _TensorRef(key, STORAGE_ENCODINGS[storage_type], offset, tuple(shape), tuple(stride))


class _TorchStateDict(dict):
    """OrderedDict as a state dict unpickles: a dict whose `_metadata` attribute (module versions, set by the
    pickle's BUILD opcode on torch.save of `model.state_dict()`) is kept as data and never read."""


def _state_dict_unpickler(stream) -> pickle.Unpickler:
    """data.pkl read to (storage key, type, shape) without torch: torch.load(mmap=True) would keep every page it
    reads resident (6 GB at 1558M). Anything but a plain state dict of tensors is refused."""

    class StateDictUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) == ("collections", "OrderedDict"):
                return _TorchStateDict
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return _rebuild_tensor
            if module == "torch" and name in STORAGE_ENCODINGS:
                return name
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain state dict")

        def persistent_load(self, pid):
            return tuple(pid)

    return StateDictUnpickler(stream)


def zip_tensors(path: Path) -> list[Stored]:
    """Every tensor of a torch.save zip (pytorch_model.bin): stored records, read in place."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file (named in the shard index)")
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
            if pkl is None:
                raise ConversionError(f"{path}: no data.pkl (not a torch.save zip)")
            stem = pkl[: -len("data.pkl")]
            tensors = []
            for name, ref in _state_dict_unpickler(zf.open(pkl)).load().items():
                info = zf.getinfo(f"{stem}data/{ref.key}")
                n, item = math.prod(ref.shape), ITEM_BYTES[ref.encoding]
                contiguous = tuple(math.prod(ref.shape[i + 1:]) for i in range(len(ref.shape)))
                if info.compress_type != zipfile.ZIP_STORED or ref.stride != contiguous or (ref.offset + n) * item > info.file_size:
                    raise ConversionError(f"{path}: {name} is not a contiguous tensor in a stored record")
                raw.seek(info.header_offset + 26)  # the local header's name and extra lengths
                name_len, extra_len = struct.unpack("<HH", raw.read(4))
                start = info.header_offset + LOCAL_HEADER + name_len + extra_len + ref.offset * item
                tensors.append(Stored(name, ref.encoding, ref.shape, path, start, n * item))
            return tensors
    except (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, ValueError, EOFError, struct.error) as e:
        raise ConversionError(f"{path}: not a PyTorch state dict ({type(e).__name__}: {e})") from None


FOLDER_FIELDS = dict(read_stored=read_stored, consumer="transformers", is_output=is_output, read_weights=read_weights, read_dtype=read_dtype,
                     looks_like="an HF model folder", tokenizer=TOKENIZER)
