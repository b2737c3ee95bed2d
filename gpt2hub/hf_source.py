"""A Hugging Face GPT-2 folder read in place as a checkpoint, so every converter streams it unchanged.

GPT-2's Conv1D keeps its weights (in, out) in both layouts, so an HF tensor holds the values of OpenAI's variable
in OpenAI's order ([1, in, out] and (in, out) are the same elements; wte and lm_head are (V, C) in both).
`HfCheckpoint` therefore presents OpenAI's names and shapes (gpt2hub.layout) as SourceTensors over byte ranges of
the folder's own weight files, in their own encoding (float32, float16 or bfloat16); nothing is loaded. The ranges
come from the safetensors headers, or from a torch zip's pickle through gpt2hub.torch_zip's restricted unpickler
(tensor rebuilds and plain containers only: a pickle is never executed).

Every config.json field that changes the model is honoured (HParams' variant fields) or refused in one line
naming it, never dropped. The vocabulary comes from vocab.json + merges.txt, else tokenizer.json (transformers 5
writes only that), with the tokens a fine-tune added; a folder with no tokenizer files gets GPT-2's own
(gpt2hub.vocab_fallback) where its embedding has GPT-2's 50257 rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import lazy, vocab_cache
from .converters.hf import BLOCK_RULES, GLOBAL_RULES, WEIGHT_FILES, read_config, safetensors_tensors
from .converters import expand, matrix_shape
from .errors import CheckpointError, ConversionError, load_json
from .layout import GELU_EXACT, GELU_TANH, HEAD_TENSOR, HPARAM_KEYS, HPARAM_MAX, SCOPE, HParams, tensor_shapes
from .source_kinds import OpenOptions, SourceKind
from .source_tensors import SourceTensor, same_bytes
from .stored import ITEM_BYTES, Stored
from .torch_zip import zip_tensors
from .vocabulary import Vocab

np = lazy.module("numpy")

KIND = "hf"
PREFIX = "transformer."  # GPT2LMHeadModel's; GPT2Model saves (and openai-community/gpt2) have none
HEAD = "lm_head.weight"
CAUSAL_MASK = ".attn.bias"  # a buffer, [1, 1, n_positions, n_positions]: 1 on and below the diagonal
MASKED_BIAS = ".attn.masked_bias"  # a buffer, a scalar fill for masked scores (-1e4 in transformers)
VOCAB_FILES = ("vocab.json", "merges.txt")  # encoder.json and vocab.bpe under HF's names
TOKENIZER_JSON = "tokenizer.json"  # the `tokenizers` serialization: all transformers 5 writes
TOKENIZER_CONFIG = "tokenizer_config.json"  # transformers 4: added_tokens_decoder {id: {content, special}}
ADDED_TOKENS = "added_tokens.json"  # older transformers: {content: id}
SPECIAL_TOKENS_MAP = "special_tokens_map.json"  # beside it: which of those are special
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
GPT2_TOKENS = 50257  # GPT-2's vocabulary, the one vocab_fallback supplies
MAX_TOKEN_CHARS = 1024  # an added token longer than this is no token a fine-tune adds

# activation_function -> gpt2hub's activation (transformers' ACT2FN names): gelu_new and gelu_pytorch_tanh are GPT-2's
# tanh form; gelu and gelu_python the exact erf form. Anything else (relu, silu, quick_gelu, ...) is refused.
ACTIVATIONS = {"gelu_new": GELU_TANH, "gelu_pytorch_tanh": GELU_TANH, "gelu": GELU_EXACT, "gelu_python": GELU_EXACT}
# true/false config fields: (field, HF's default when absent)
FLAGS = (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
         ("tie_word_embeddings", True), ("add_cross_attention", False))
# HParams' field -> the config.json key it comes from, for errors
CONFIG_FIELDS = {"eps": "layer_norm_epsilon", "activation": "activation_function", "n_inner": "n_inner",
                 "tied": "tie_word_embeddings", "attn_scale_by_layer": "scale_attn_by_inverse_layer_idx"}


# --- what a folder is ---------------------------------------------------------------------------

def _config(folder: Path) -> dict | None:
    """config.json as a dict, or None where there is none or it is not a JSON object."""
    if not (folder / "config.json").is_file():
        return None
    try:
        data = load_json(folder / "config.json", ConversionError)
    except ConversionError:
        return None
    return data if isinstance(data, dict) else None


def _weights_present(folder: Path) -> bool:
    return any((folder / f).is_file() for pair in WEIGHT_FILES for f in pair)


def is_hf_folder(folder: Path) -> bool:
    """config.json saying model_type gpt2, beside a weight file or a shard index."""
    config = _config(folder)
    return config is not None and config.get("model_type") == "gpt2" and _weights_present(folder)


# --- config.json ---------------------------------------------------------------------------------

def read_hparams(folder: Path) -> tuple[HParams, dict, list[str]]:
    """HParams from config.json (gpt2hub's caps applied, every field honoured or refused), the config, and notes."""
    path = folder / "config.json"
    values = read_config(folder)  # the five numbers, capped, errors named by config.json's keys
    config = load_json(path, ConversionError)
    model_type = config.get("model_type") if isinstance(config, dict) else None  # read_config refused a non-object
    if model_type != "gpt2":
        raise ConversionError(f"{path}: model_type is {str(model_type)[:40]!r}, not 'gpt2'")
    flags = {}
    for key, default in FLAGS:
        flags[key] = config.get(key, default)
        if not isinstance(flags[key], bool):
            raise ConversionError(f"{path}: {key} is {repr(flags[key])[:40]}, not true or false")
    if not flags["scale_attn_weights"]:
        raise ConversionError(f"{path}: scale_attn_weights is False; gpt2hub's GPT-2 always divides attention scores "
                              "by sqrt(head_dim), so a model without that scaling is refused")
    if flags["add_cross_attention"]:
        raise ConversionError(f"{path}: add_cross_attention is True; gpt2hub converts decoder-only GPT-2 "
                              "(no cross-attention layers)")
    activation = config.get("activation_function", "gelu_new")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ConversionError(f"{path}: activation_function is {repr(activation)[:40]}; gpt2hub converts "
                              f"{', '.join(ACTIVATIONS)} only (GPT-2's tanh GELU or the exact erf GELU)")
    n_ctx = config.get("n_ctx")
    if n_ctx is not None and n_ctx != config.get("n_positions", 1024):
        raise ConversionError(f"{path}: n_ctx is {repr(n_ctx)[:40]} but n_positions is "
                              f"{repr(config.get('n_positions', 1024))[:40]}; gpt2hub converts configs where they agree only")
    n_inner = config.get("n_inner")
    if n_inner == 4 * values["n_embd"] and type(n_inner) is int:
        n_inner = None  # GPT-2's own width, said explicitly
    try:
        h = HParams(**{k: values[k] for k in HPARAM_KEYS}, n_inner=n_inner, eps=config.get("layer_norm_epsilon", 1e-5),
                    activation=ACTIVATIONS[activation], tied=flags["tie_word_embeddings"],
                    attn_scale_by_layer=flags["scale_attn_by_inverse_layer_idx"])
    except ConversionError as e:  # named by config.json's key: "layer_norm_epsilon must be a number in (0, 0.1]"
        why = str(e).removeprefix("hparams: ")
        field = why.split()[0]
        raise ConversionError(f"{path}: {CONFIG_FIELDS.get(field, field)}{why[len(field):]}") from None
    notes = []
    if flags["reorder_and_upcast_attn"]:
        notes.append("config.json: reorder_and_upcast_attn is True (transformers computes attention in float32; "
                     "the model is the same, only its rounding differs)")
    return h, config, notes


# --- the weight files ----------------------------------------------------------------------------

def weight_files(folder: Path) -> list[Path]:
    """The folder's weight files, as transformers prefers them: model.safetensors, its shards, pytorch_model.bin,
    its shards. A shard index may name only plain files of this folder."""
    for single, index in WEIGHT_FILES:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            data = load_json(folder / index, ConversionError)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise ConversionError(f"{folder / index}: no weight_map of tensor -> file (not a shard index)")
            files = sorted(set(weight_map.values()))
            for name in files:
                if name != Path(name).name or name in ("", ".", ".."):
                    raise ConversionError(f"{folder / index}: names {name[:80]!r}, not a file of this folder")
                if not (folder / name).is_file():
                    raise ConversionError(f"{folder / name}: no such file (named in {index})")
            return [folder / name for name in files]
    raise ConversionError(f"{folder}: no {' or '.join(s for s, _ in WEIGHT_FILES)} (or their shard indexes)")


def _stored(path: Path) -> list[Stored]:
    return safetensors_tensors(path) if path.suffix == ".safetensors" else zip_tensors(path)


def _values(t: Stored) -> np.ndarray:
    """A small stored tensor's values as float64 (buffers, checked against what transformers builds)."""
    dtype = {"F32": "<f4", "F16": "<f2"}.get(t.encoding)
    if dtype is None:  # bf16: the high half of a float32
        raw = np.fromfile(t.path, dtype="<u2", count=t.nbytes // 2, offset=t.offset)
        return (raw.astype("<u4") << 16).view("<f4").astype(np.float64)
    return np.fromfile(t.path, dtype=dtype, count=t.nbytes // np.dtype(dtype).itemsize, offset=t.offset).astype(np.float64)


def check_buffer(t: Stored, name: str, n_ctx: int) -> None:
    """attn.bias must be the causal mask and attn.masked_bias a large negative fill, or the folder is refused:
    gpt2hub's GPT-2 is causal and masks with -inf, so any other buffer would change the model."""
    if name.endswith(CAUSAL_MASK):
        if len(t.shape) != 4 or t.shape[:2] != (1, 1) or t.shape[2] != t.shape[3] or t.shape[2] < n_ctx:
            raise ConversionError(f"{t.path}: {name} has shape {list(t.shape)}, not the causal mask "
                                  f"[1, 1, {n_ctx}, {n_ctx}]")
        size = t.shape[2]
        if size * size * 4 > 64 << 20:
            raise ConversionError(f"{t.path}: {name} is a {size}x{size} mask, beyond what gpt2hub checks")
        if not np.array_equal(_values(t).reshape(size, size), np.tril(np.ones((size, size)))):
            raise ConversionError(f"{t.path}: {name} is not the causal mask (ones on and below the diagonal); "
                                  "gpt2hub converts causal GPT-2 only")
    elif t.shape not in ((), (1,)) or not _values(t)[0] <= -1e4:
        raise ConversionError(f"{t.path}: {name} is not a scalar fill of -1e4 or below (transformers' masked_bias); "
                              "gpt2hub converts causal GPT-2 only")


class HfCheckpoint:
    """An HF GPT-2 folder as converters read a checkpoint: `.entries` {OpenAI's variable name: SourceTensor
    (shard_id = index into `.data_paths`, byte range, TF shape, the file's encoding)}, `.data_paths` (the weight
    files), `.index_path` (the file listing the tensors); plus `.hparams`, `.vocab`, `.ignored`, `.notes`."""

    def __init__(self, folder: Path | str, options: OpenOptions = OpenOptions()):
        self.folder = Path(folder)
        self.hparams, self.config, self.notes = read_hparams(self.folder)
        self.data_paths = weight_files(self.folder)
        index = next((self.folder / i for s, i in WEIGHT_FILES if (self.folder / i).is_file()
                      and not (self.folder / s).is_file()), None)
        self.index_path = index or self.data_paths[0]
        self.ignored: list[str] = []
        self.hparams_from = "config.json"
        self.entries = self._entries()
        self.vocab, notes = read_vocab(self.folder, self.hparams.n_vocab, options)
        self.notes += notes

    def _entries(self) -> dict[str, SourceTensor]:
        h = self.hparams
        rules = expand(GLOBAL_RULES, BLOCK_RULES, h.n_layer)
        tf_names = {rule.name: tf for tf, rule in rules.items()}
        if not h.tied:
            tf_names[HEAD] = SCOPE + HEAD_TENSOR
        shapes = tensor_shapes(h)
        layers = {str(i) for i in range(h.n_layer)}  # buffers of these blocks only: h.{i}.attn.bias
        entries: dict[str, SourceTensor] = {}
        head: Stored | None = None
        for shard, path in enumerate(self.data_paths):
            size = path.stat().st_size
            for t in _stored(path):
                name = t.name.removeprefix(PREFIX)
                if t.offset + t.nbytes > size:
                    raise ConversionError(f"{path}: {t.name} needs bytes {t.offset}..{t.offset + t.nbytes} but the "
                                          f"file has {size} (truncated download?)")
                if name.endswith((CAUSAL_MASK, MASKED_BIAS)) and name.split(".")[1] in layers:
                    check_buffer(t, t.name, h.n_ctx)
                    self.ignored.append(t.name)
                    continue
                if name == HEAD and h.tied:
                    head = t
                    continue
                tf = tf_names.get(name)
                if tf is None:
                    raise ConversionError(f"{path}: tensor {t.name!r} is not part of a GPT-2 of n_layer {h.n_layer} "
                                          "(config.json); gpt2hub converts GPT-2's tensors only")
                if t.encoding not in DTYPE_NAMES:
                    raise ConversionError(f"{path}: {t.name} is {t.encoding}; gpt2hub reads float32, float16 and "
                                          "bfloat16 Hugging Face weights")
                if tuple(t.shape) != matrix_shape(shapes[tf]):
                    raise ConversionError(f"{path}: {t.name} has shape {list(t.shape)}, config.json implies "
                                          f"{list(matrix_shape(shapes[tf]))}")
                want = ITEM_BYTES[t.encoding] * math.prod(t.shape)
                if t.nbytes != want:
                    raise ConversionError(f"{path}: {t.name} spans {t.nbytes} bytes, not the {want} of "
                                          f"{DTYPE_NAMES[t.encoding]} {list(t.shape)}")
                if tf in entries:
                    raise ConversionError(f"{path}: {t.name} is stored twice (with and without {PREFIX!r})")
                entries[tf] = SourceTensor.at(tf, shapes[tf], shard, t.offset, t.encoding)
        missing = [n for n in shapes if n not in entries]
        if missing:
            hf = {tf: name for name, tf in tf_names.items()}
            raise ConversionError(f"{self.index_path}: {len(missing)} of GPT-2's tensors missing, e.g. {hf[missing[0]]} "
                                  f"(config.json says n_layer {h.n_layer}"
                                  f"{', tie_word_embeddings false' if not h.tied else ''})")
        if head is not None:
            self._check_tied_head(head, entries[SCOPE + "wte"])
        narrow = sorted({e.encoding for e in entries.values()} - {"F32"})
        if narrow:
            said = " and ".join(DTYPE_NAMES[e] for e in narrow)
            self.notes.append(f"the source's weights are {said}: float32 outputs hold them widened exactly"
                              + (f"; a {said} output holds them bit for bit" if len(narrow) == 1 else ""))
        return entries

    def _check_tied_head(self, head: Stored, wte: SourceTensor) -> None:
        """A tied head saved anyway (older saves) must be wte itself: its bytes compared in bounded pieces."""
        if head.encoding != wte.encoding or tuple(head.shape) != wte.shape or head.nbytes != wte.size:
            raise ConversionError(f"{head.path}: {head.name} is not wte's copy, yet config.json ties the head "
                                  "(tie_word_embeddings); refusing an ambiguous head")
        if not same_bytes(head.path, head.offset, self.data_paths[wte.shard_id], wte.offset, wte.size):
            raise ConversionError(f"{head.path}: {head.name} differs from wte, yet config.json ties the head "
                                  "(tie_word_embeddings); refusing an ambiguous head")
        self.ignored.append(head.name)

    def close(self) -> None:
        pass

    def __enter__(self) -> "HfCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the vocabulary ------------------------------------------------------------------------------

def read_vocab(folder: Path, n_vocab: int, options: OpenOptions = OpenOptions()) -> tuple[Vocab, list[str]]:
    """The folder's vocabulary and what to say about it: vocab.json + merges.txt, else tokenizer.json, with the
    added tokens either names; with no tokenizer files, GPT-2's own (vocab_fallback) for 50257 embedding rows."""
    vocab_json, merges_txt, tok_json = folder / VOCAB_FILES[0], folder / VOCAB_FILES[1], folder / TOKENIZER_JSON
    notes = []
    if vocab_json.is_file() and merges_txt.is_file():
        vocab = _with_added(Vocab.from_files(vocab_json, merges_txt), _added_tokens(folder))
    elif tok_json.is_file():
        vocab = _from_tokenizer_json(tok_json)
    elif vocab_json.is_file() or merges_txt.is_file():
        present, missing = (vocab_json, merges_txt) if vocab_json.is_file() else (merges_txt, vocab_json)
        raise ConversionError(f"{folder}: {present.name} without {missing.name} (and no {TOKENIZER_JSON}): "
                              "the vocabulary is incomplete")
    elif n_vocab == GPT2_TOKENS:
        from .vocab_fallback import gpt2_vocab

        vocab, said = gpt2_vocab(options, f"{folder}: no tokenizer files (vocab.json + merges.txt or tokenizer.json)")
        notes.append(f"{folder.name} has no tokenizer files: {said}")
    else:
        raise ConversionError(f"{folder}: no tokenizer files (vocab.json + merges.txt or tokenizer.json), and its "
                              f"{n_vocab:,} embedding rows are not GPT-2's {GPT2_TOKENS:,} tokens, so GPT-2's "
                              "vocabulary cannot stand in")
    if vocab.n_tokens > n_vocab:
        raise ConversionError(f"{folder}: the tokenizer has {vocab.n_tokens:,} tokens but wte only {n_vocab:,} rows "
                              "(config.json vocab_size): resize the embedding (resize_token_embeddings) first")
    if vocab.added:
        first, last = vocab.added[0][0], vocab.added[-1][0]
        notes.append(f"{len(vocab.added)} added token{'s' if len(vocab.added) > 1 else ''} (ids {first}..{last}): "
                     + ", ".join(c for _, c, _ in vocab.added[:4]) + (", ..." if len(vocab.added) > 4 else ""))
    if vocab.n_tokens < n_vocab:
        notes.append(f"wte has {n_vocab:,} rows for {vocab.n_tokens:,} tokens (the embedding resized past the "
                     f"vocabulary): n_vocab {n_vocab:,}; rows {vocab.n_tokens:,}..{n_vocab - 1:,} have no token")
    return vocab, notes


def _with_added(vocab: Vocab, found: tuple[Path, list[tuple[int, str, bool]]] | None) -> Vocab:
    """`vocab` with the added tokens listed in `found` (file, tokens) whose ids follow its base tokens."""
    if found is None:
        return vocab
    path, tokens = found
    base = vocab.facts["n_tokens"]
    added = tuple(sorted(t for t in tokens if t[0] >= base))
    ids = [i for i, _, _ in added]
    if ids != list(range(base, base + len(ids))):
        raise ConversionError(f"{path}: added token ids {ids[:3]}... do not follow the {base:,} tokens of the "
                              "vocabulary one by one")
    return Vocab.from_files(vocab.encoder_json, vocab.vocab_bpe, added)


def _added_tokens(folder: Path) -> tuple[Path, list[tuple[int, str, bool]]] | None:
    """(file, [(id, content, special)]) from tokenizer.json, tokenizer_config.json's added_tokens_decoder or
    added_tokens.json, the first present that lists any; None where none does."""
    path = folder / TOKENIZER_JSON
    if path.is_file():
        return path, _added_list(path, _json_object(path).get("added_tokens", []))
    path = folder / TOKENIZER_CONFIG
    if path.is_file():
        decoder = _json_object(path).get("added_tokens_decoder")
        if decoder is not None:
            if not isinstance(decoder, dict):
                raise ConversionError(f"{path}: added_tokens_decoder is not an object of id -> token")
            try:
                listed = [{**t, "id": int(i)} for i, t in decoder.items()]
            except (TypeError, ValueError):
                raise ConversionError(f"{path}: added_tokens_decoder is not an object of id -> token") from None
            return path, _added_list(path, listed)
    path = folder / ADDED_TOKENS
    if path.is_file():
        special = _special_tokens(folder)
        data = _json_object(path)
        return path, _added_list(path, [{"id": i, "content": c, "special": c in special} for c, i in data.items()])
    return None


def _special_tokens(folder: Path) -> set[str]:
    """The contents special_tokens_map.json names (bos/eos/pad/... and additional_special_tokens), if it is there:
    what tells added_tokens.json's special tokens from the others."""
    path = folder / SPECIAL_TOKENS_MAP
    if not path.is_file():
        return set()
    found = set()
    for value in _json_object(path).values():
        for t in value if isinstance(value, list) else [value]:
            t = t.get("content") if isinstance(t, dict) else t
            if isinstance(t, str):
                found.add(t)
    return found


def _added_list(path: Path, listed: object) -> list[tuple[int, str, bool]]:
    """Added tokens as (id, content, special), each checked (bounded: no more than any vocabulary holds)."""
    if not isinstance(listed, list) or len(listed) > HPARAM_MAX["n_vocab"]:
        raise ConversionError(f"{path}: added_tokens is not a list of tokens")
    out = []
    for t in listed:
        if not (isinstance(t, dict) and type(t.get("id")) is int and isinstance(t.get("content"), str)
                and isinstance(t.get("special", False), bool)) or not 0 < len(t["content"]) <= MAX_TOKEN_CHARS:
            raise ConversionError(f"{path}: an added token is not {{id, content, special}}: {repr(t)[:80]}")
        out.append((t["id"], t["content"], t.get("special", False)))
    return out


def _json_object(path: Path) -> dict:
    data = load_json(path, ConversionError)
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def _from_tokenizer_json(path: Path) -> Vocab:
    """tokenizer.json's byte-level BPE (model.vocab, model.merges as "a b" strings or [a, b] pairs) written out as
    encoder.json + vocab.bpe in gpt2hub's vocabulary cache, with its added tokens."""
    data = _json_object(path)
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise ConversionError(f"{path}: model type is {str(kind)[:40]!r}, not GPT-2's byte-level BPE")
    pre = data.get("pre_tokenizer")
    if not isinstance(pre, dict) or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") is True \
            or pre.get("use_regex") is False or data.get("normalizer") is not None:
        raise ConversionError(f"{path}: its normalizer and pre_tokenizer are not GPT-2's (none; ByteLevel without "
                              "add_prefix_space, with GPT-2's regex); gpt2hub converts GPT-2's tokenization only")
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise ConversionError(f"{path}: model.vocab is not an object of token -> id or model.merges not a list")
    lines = []
    for m in merges:
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) and x and " " not in x for x in pair)):
            raise ConversionError(f"{path}: merge {repr(m)[:60]} is not a pair of symbols without spaces")
        lines.append(" ".join(pair))
    kept = vocab_cache.kept_files({
        "encoder.json": json.dumps(vocab, ensure_ascii=False).encode("utf-8"),
        "vocab.bpe": ("#version: 0.2\n" + "\n".join(lines) + "\n").encode("utf-8"),
    })
    try:
        base = Vocab.from_files(kept["encoder.json"], kept["vocab.bpe"])
    except CheckpointError as e:  # named after the file the user has, not the cache's copy
        raise ConversionError(f"{path}: model.vocab/merges: {str(e).split(': ', 1)[-1]}") from None
    return _with_added(base, (path, _added_list(path, data.get("added_tokens", []))))


SOURCE = SourceKind(name=KIND, rank=10, is_file=False, detect=is_hf_folder,
                    open=lambda path, options: HfCheckpoint(path, options),
                    accepts="a Hugging Face GPT-2 folder (config.json with model_type gpt2 + model.safetensors or "
                            "pytorch_model.bin)")
