"""The Hugging Face GPT-2 folder layout shared by the safetensors and PyTorch outputs.

Names follow transformers' GPT2LMHeadModel checkpoints without the `transformer.` prefix (as
openai-community/gpt2 ships them). Conv1D weights stay (in, out): HF's Conv1D uses the TF layout.
The head is tied to wte and the causal-mask buffers (`attn.bias`) are not parameters, so neither
is written. verify's exact proofs read both weight files back here, in place (headers, never weights).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2hub.errors import ConversionError, load_json
from gpt2hub.layout import GELU_EXACT, GELU_TANH, HPARAM_KEYS, HParams
from gpt2hub.stored import Expected, Stored, StoredOutput
from gpt2hub.tokenizer import ENDOFTEXT
from gpt2hub.torch_zip import zip_tensors  # a pytorch_model.bin read in place (also hf_source's reader)

from . import ConvertInput, Rule, TokenizerReader, Weights, expand

if TYPE_CHECKING:
    from gpt2hub.vocabulary import Vocab


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
HEAD = Rule("lm_head.weight")  # an untied head (model/lm_head): GPT2LMHeadModel's own name, (n_vocab, n_embd)

TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
# config.json key for each GPTConfig field.
CONFIG_KEYS = {
    "n_vocab": "vocab_size", "n_ctx": "n_positions", "n_embd": "n_embd", "n_head": "n_head",
    "n_layer": "n_layer", "eps": "layer_norm_epsilon", "activation": "activation_function",
    "n_inner": "n_inner", "tied": "tie_word_embeddings", "attn_scale_by_layer": "scale_attn_by_inverse_layer_idx",
}
CONFIG_DEFAULTS = {"eps": 1e-5, "activation": "gelu_new", "n_inner": None, "tied": True, "attn_scale_by_layer": False}
# activation_function for each activation of gpt2hub.layout (transformers' ACT2FN names)
ACTIVATION_NAMES = {GELU_TANH: "gelu_new", GELU_EXACT: "gelu"}
# and every name a config may give it (gpt2hub's own, or transformers'), as gpt2hub.layout names it
ACTIVATION_OF = {GELU_TANH: GELU_TANH, GELU_EXACT: GELU_EXACT, "gelu_new": GELU_TANH, "gelu_pytorch_tanh": GELU_TANH,
                 "gelu_fast": GELU_TANH, "gelu": GELU_EXACT, "gelu_python": GELU_EXACT}
# Tensors in HF files that are not parameters: causal-mask buffers (and lm_head.weight when the head is tied).
SKIPPED = (".attn.bias", ".attn.masked_bias")
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
        "n_inner": h.n_inner,  # None: 4 * n_embd
        "activation_function": ACTIVATION_NAMES[h.activation],  # gelu_new: the tanh GELU of openai/gpt-2 src/model.py
        "layer_norm_epsilon": h.eps,
        "initializer_range": 0.02,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": h.attn_scale_by_layer,
        "reorder_and_upcast_attn": False,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "tie_word_embeddings": h.tied,
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
        "added_tokens": special_tokens(v),
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


def special_tokens(v: Vocab) -> list[dict]:
    """tokenizer.json's added_tokens: <|endoftext|>, then the tokens a fine-tune added (Vocab.added), as
    transformers saves them."""
    eot = {"id": v.eot_id, "content": ENDOFTEXT, "single_word": False, "lstrip": False, "rstrip": False,
           "normalized": True, "special": True}
    return [eot] + [{"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": not special, "special": special} for i, content, special in v.added]


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
            "added_tokens_decoder": {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                       "single_word", "special")}
                                     for t in special_tokens(v)},
        },
        "special_tokens_map.json": {"bos_token": eot, "eos_token": eot, "unk_token": eot},
    }
    if v.added:
        files["added_tokens.json"] = {content: i for i, content, _ in v.added}
    for name, data in files.items():
        (out / name).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(v.encoder_json, out / "vocab.json")
    shutil.copyfile(v.vocab_bpe, out / "merges.txt")


# --- reading a folder back --------------------------------------------------------------------

def reference_names(n_layer: int, tied: bool = True) -> dict[str, str]:
    """TF variable name -> gpt2hub's parameter name (this layout is the reference): model/h3/mlp/c_fc/w -> h.3.mlp.c_fc.weight;
    an untied head model/lm_head -> lm_head.weight."""
    return {tf: rule.name for tf, rule in expand(GLOBAL_RULES, BLOCK_RULES, n_layer, None if tied else HEAD).items()}


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
    values = {}
    for field, key in CONFIG_KEYS.items():
        if key in data:
            values[field] = data[key]
        elif field in CONFIG_DEFAULTS:
            values[field] = CONFIG_DEFAULTS[field]
        else:
            raise ConversionError(f"{path}: missing {key}")
    try:
        HParams(**{k: values[k] for k in HPARAM_KEYS}, n_inner=values["n_inner"])
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
    skipped = SKIPPED + ((HEAD.name,) if config["tied"] is not False else ())
    tensors = {}
    for path in _weight_files(folder):
        for name, t in _read_file(path).items():
            name = name.removeprefix("transformer.")
            if not name.endswith(skipped):
                tensors[name] = t
    return Weights(config, tensors)


def tokenizer_problems(folder: Path, vocab: Vocab) -> list[str]:
    """Where tokenizer.json's added tokens differ from the release's (Vocab.added), in one line each."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return ["tokenizer.json: missing"]
    data = load_json(path, ConversionError)
    got = data.get("added_tokens") if isinstance(data, dict) else None
    want = special_tokens(vocab)
    if not isinstance(got, list) or [(t.get("id"), t.get("content"), t.get("special")) for t in got if isinstance(t, dict)] \
            != [(t["id"], t["content"], t["special"]) for t in want]:
        return [f"tokenizer.json: added_tokens are not <|endoftext|> and the release's {len(vocab.added)} added tokens"]
    return []


def _tokenizer_file(folder: Path) -> Path | None:
    return folder / "tokenizer.json" if (folder / "tokenizer.json").is_file() else None


def _tokenizer_ids(path: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids


TOKENIZER = TokenizerReader("tokenizers", "tokenizers", _tokenizer_file, _tokenizer_ids)

# The fields every HF-folder format shares: what loads it, how it is read back.
# config.json keys that change GPT-2's semantics in transformers and no HParams field carries, and the value every
# GPT-2-family model needs (HF's default if absent); the fields HParams carries are compared by verify
SEMANTICS = {"scale_attn_weights": True, "reorder_and_upcast_attn": False}
ENCODINGS = {"f32": "F32", "f16": "F16", "bf16": "BF16"}  # dtype -> encoding of every tensor (gguf-py's type names)


def read_stored(folder: Path, hparams: HParams, vocab: Vocab) -> StoredOutput:
    """What the folder stores (from the safetensors header or the torch zip's pickle, no weights read) and what
    each tensor must be: the source tensor, same layout, in the folder's dtype; config semantics as GPT-2's."""
    dtype = read_dtype(folder)
    data = load_json(folder / "config.json", ConversionError)
    problems = [f"{key} is {data[key]!r}, GPT-2 needs {want!r}" for key, want in SEMANTICS.items() if data.get(key, want) != want]
    encoding = ENCODINGS.get(dtype, dtype)
    expected = {rule.name: Expected(tf, encoding, rule.transpose)
                for tf, rule in expand(GLOBAL_RULES, BLOCK_RULES, hparams.n_layer, None if hparams.tied else HEAD).items()}
    problems += tokenizer_problems(folder, vocab)
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

FOLDER_FIELDS = dict(read_stored=read_stored, consumer="transformers", is_output=is_output, read_weights=read_weights, read_dtype=read_dtype,
                     looks_like="an HF model folder", tokenizer=TOKENIZER)
