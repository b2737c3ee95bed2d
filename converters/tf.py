"""TensorFlow checkpoints in OpenAI's own layout: the folder openai/gpt-2's download_model.py fetches.

`model.ckpt.data-00000-of-00001`, `model.ckpt.index`, `checkpoint`, `hparams.json`, `encoder.json`,
`vocab.bpe`, and `model.ckpt.meta` where the source has one; OpenAI's variable names (`model/h0/attn/c_attn/w`),
Conv1D weights [1, in, out], float32. `tf.train.load_checkpoint`, openai/gpt-2's `src/model.py` and
gpt-2-simple load it.

The data file is what TF's SaveV2 writes: every variable's bytes, packed in bytewise-sorted name order (the
Saver sorts its variables by name), no padding. The index is the bundle header, then one entry per
variable (dtype, shape, offset, size, masked CRC32C), built by gpt2hub.tfwriter. The bytes are the
source's, copied by the kernel in runs; each entry's CRC32C is the one the source's index records for the
same bytes (computed where a source records none). So a release TensorFlow wrote comes back byte for byte:
data file and index alike (tests/test_tf_format.py). Variables that are not the model's (optimizer slots,
step counters of a training run) are left out; the meta graph is then not copied either, since it names
variables the output does not hold.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2hub import lazy, source_tensors
from gpt2hub.errors import CheckpointError, ConversionError
from gpt2hub.layout import HParams, tensor_shapes
from gpt2hub.sstable import mask_crc
from gpt2hub.stored import Expected, Stored, StoredOutput
from gpt2hub.tfbundle import TensorEntry

from . import ADDED_TOKENS, ConvertInput, Format, Progress, Weights, copy_runs, f32_size, matrix_shape
from . import hf

if TYPE_CHECKING:
    from gpt2hub.vocabulary import Vocab

np = lazy.module("numpy")  # loaded when a tensor is read back, not when the registry is read

PREFIX = "model.ckpt"
DATA = f"{PREFIX}.data-00000-of-00001"
INDEX = f"{PREFIX}.index"
META = f"{PREFIX}.meta"
STATE = "checkpoint"
HPARAMS = "hparams.json"
VOCAB_FILES = ("encoder.json", "vocab.bpe")
# OpenAI's `checkpoint` file (77 bytes), as TF's Saver(save_relative_paths=True) writes it.
CHECKPOINT_TEXT = b'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'
DT_FLOAT = 1  # tensorflow/core/framework/types.proto
LOADERS = "tf.train.load_checkpoint, openai/gpt-2's src/model.py and gpt-2-simple read variables only"


# --- writing ------------------------------------------------------------------------------------

def layout(source: ConvertInput) -> list[tuple[TensorEntry, TensorEntry]]:
    """(source entry, output entry) of every model tensor, in the output's order: bytewise-sorted names, packed."""
    out, offset = [], 0
    for e in sorted(source.entries(), key=lambda e: e.name.encode()):
        crc = e.crc32c or _crc_of(source, e)
        out.append((e, TensorEntry(e.name, DT_FLOAT, e.shape, 0, offset, f32_size(e), crc)))
        offset += f32_size(e)
    return out


def _crc_of(source: ConvertInput, e: TensorEntry) -> int:
    """The masked CRC32C of a tensor's float32 bytes, for a source that records none (TF always records one)."""
    from gpt2hub.sstable import crc32c
    from gpt2hub.tfcheckpoint import range_crc32c

    if source_tensors.is_plain(e):
        return mask_crc(range_crc32c(source.ckpt.data_paths[e.shard_id], e.offset, e.size, e.name))
    crc = 0
    for block in source_tensors.rows(source.ckpt.data_paths, e, transpose=False):
        crc = crc32c(memoryview(np.ascontiguousarray(block, "<f4")).cast("B"), crc)
    return mask_crc(crc)


def write(source: ConvertInput, out: Path, dtype: str, progress: Progress) -> list[str]:
    from gpt2hub.tfwriter import index_bytes

    pairs = layout(source)
    with open(out / DATA, "wb") as f:
        copy_runs(source, [src for src, _ in pairs], f, progress)
    (out / INDEX).write_bytes(index_bytes(e for _, e in pairs))
    write_side_files(source, out, dtype)
    return [_copy_meta(source, out)]


def _copy_meta(source: ConvertInput, out: Path) -> str:
    """Copy the source's meta graph when it describes exactly these variables; the line that says what was done."""
    prefix = getattr(source.ckpt, "prefix", None)
    meta = prefix.with_name(prefix.name + ".meta") if prefix is not None else None
    if meta is None or not meta.is_file():
        return f"{META}: none (the source has no meta graph; {LOADERS})"
    model = set(tensor_shapes(source.hparams))
    others = sorted(n for n in source.ckpt.entries if n not in model)
    if others:
        return (f"{META}: not copied: the source's names {len(others)} variables the output leaves out "
                f"(e.g. {others[0]}); {LOADERS}")
    shutil.copyfile(meta, out / META)
    return f"{META}: copied from {meta}"


def write_side_files(source: ConvertInput, out: Path, dtype: str) -> None:
    """The files beside the checkpoint, a function of the release alone: hparams, checkpoint state, vocabulary."""
    (out / HPARAMS).write_text(source.hparams.to_json(), encoding="utf-8")
    (out / STATE).write_bytes(CHECKPOINT_TEXT)
    shutil.copyfile(source.vocab.encoder_json, out / "encoder.json")
    shutil.copyfile(source.vocab.vocab_bpe, out / "vocab.bpe")


# --- reading a folder back ------------------------------------------------------------------------

def is_output(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in (INDEX, DATA, HPARAMS))


def _index(folder: Path) -> dict[str, TensorEntry]:
    """The folder's index entries; a one-line error for a bundle this format does not write (several shards)."""
    from gpt2hub.tfcheckpoint import read_index

    header, entries = read_index(folder / INDEX)
    if header.num_shards != 1:
        raise ConversionError(f"{folder / INDEX}: {header.num_shards} data shards; this format writes one")
    return entries


def read_dtype(folder: Path) -> str:
    entries = _index(folder)
    return "f32" if entries and all(e.dtype_code % 100 == DT_FLOAT for e in entries.values()) else "unknown"


def _config(folder: Path) -> dict:
    """GPTConfig's fields from hparams.json: the five numbers, and any variant field (GPT-2's value where absent)."""
    import dataclasses

    return dataclasses.asdict(HParams.from_file(folder / HPARAMS))


def read_weights(folder: Path) -> Weights:
    """The checkpoint in gpt2hub's reference names, Conv1D weights (in, out), float32 (memory-mapped)."""
    from gpt2hub.tfcheckpoint import Checkpoint

    config = _config(folder)
    names = hf.reference_names(config["n_layer"], config["tied"])
    ckpt = Checkpoint(folder / PREFIX)
    tensors = {}
    for tf_name, name in names.items():
        if tf_name not in ckpt:
            raise ConversionError(f"{folder / INDEX}: no tensor {tf_name}")
        a = ckpt.tensor(tf_name)
        tensors[name] = a.reshape(matrix_shape(a.shape))
    return Weights(config, tensors)


def read_stored(folder: Path, hparams: HParams, vocab: Vocab) -> StoredOutput:
    """Every tensor's byte range in the data file, each the source's float32 bytes unchanged; the index, the
    side files and a meta graph checked against the release (`vocab` names the release's original folder)."""
    entries = _index(folder)
    data = folder / DATA
    tensors, problems = {}, []
    for name, e in entries.items():
        encoding = "F32" if e.dtype_code % 100 == DT_FLOAT else e.dtype_name
        tensors[name] = Stored(name, encoding, matrix_shape(e.shape), data, e.offset, e.size)
    shapes = tensor_shapes(hparams)
    expected = {name: Expected(name, "F32") for name in shapes}
    wrong = [n for n in shapes if n in entries and entries[n].shape != shapes[n]]
    if wrong:
        problems.append(f"{INDEX}: {wrong[0]} has shape {list(entries[wrong[0]].shape)}, the release's is "
                        f"{list(shapes[wrong[0]])}")
    packed = sum(e.size for e in entries.values())
    if data.stat().st_size != packed:
        problems.append(f"{DATA}: {data.stat().st_size:,} bytes, its index packs {packed:,}")
    problems += _index_problems(folder, entries, vocab.encoder_json.parent)
    problems += _side_file_problems(folder, vocab)
    return StoredOutput("f32" if all(s.encoding == "F32" for s in tensors.values()) else "unknown",
                        _config(folder), tensors, expected, problems)


def _index_problems(folder: Path, entries: dict[str, TensorEntry], original: Path) -> list[str]:
    """The index against the one TF writes for these tensors: packed in sorted order, each CRC32C the release's."""
    from gpt2hub.tfcheckpoint import Checkpoint, range_crc32c

    source: dict[str, TensorEntry] = {}
    if any(original.glob("*.index")):  # a TF original: its CRCs are checked against its data by verify's integrity
        try:
            source = Checkpoint(original).entries
        except CheckpointError as e:
            return [f"{INDEX}: not compared with the release's ({e})"]
    offset = 0
    for name in sorted(entries, key=str.encode):
        e = entries[name]
        if e.offset != offset:
            return [f"{INDEX}: {name} at byte {e.offset:,}, SaveV2 packs it at {offset:,}"]
        offset += e.size
        # The proof shows the bytes are the release's, so the release's CRC is theirs; another original records
        # none, so the output's bytes are checked against the index here.
        want = source[name].crc32c if source.get(name) and source[name].crc32c else None
        if want is None:
            try:
                want = mask_crc(range_crc32c(folder / DATA, e.offset, e.size, name))
            except CheckpointError as err:  # a truncated data file
                return [str(err)]
        if e.crc32c != want:
            return [f"{INDEX}: {name}'s CRC32C {e.crc32c:08x} is not its bytes' {want:08x}"]
    return []


def _side_file_problems(folder: Path, vocab: Vocab) -> list[str]:
    """checkpoint, encoder.json, vocab.bpe and a meta graph as the release's (a missing meta graph is allowed)."""
    problems = []
    if not _same(folder / STATE, None):
        problems.append(f"{STATE}: not the state file TF's Saver writes for {PREFIX}")
    for name, release_file in zip(VOCAB_FILES, (vocab.encoder_json, vocab.vocab_bpe)):
        if not _same(folder / name, release_file):
            problems.append(f"{name}: differs from the release's")
    original_meta = vocab.encoder_json.parent / META
    if (folder / META).exists() and not _same(folder / META, original_meta):
        problems.append(f"{META}: differs from the release's" if original_meta.is_file()
                        else f"{META}: the release has none")
    return problems


def _same(path: Path, reference: Path | None) -> bool:
    """Whether a file holds the reference file's bytes (compared a block at a time), or CHECKPOINT_TEXT for None."""
    import filecmp

    try:
        if reference is None:
            return path.stat().st_size == len(CHECKPOINT_TEXT) and path.read_bytes() == CHECKPOINT_TEXT
        return path.is_file() and reference.is_file() and filecmp.cmp(path, reference, shallow=False)
    except OSError:
        return False


FORMAT = Format(name="tf", rank=60, dtypes=("f32",), default_dtype="f32", write=write, consumer="tensorflow",
                is_output=is_output, read_weights=read_weights, read_dtype=read_dtype, read_stored=read_stored,
                looks_like="a TF checkpoint folder", side_files=write_side_files,
                proof_reads=(INDEX, META), demo_dtypes=("f32",), hub_prefix="tf/", tags=("tensorflow",),
                # openai/gpt-2's src/model.py hardcodes these; its HParams refuses hparams.json keys it does not know
                cannot_hold={"n_inner": "openai/gpt-2's src/model.py assumes 4 * n_embd",
                             "eps": "openai/gpt-2's src/model.py normalizes with 1e-5",
                             "activation": "openai/gpt-2's src/model.py computes the tanh GELU",
                             "tied": "openai/gpt-2's src/model.py ties the head to wte",
                             "attn_scale_by_layer": "openai/gpt-2's src/model.py scales attention by 1/sqrt(head_dim) only",
                             ADDED_TOKENS: "OpenAI's encoder.json and vocab.bpe hold the BPE vocabulary only"})
