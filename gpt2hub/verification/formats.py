"""Everything verify knows per output format, in this one module keyed by format name: which consumer loads
it, how its tensors are read back (without its consumer, in bounded memory), which tensors and encodings
the source implies, its metadata, and its tokenizer. When converters/ declares these, this module goes.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConversionError, Gpt2hubError
from ..layout import HParams
from ..release import Release
from .weights import Expected, Stored

# The program people load each format with.
CONSUMERS = {"safetensors": "transformers", "pytorch": "transformers", "gguf": "llama.cpp"}
HF_FORMATS = ("safetensors", "pytorch")
EPS = 1e-5  # openai/gpt-2 src/model.py norm()
# safetensors dtype / torch storage type -> encoding (gguf-py's GGMLQuantizationType names)
SAFETENSORS_ENCODINGS = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
STORAGE_ENCODINGS = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16"}
HF_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
# config.json keys that change GPT-2's semantics in transformers, and the value OpenAI's model needs (HF default if absent)
HF_SEMANTICS = {"tie_word_embeddings": True, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}


@dataclass
class Output:
    """One converted output as read back: the dtype it declares, its tensors, and its metadata facts."""

    format: str
    path: Path
    dtype: str
    consumer: str
    tensors: dict[str, Stored] = field(default_factory=dict)
    expected: dict[str, Expected] = field(default_factory=dict)
    metadata: list[tuple[bool, str]] = field(default_factory=list)  # (ok, fact)


def converted_outputs(release: Release, formats: Sequence[str]) -> list[tuple[str, Path | None]]:
    """(format, path) for each requested converted format, one per .gguf file; (format, None) if absent."""
    out: list[tuple[str, Path | None]] = []
    for fmt in formats:
        if fmt == "original":
            continue
        paths = release.output_paths(fmt)
        found = [p for p in paths if p.suffix == ".gguf" or (p / "config.json").is_file()]
        out.extend((fmt, p) for p in found) if found else out.append((fmt, None))
    return out


def declared_dtype(fmt: str, path: Path) -> str:
    """The dtype an output says it holds (config.json's torch_dtype; GGUF's general.file_type)."""
    if fmt == "gguf":
        import gguf

        return _gguf_dtype(gguf.GGUFReader(path))
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return "f32"
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return HF_DTYPES.get(name, name)


def read_back(fmt: str, path: Path, hparams: HParams, folder: Path) -> Output:
    """An output's tensors (where they are stored) and metadata facts, without loading the weights."""
    out = Output(fmt, path, "-", CONSUMERS[fmt])
    if fmt == "gguf":
        _read_gguf(out, hparams, folder)
    else:
        _read_hf(out, hparams)
    return out


# --- the Hugging Face folders (safetensors, pytorch) ------------------------------------------------

def _hf_expected(n_layer: int, encoding: str) -> dict[str, Expected]:
    from ..model import _rules

    return {rule.name: Expected(tf, encoding, rule.transpose) for tf, rule in _rules("hf", n_layer).items()}


def _read_hf(out: Output, h: HParams) -> None:
    from ..model import ACTIVATIONS, _hf_weight_files, hf_config

    folder = out.path
    out.dtype = declared_dtype(out.format, folder)
    cfg = hf_config(folder)
    config = json.loads((folder / "config.json").read_text())
    _compare_config(out, cfg, h, "config.json")
    if ACTIVATIONS[cfg.activation] != "tanh":
        out.metadata.append((False, f"activation_function {cfg.activation!r} is not GPT-2's tanh GELU"))
    for key, want in HF_SEMANTICS.items():
        if config.get(key, want) != want:
            out.metadata.append((False, f"{key} is {config[key]!r}, GPT-2 needs {want!r}"))
    encoding = {"f32": "F32", "f16": "F16", "bf16": "BF16"}.get(out.dtype, out.dtype)
    out.expected = _hf_expected(h.n_layer, encoding)
    for path in _hf_weight_files(folder):
        tensors = _safetensors_tensors(path) if path.suffix == ".safetensors" else _torch_zip_tensors(path)
        for t in tensors:
            name = t.name.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # causal-mask buffers: not weights
            out.tensors[name] = Stored(name, t.encoding, t.shape, t.path, t.offset, t.nbytes)


def _safetensors_tensors(path: Path) -> list[Stored]:
    """Read the header only (8-byte length, JSON); the bytes are read later, by range."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file (named in the shard index)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, 100 << 20):
            raise ConversionError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ConversionError(f"{path}: safetensors header is not JSON ({e})") from None
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] not in SAFETENSORS_ENCODINGS or not 0 <= start <= end:
            raise ConversionError(f"{path}: {name}: dtype {info['dtype']} or byte range {start}..{end} is not readable")
        tensors.append(Stored(name, SAFETENSORS_ENCODINGS[info["dtype"]], tuple(info["shape"]), path, 8 + n + start, end - start))
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


class _StateDictUnpickler(pickle.Unpickler):
    """data.pkl of torch.save, read to (storage key, type, shape) without torch and without touching the data:
    torch.load(mmap=True) would keep every page it reads resident. Anything but a plain state dict is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_ENCODINGS:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain state dict")

    def persistent_load(self, pid):
        return tuple(pid)


def _torch_zip_tensors(path: Path) -> list[Stored]:
    if not path.is_file():
        raise ConversionError(f"{path}: no such file (named in the shard index)")
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            names = zf.namelist()
            pkl = next((n for n in names if n.endswith("/data.pkl")), None)
            if pkl is None:
                raise ConversionError(f"{path}: no data.pkl (not a torch.save zip)")
            state = _StateDictUnpickler(zf.open(pkl)).load()
            stem = pkl[: -len("data.pkl")]
            tensors = []
            for name, ref in state.items():
                info = zf.getinfo(f"{stem}data/{ref.key}")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ConversionError(f"{path}: {name} is compressed (torch.save stores records)")
                raw.seek(info.header_offset + 26)
                name_len, extra_len = struct.unpack("<HH", raw.read(4))
                start = info.header_offset + 30 + name_len + extra_len
                item = {"F32": 4, "F16": 2, "BF16": 2}[ref.encoding]
                contiguous = tuple(int(math.prod(ref.shape[i + 1:])) for i in range(len(ref.shape)))
                if ref.stride != contiguous:
                    raise ConversionError(f"{path}: {name} is not stored contiguously (stride {list(ref.stride)})")
                nbytes = item * int(math.prod(ref.shape))
                if (ref.offset + int(math.prod(ref.shape))) * item > info.file_size:
                    raise ConversionError(f"{path}: {name} runs past its storage record")
                tensors.append(Stored(name, ref.encoding, ref.shape, path, start + ref.offset * item, nbytes))
            return tensors
    except (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, ValueError, EOFError, struct.error) as e:
        raise ConversionError(f"{path}: not a PyTorch state dict ({type(e).__name__}: {e})") from None


# --- GGUF -------------------------------------------------------------------------------------------

def _gguf_dtype(reader) -> str:
    import gguf

    from ..converters.gguf import DTYPES

    f = reader.get_field("general.file_type")
    by_file_type = {int(gguf.LlamaFileType[ft]): d for d, (_, ft) in DTYPES.items()}
    if f is not None and int(f.contents()) in by_file_type:
        return by_file_type[int(f.contents())]
    types = [t.tensor_type.name.lower() for t in reader.tensors if len(t.shape) == 2]
    return max(set(types), key=types.count) if types else "unknown"


def _read_gguf(out: Output, h: HParams, folder: Path) -> None:
    import gguf

    from ..converters import Vocab
    from ..converters.gguf import DTYPES, UNTIED_OUTPUT
    from ..model import _rules, gguf_config

    try:
        reader = gguf.GGUFReader(out.path)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{out.path}: not a GGUF file ({e})") from None
    out.dtype = _gguf_dtype(reader)
    _compare_config(out, gguf_config(reader, str(out.path)), h, "metadata")
    weight_type = DTYPES[out.dtype][0] if out.dtype in DTYPES else out.dtype.upper()
    rules = _rules("gguf", h.n_layer)
    out.expected = {r.name: Expected(tf, "F32" if r.keep_f32 else weight_type, r.transpose) for tf, r in rules.items()}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims ne0 first
        out.tensors[t.name] = Stored(t.name, t.tensor_type.name, shape, out.path, int(t.data_offset), int(t.n_bytes))
    if UNTIED_OUTPUT.name in out.tensors:  # --untie: a copy of wte
        out.expected[UNTIED_OUTPUT.name] = Expected("model/wte", weight_type, False)
    try:
        vocab = Vocab.from_folder(folder)
    except Gpt2hubError as e:
        out.metadata.append((False, f"vocabulary: {e}"))
        return
    for key, want in (("tokenizer.ggml.tokens", vocab.tokens), ("tokenizer.ggml.merges", vocab.merges)):
        f = reader.get_field(key)
        got = f.contents() if f is not None else None
        if got != want:
            where = "missing" if got is None else f"{len(got)} entries" if len(got) != len(want) else \
                f"entry {next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)} differs"
            out.metadata.append((False, f"{key}: {where}; encoder.json/vocab.bpe have {len(want)}"))
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        f = reader.get_field(key)
        if f is None or int(f.contents()) != vocab.eot_id:
            out.metadata.append((False, f"{key} is {f.contents() if f else None}, <|endoftext|> is {vocab.eot_id}"))


def _compare_config(out: Output, cfg, h: HParams, where: str) -> None:
    want = {"n_vocab": h.n_vocab, "n_ctx": h.n_ctx, "n_embd": h.n_embd, "n_head": h.n_head, "n_layer": h.n_layer, "eps": EPS}
    for key, value in want.items():
        got = getattr(cfg, key)
        if (got != value) if key != "eps" else (np.float32(got) != np.float32(value)):  # GGUF stores eps as f32
            out.metadata.append((False, f"{where}: {key} is {got}, the release has {value}"))


# --- tokenizers ------------------------------------------------------------------------------------

def _tokenizers_json(path: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids


def tokenizer_of(fmt: str, path: Path):
    """(tokenizer name, its file, ids(file, text)) of an output's own tokenizer, or None if it cannot be run here."""
    import importlib.util

    from .consumers import installed, llama_tokenize

    if fmt in HF_FORMATS and (path / "tokenizer.json").is_file() and importlib.util.find_spec("tokenizers"):
        return "tokenizers", path / "tokenizer.json", _tokenizers_json
    if fmt == "gguf" and installed("llama.cpp"):
        return "llama.cpp", path, llama_tokenize
    return None
