"""A Hugging Face GPT-2 folder read in place as a TF checkpoint, so every converter streams it unchanged.

GPT-2's Conv1D keeps its weights (in, out) in both layouts, so a float32 HF tensor holds exactly the bytes of
OpenAI's variable ([1, in, out] and (in, out) are the same bytes). `HfCheckpoint` therefore presents OpenAI's
names and shapes (gpt2hub.layout) over byte ranges of the folder's own weight files; nothing is loaded. The
ranges come from the safetensors headers, or from a torch zip's pickle through converters/hf.py's restricted
unpickler (tensor rebuilds and plain containers only: a pickle is never executed).

Every config.json field that changes the model is honoured or refused in one line naming it, never dropped.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import lazy
from .converters.hf import BLOCK_RULES, GLOBAL_RULES, WEIGHT_FILES, read_config, safetensors_tensors, zip_tensors
from .converters import expand, matrix_shape
from .errors import ConversionError, load_json
from .layout import HPARAM_KEYS, HParams, tensor_shapes
from .source_kinds import SourceKind
from .stored import Stored
from .tfbundle import TensorEntry
from .vocabulary import Vocab

np = lazy.module("numpy")

KIND = "hf"
PREFIX = "transformer."  # GPT2LMHeadModel's; GPT2Model saves (and openai-community/gpt2) have none
HEAD = "lm_head.weight"
CAUSAL_MASK = ".attn.bias"  # a buffer, [1, 1, n_positions, n_positions]: 1 on and below the diagonal
MASKED_BIAS = ".attn.masked_bias"  # a buffer, a scalar fill for masked scores (-1e4 in transformers)
VOCAB_FILES = ("vocab.json", "merges.txt")  # encoder.json and vocab.bpe under HF's names
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
DT_FLOAT = 1  # tfbundle's dtype code of float32

GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # GPT-2's tanh GELU in transformers' ACT2FN
# config.json fields gpt2hub cannot honour yet: (field, HF's default when absent, what gpt2hub converts). A value
# other than the one GPT-2 needs is refused, never dropped. n_inner is checked against 4 * n_embd in `_refusals`.
REFUSED_UNLESS = (
    ("activation_function", "gelu_new", GELU_TANH),
    ("layer_norm_epsilon", 1e-5, (1e-5,)),
    ("scale_attn_weights", True, (True,)),
    ("scale_attn_by_inverse_layer_idx", False, (False,)),
    ("tie_word_embeddings", True, (True,)),
    ("vocab_size", 50257, (50257,)),
)


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

def read_hparams(folder: Path) -> tuple[HParams, dict]:
    """HParams from config.json (gpt2hub's caps applied), after refusing every field gpt2hub cannot honour."""
    path = folder / "config.json"
    values = read_config(folder)  # the five numbers, capped, errors named by config.json's keys
    config = load_json(path, ConversionError)
    model_type = config.get("model_type") if isinstance(config, dict) else None  # read_config refused a non-object
    if model_type != "gpt2":
        raise ConversionError(f"{path}: model_type is {str(model_type)[:40]!r}, not 'gpt2'")
    problems = _refusals(config, values["n_embd"])
    if problems:
        raise ConversionError(f"{path}: {problems[0]}")
    return HParams(**{k: values[k] for k in HPARAM_KEYS}), config


def _refusals(config: dict, n_embd: int) -> list[str]:
    """Each field whose value gpt2hub would not honour, as '<field> is <value>; ...' (first one is raised)."""
    found = []
    for key, default, accepted in REFUSED_UNLESS:
        value = config.get(key, default)
        if value not in accepted or isinstance(value, bool) != isinstance(accepted[0], bool):
            want = " or ".join(repr(a) for a in accepted)
            found.append(f"{key} is {repr(value)[:40]}; gpt2hub converts {key} {want} only (not supported yet)")
    n_inner = config.get("n_inner")
    if n_inner is not None and n_inner != 4 * n_embd:
        found.append(f"n_inner is {repr(n_inner)[:40]}; gpt2hub converts n_inner None or 4 * n_embd = {4 * n_embd} "
                     "only (not supported yet)")
    n_ctx = config.get("n_ctx")
    if n_ctx is not None and n_ctx != config.get("n_positions", 1024):
        found.append(f"n_ctx is {repr(n_ctx)[:40]} but n_positions is {config.get('n_positions', 1024)!r}; "
                     "gpt2hub converts configs where they agree only")
    return found


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


def _check_buffer(t: Stored, name: str, n_ctx: int) -> None:
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
    """An HF GPT-2 folder as tfcheckpoint.Checkpoint presents a bundle to converters: `.entries` {OpenAI's
    variable name: TensorEntry (shard_id = index into `.data_paths`, byte range, TF shape)}, `.data_paths` (the
    weight files), `.index_path` (the file listing the tensors); plus `.hparams`, `.vocab`, `.ignored`."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.hparams, self.config = read_hparams(self.folder)
        self.vocab = _vocab(self.folder)
        self.data_paths = weight_files(self.folder)
        index = next((self.folder / i for s, i in WEIGHT_FILES if (self.folder / i).is_file()
                      and not (self.folder / s).is_file()), None)
        self.index_path = index or self.data_paths[0]
        self.ignored: list[str] = []
        self.notes: list[str] = []
        self.hparams_from = "config.json"
        self.entries = self._entries()

    def _entries(self) -> dict[str, TensorEntry]:
        h = self.hparams
        tf_names = {rule.name: tf for tf, rule in expand(GLOBAL_RULES, BLOCK_RULES, h.n_layer).items()}
        shapes = tensor_shapes(h)
        layers = {str(i) for i in range(h.n_layer)}  # buffers of these blocks only: h.{i}.attn.bias
        entries: dict[str, TensorEntry] = {}
        head: Stored | None = None
        for shard, path in enumerate(self.data_paths):
            size = path.stat().st_size
            for t in _stored(path):
                name = t.name.removeprefix(PREFIX)
                if t.offset + t.nbytes > size:
                    raise ConversionError(f"{path}: {t.name} needs bytes {t.offset}..{t.offset + t.nbytes} but the "
                                          f"file has {size} (truncated download?)")
                if name.endswith((CAUSAL_MASK, MASKED_BIAS)) and name.split(".")[1] in layers:
                    _check_buffer(t, t.name, h.n_ctx)
                    self.ignored.append(t.name)
                    continue
                if name == HEAD:
                    head = t
                    continue
                tf = tf_names.get(name)
                if tf is None:
                    raise ConversionError(f"{path}: tensor {t.name!r} is not part of a GPT-2 of n_layer {h.n_layer} "
                                          "(config.json); gpt2hub converts GPT-2's tensors only")
                if t.encoding != "F32":
                    raise ConversionError(f"{path}: {t.name} is {DTYPE_NAMES.get(t.encoding, t.encoding)}; "
                                          "only float32 Hugging Face weights convert so far (not supported yet)")
                if tuple(t.shape) != matrix_shape(shapes[tf]):
                    raise ConversionError(f"{path}: {t.name} has shape {list(t.shape)}, config.json implies "
                                          f"{list(matrix_shape(shapes[tf]))}")
                if t.nbytes != 4 * math.prod(t.shape):
                    raise ConversionError(f"{path}: {t.name} spans {t.nbytes} bytes, not the {4 * math.prod(t.shape)} "
                                          f"of float32 {list(t.shape)}")
                if tf in entries:
                    raise ConversionError(f"{path}: {t.name} is stored twice (with and without {PREFIX!r})")
                entries[tf] = TensorEntry(name=tf, dtype_code=DT_FLOAT, shape=shapes[tf], shard_id=shard,
                                          offset=t.offset, size=t.nbytes, crc32c=0)
        missing = [n for n in shapes if n not in entries]
        if missing:
            hf = {tf: name for name, tf in tf_names.items()}
            raise ConversionError(f"{self.index_path}: {len(missing)} of GPT-2's tensors missing, e.g. {hf[missing[0]]} "
                                  f"(config.json says n_layer {h.n_layer})")
        if head is not None:
            self._check_tied_head(head, entries["model/wte"])
        return entries

    def _check_tied_head(self, head: Stored, wte: TensorEntry) -> None:
        """A tied head saved anyway (older saves) must be wte itself: its bytes compared in bounded pieces."""
        if head.encoding != "F32" or tuple(head.shape) != wte.shape or head.nbytes != wte.size:
            raise ConversionError(f"{head.path}: {head.name} is not wte's copy, yet config.json ties the head "
                                  "(tie_word_embeddings); refusing an ambiguous head")
        step = 8 << 20
        with open(head.path, "rb") as a, open(self.data_paths[wte.shard_id], "rb") as b:
            for pos in range(0, wte.size, step):
                a.seek(head.offset + pos)
                b.seek(wte.offset + pos)
                n = min(step, wte.size - pos)
                if a.read(n) != b.read(n):
                    raise ConversionError(f"{head.path}: {head.name} differs from wte, yet config.json ties the head "
                                          "(tie_word_embeddings); refusing an ambiguous head")
        self.ignored.append(head.name)

    def close(self) -> None:
        pass

    def __enter__(self) -> "HfCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _vocab(folder: Path) -> Vocab:
    """vocab.json + merges.txt (HF's names for encoder.json + vocab.bpe), read and checked now."""
    paths = [folder / name for name in VOCAB_FILES]
    if not all(p.is_file() for p in paths):
        missing = " and ".join(p.name for p in paths if not p.is_file())
        raise ConversionError(f"{folder}: no {missing} (the tokenizer files); an HF folder without them "
                              "is not supported yet")
    return Vocab.from_files(*paths)



SOURCE = SourceKind(name=KIND, rank=10, is_file=False, detect=is_hf_folder,
                    open=lambda path, options: HfCheckpoint(path),
                    accepts="a Hugging Face GPT-2 folder (config.json with model_type gpt2 + model.safetensors or "
                            "pytorch_model.bin)")
