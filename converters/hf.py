"""The Hugging Face GPT-2 folder layout shared by the safetensors and PyTorch outputs.

Names follow transformers' GPT2LMHeadModel checkpoints without the `transformer.` prefix (as
openai-community/gpt2 ships them). Conv1D weights stay (in, out): HF's Conv1D uses the TF layout.
The head is tied to wte and the causal-mask buffers (`attn.bias`) are not parameters, so neither
is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import ENDOFTEXT, Rule, Source

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


def config(source: Source, dtype: str) -> dict:
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


def tokenizer_json(source: Source) -> dict:
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


def write_side_files(source: Source, out: Path, dtype: str) -> None:
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
