"""Proof before upload: every file's sha256, every original still what pull verified, every converted file
through the exact weight proof (or proven before, and unchanged since)."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import atomic, converters, hashes, store
from .errors import Gpt2hubError, MirrorError
from .mirror_plan import MirrorFile, MirrorReport, original_files
from .progress import ProgressEvent, Reporter, bytes_counter, emit
from .registry import ReleaseManifest

if TYPE_CHECKING:
    from .verification.outputs import Output

HASH_TASK = "sha256"
# Under the home: {absolute path: [size, mtime_ns, ctime_ns, source, sha256, how, when]} of converted files that passed
# the exact weight proof against the original `source` (its files' sha256 as pull recorded them); trusted while
# size, mtime and ctime are unchanged (as gpt2hub.hashes trusts its memo) and the original is the same.
PROOFS = Path(".cache") / "proven.json"


def check_files(report: MirrorReport, progress: Reporter | None) -> None:
    """sha256 of every local file (its metadata and skip key); an original must still match what pull verified,
    and every converted file must pass the exact weight proof (or have passed it, unchanged since)."""
    files, release = report.files, report.release
    converted = [f for f in files if f.source is not None and f.format in converters.names()]
    # The proof reads the original checkpoint: it must still be what pull verified, mirrored or not.
    sources = original_files(report.manifest) if converted and not any(f.format == "original" for f in files) else []
    record = store.read_verified(release)
    source = json.dumps({n: i.sha256 for n, i in sorted(record.files.items())} if record is not None else None)
    memo = _ProofMemo(store.home() / PROOFS, source)
    stamps = {}
    for f in converted:
        stamps[f.source] = _stamp(f.source)
        entry = memo.get(f.source, stamps[f.source])
        if entry is not None:  # proven before and unchanged since: neither proven nor hashed again
            f.sha256, f.check, f.checked_at = entry
    _hash_local([f for f in [*files, *sources] if f.source is not None and not f.sha256], release, progress)
    unproven = [f for f in converted if not f.check]
    if unproven:
        _prove(report.manifest, converted)
        for f in unproven:
            if _stamp(f.source) != stamps[f.source]:
                raise MirrorError(f"{f.source}: changed while it was being checked; not uploaded")
            memo.put(f.source, stamps[f.source], f.sha256, f.check, f.checked_at)
        memo.save()


def _hash_local(local: list[MirrorFile], release: str, progress: Reporter | None) -> None:
    """Each file's sha256 (from gpt2hub.hashes' memo where unchanged), checked against the one it must have."""
    for f in local:
        f.sha256 = hashes.known(f.source) or ""  # hashed before and unchanged since: not hashed again
    emit(progress, ProgressEvent.begin(HASH_TASK, sum(f.size for f in local if not f.sha256)))
    hashed = bytes_counter(progress, HASH_TASK)
    try:
        for f in local:
            if not f.sha256:
                f.sha256 = hashes.sha256(f.source, hashed)
            if f.expected is not None and f.sha256 != f.expected:
                raise MirrorError(f"{f.source}: sha256 {f.sha256} differs from the verified {f.expected}; "
                                  f"run `gpt2hub pull {release} --force`")
    finally:
        emit(progress, ProgressEvent.end(HASH_TASK))


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _outputs(m: ReleaseManifest, files: list[MirrorFile]) -> dict[Path, tuple[str, list[MirrorFile]]]:
    """Each converted output (a folder or a file) -> its format and the files of it to upload; a file that is
    part of no output convert wrote is refused."""
    found: dict[Path, tuple[str, list[MirrorFile]]] = {}
    for fmt in dict.fromkeys(f.format for f in files):
        form = converters.get(fmt)
        for out in form.outputs_in(store.release_dir(m.name, fmt)):
            if form.is_output(out):
                found[out] = (fmt, [])
    for f in files:
        out = next((o for o in found if f.source == o or o in f.source.parents), None)
        if out is None:
            raise MirrorError(f"{f.source}: not an output of `gpt2hub convert`, so nothing can check it; "
                              "not uploaded (remove it, or convert again)")
        found[out][1].append(f)
    return found


def _prove(m: ReleaseManifest, files: list[MirrorFile]) -> None:
    """Check every converted output that holds an unchecked file, all in one pass over the source (each source
    tensor read once): its tensors by verify's exact weight proof, its other files byte for byte as convert
    writes them. The first failure is a one-line MirrorError naming the file and what differs."""
    from .original import open_original
    from .release import locate
    from .verification.consumers import one_line
    from .verification.outputs import read_back
    from .verification.weights import prove

    outputs = {o: v for o, v in _outputs(m, files).items() if any(not f.check for f in v[1])}
    try:
        # the original as its kind reads it (OpenAI's layout, or an imported HF folder, ckpt.pt, .bin, .gguf)
        with open_original(locate(m.name, error=MirrorError, complete=False, kinds=None)) as source:
            hp, vocab = source.hparams, source.vocab
            read = []
            for out, (fmt, _) in outputs.items():
                try:
                    read.append(read_back(fmt, out, hp, vocab))
                except Exception as e:  # a damaged output: the reader's own error, in one line
                    raise MirrorError(f"{out}: not uploaded: it cannot be read back for the exact weight proof "
                                      f"({one_line(e)})") from None
            proofs = prove(source.ckpt, [(o.stored.tensors, o.stored.expected) for o in read])
    except Gpt2hubError as e:
        raise MirrorError(str(e)) from None
    except ImportError as e:  # f16/bf16 are checked with torch's rounding, block types with gguf-py's quantizer
        raise MirrorError(f"the exact weight proof of a conversion needs {e.name or 'a missing package'}: "
                          "pip install 'gpt2hub[torch]'") from None
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for o, proof in zip(read, proofs):
        if not proof.passed:
            detail = proof.detail()  # begins with the failing tensor's name, where one tensor failed
            where = next((s.path for name, s in o.stored.tensors.items() if re.match(re.escape(name) + r"[:\[ ]", detail)),
                         o.path)
            raise MirrorError(f"{where}: not uploaded: the exact weight proof failed: {detail}")
        if o.problems:
            raise MirrorError(f"{o.path}: not uploaded: its metadata differs from the release: {o.problems[0]}")
        fmt, members = outputs[o.path]
        side = _side_files(m, fmt, o.dtype, hp, vocab)
        _label_members(members, o, proof.detail(), side, converters.get(fmt).proof_reads)
        for f in members:
            f.checked_at = when


def _label_members(members: list[MirrorFile], output: Output, detail: str, side: dict[str, bytes],
                   proof_reads: tuple[str, ...]) -> None:
    """Say how each file of a proven `output` was checked: its tensors, a side file convert writes, or a file
    the proof read; any other file is refused."""
    tensor_files = {s.path.resolve() for s in output.stored.tensors.values()}
    for f in members:
        name = f.source.relative_to(output.path).as_posix() if f.source != output.path else f.source.name
        if f.source.resolve() in tensor_files:
            f.check = f"exact weight proof against the original checkpoint: {detail}"
        elif name in side:
            if f.source.read_bytes() != side[name]:
                raise MirrorError(f"{f.source}: not uploaded: differs from the {name} convert writes for this release")
            f.check = "identical to the file convert writes for this release"
        elif name in proof_reads:
            f.check = f"read and checked by the exact weight proof of {output.path.name}"
        else:
            raise MirrorError(f"{f.source}: not uploaded: not a file `gpt2hub convert` writes, so nothing "
                              "checked it (remove it, or convert again)")


def _side_files(m: ReleaseManifest, fmt: str, dtype: str, hp, vocab) -> dict[str, bytes]:
    """The files convert writes beside an output's weights (config, tokenizer), made again from the release
    (`vocab`: its vocabulary.Vocab, the original's own whatever its kind)."""
    write = converters.get(fmt).side_files
    if write is None:
        return {}
    from .version import __version__

    source = converters.ConvertInput(ckpt=None, hparams=hp, vocab=vocab, release=m.name, version=__version__,
                                     source_kind=m.kind)
    with tempfile.TemporaryDirectory(prefix="gpt2hub-mirror-") as tmp:
        write(source, Path(tmp), dtype)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


class _ProofMemo:
    """Converted files that passed the proof, by path, trusted while size, mtime and ctime are unchanged."""

    MAX_BYTES = 16 << 20  # ~300 bytes an entry: far more files than a store holds; a bigger file is not ours

    def __init__(self, path: Path, source: str):
        self.path, self.source = path, source
        try:
            data = json.loads(path.read_text()) if path.stat().st_size <= self.MAX_BYTES else {}
        except (OSError, ValueError, RecursionError):
            data = {}
        self.entries: dict = data if isinstance(data, dict) else {}

    def get(self, path: Path, stamp: list[int]) -> tuple[str, str, str] | None:
        """(sha256, how, when) if `path` was proven with this stamp."""
        e = self.entries.get(str(path.absolute()))
        if isinstance(e, list) and len(e) == 7 and e[:4] == [*stamp, self.source] \
                and all(isinstance(x, str) and x for x in e[4:]):
            return e[4], e[5], e[6]
        return None

    def put(self, path: Path, stamp: list[int], sha256: str, how: str, when: str) -> None:
        self.entries[str(path.absolute())] = [*stamp, self.source, sha256, how, when]

    def save(self) -> None:
        """Written for the next run; one that cannot be written costs a proof next time, nothing else."""
        try:
            self.entries = {p: e for p, e in self.entries.items() if os.path.exists(p)}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(self.path, self.entries, indent=None, sort_keys=True, durable=False)
        except (OSError, Gpt2hubError):
            pass
