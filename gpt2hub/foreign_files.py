"""Files that hold GPT-2's weights but are no checkpoint convert reads: one `.safetensors` file or one torch `.bin`
state dict with Hugging Face's GPT-2 names (with or without `transformer.`), and no config.json beside it; and a
finished output of a format no source kind reads (an ONNX folder), through the format's own read-back.

`StateDictFile` presents one as the source kinds present theirs (`.entries` {OpenAI's name: SourceTensor},
`.data_paths`, `.hparams`, `.vocab` None), so verify's foreign proofs read it the same way. Nothing is loaded:
names, shapes and byte ranges come from the safetensors header or the zip's pickle (a restricted unpickler, see
converters/hf.py), and hparams from the shapes (n_head is stored nowhere in such a file: said, never guessed silently).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

from .converters.hf import BLOCK_RULES, GLOBAL_RULES, safetensors_tensors, zip_tensors
from .converters import expand
from .errors import ConversionError
from .hf_source import CAUSAL_MASK, HEAD, MASKED_BIAS, PREFIX, check_buffer
from .layout import HParams, infer_hparams, tensor_shapes, SCOPE, HEAD_TENSOR
from .source_tensors import SourceTensor, matrix_shape, same_bytes, stored_shape as stored_layout
from .stored import ITEM_BYTES, Stored

SAFETENSORS_SUFFIX = ".safetensors"


def is_state_dict_file(path: Path) -> bool:
    """A .safetensors file, or a zip holding a torch pickle (data.pkl): from the content, not the name alone."""
    if not path.is_file():
        return False
    if path.suffix == SAFETENSORS_SUFFIX:
        return True
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _tensors(path: Path) -> list[Stored]:
    return safetensors_tensors(path) if path.suffix == SAFETENSORS_SUFFIX else zip_tensors(path)


class StateDictFile:
    """One HF-named state dict file read in place, as a source checkpoint: `.entries`, `.data_paths`,
    `.index_path`, `.hparams` (from the shapes), `.vocab` (None: such a file has none), `.hparams_from`,
    `.ignored` (buffers set aside, each checked), `.extra` (tensors that are no GPT-2 weight), `.problems`
    (what is wrong with the file's metadata, for the report), `.unknown` (hparams the file cannot say)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.data_paths = [self.path]
        self.index_path = self.path
        self.vocab = None
        self.notes: list[str] = []
        self.ignored: list[str] = []
        self.extra: list[str] = []
        self.problems: list[str] = []
        self.unknown = ("n_head",)
        self.hparams_from = "the tensor shapes (n_head is not stored in the file)"
        stored = {t.name.removeprefix(PREFIX): t for t in _tensors(self.path)}
        size = self.path.stat().st_size
        for t in stored.values():
            if t.encoding in ITEM_BYTES and t.nbytes != ITEM_BYTES[t.encoding] * math.prod(t.shape):
                raise ConversionError(f"{self.path}: {t.name} spans {t.nbytes} bytes, not the "
                                      f"{ITEM_BYTES[t.encoding] * math.prod(t.shape):,} of {t.encoding} {list(t.shape)}")
            if t.offset + t.nbytes > size:
                raise ConversionError(f"{self.path}: {t.name} needs bytes {t.offset}..{t.offset + t.nbytes} but the "
                                      f"file has {size} (truncated?)")
        self.hparams, self.entries = self._entries(stored)

    def _entries(self, stored: dict[str, Stored]) -> tuple[HParams, dict[str, SourceTensor]]:
        n_layer = len({n.split(".")[1] for n in stored if n.startswith("h.") and n.split(".")[1].isdigit()})
        rules = {r.name: tf for tf, r in expand(GLOBAL_RULES, BLOCK_RULES, n_layer).items()}
        shapes = {tf: tuple(stored[n].shape) for n, tf in rules.items() if n in stored}
        shapes = {tf: (1, *s) if tf.endswith("/w") else s for tf, s in shapes.items()}  # OpenAI's [1, in, out]
        try:
            h = infer_hparams(shapes)
        except ConversionError:
            raise ConversionError(f"{self.path}: no wte.weight and wpe.weight matrices (not a GPT-2 state dict)") from None
        fc = shapes.get(f"{SCOPE}h0/mlp/c_fc/w")
        if fc is not None and len(fc) == 3 and fc[2] != 4 * h.n_embd:
            h = HParams(**{**h.base().__dict__, "n_inner": fc[2]})
        head = stored.get(HEAD)
        untied = head is not None and not self._same_bytes(head, stored.get(GLOBAL_RULES["wte"].name))
        if untied:
            h = HParams(**{**h.__dict__, "tied": False})
        elif head is not None:
            self.ignored.append(head.name)
        want = tensor_shapes(h)
        entries: dict[str, SourceTensor] = {}
        layers = {str(i) for i in range(h.n_layer)}
        for name, t in stored.items():
            tf = rules.get(name) or (SCOPE + HEAD_TENSOR if name == HEAD and untied else None)
            if tf is None:
                if name.endswith((CAUSAL_MASK, MASKED_BIAS)) and name.split(".")[1] in layers:
                    try:
                        check_buffer(t, t.name, h.n_ctx)
                        self.ignored.append(t.name)
                    except ConversionError as e:
                        self.problems.append(str(e).removeprefix(f"{t.path}: "))
                elif name != HEAD:
                    self.extra.append(t.name)
                continue
            if t.encoding not in ("F32", "F16", "BF16"):
                raise ConversionError(f"{self.path}: {t.name} is stored as {t.encoding}, not a float type")
            if tuple(t.shape) != matrix_shape(want[tf]):
                flipped = tuple(t.shape) == matrix_shape(want[tf])[::-1]
                self.problems.append(f"{t.name} has shape {list(t.shape)}, GPT-2's is {list(matrix_shape(want[tf]))}"
                                     + (" (transposed)" if flipped else ""))
                continue
            entries[tf] = SourceTensor.at(tf, want[tf], 0, t.offset, t.encoding, False)
        missing = [n for n in want if n not in entries]
        if missing:
            self.problems.append(f"{len(missing)} of GPT-2's tensors missing, e.g. {missing[0]}")
        return h, entries

    def _same_bytes(self, a: Stored, b: Stored | None) -> bool:
        if b is None or a.shape != b.shape or a.encoding != b.encoding or a.nbytes != b.nbytes:
            return False
        if (a.path, a.offset) == (b.path, b.offset):  # torch.save of a tied model: one storage
            return True
        return same_bytes(a.path, a.offset, b.path, b.offset, a.nbytes)

    def close(self) -> None:
        pass


class OutputFile:
    """A finished output of one of gpt2hub's formats that no source kind reads (an ONNX folder, say), read through
    its format's own read-back (`Format.read_stored`: each tensor's encoding and byte range, and the release tensor
    it stands for), so it presents `.entries` as a source checkpoint does. The read-back needs the release it is
    proven against (its hparams name the tensors), and checks the format's metadata (tokenizer, eps): `.problems`."""

    def __init__(self, path: Path, fmt, hparams: HParams, vocab):
        self.path = Path(path)
        out = fmt.read_stored(self.path, hparams, vocab)
        self.index_path = self.path
        self.vocab = None  # the read-back compared the format's tokenizer with the release's: in .problems
        self.vocab_note = "the format's tokenizer files compared with the release's by its read-back" + \
            ("" if not out.problems else " (see below)")
        self.notes: list[str] = []
        self.ignored: list[str] = []
        self.extra: list[str] = []
        self.problems = list(out.problems)
        self.hparams_from = f"{fmt.looks_like}'s own metadata"
        config = out.config
        try:
            self.hparams = HParams(**{k: config[k] for k in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")},
                                   eps=config.get("eps", 1e-5), activation=config.get("activation", hparams.activation),
                                   tied=hparams.tied)
        except (KeyError, TypeError) as e:
            raise ConversionError(f"{self.path}: its metadata lacks {e}") from None
        self.data_paths: list[Path] = []
        self.entries: dict[str, SourceTensor] = {}
        shapes = tensor_shapes(hparams)
        for name, exp in out.expected.items():
            t = out.tensors.get(name)
            tf = exp.source if exp.source not in self.entries else SCOPE + HEAD_TENSOR
            if t is None:
                self.problems.append(f"{name} missing")
                continue
            if tf not in shapes or exp.zero_rows:
                self.extra.append(name)
                continue
            want = stored_layout(shapes[tf], exp.transpose)
            if tuple(t.shape) != want:
                self.problems.append(f"{name} has shape {list(t.shape)}, the release implies {list(want)}")
                continue
            if t.path not in self.data_paths:
                self.data_paths.append(t.path)
            entry = SourceTensor.at(tf, shapes[tf], self.data_paths.index(t.path), t.offset, t.encoding, exp.transpose)
            if entry.size != t.nbytes or t.offset + t.nbytes > t.path.stat().st_size:
                raise ConversionError(f"{t.path}: {name} ({t.nbytes:,} bytes at {t.offset:,}) does not fit its shape "
                                      "or the file")
            self.entries[tf] = entry

    def close(self) -> None:
        pass
