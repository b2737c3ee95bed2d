"""Integrity of the original files: sizes and sha256 from the manifest (or pull's record), hparams, every tensor's CRC32C."""

from __future__ import annotations

from pathlib import Path

from .. import store
from ..errors import ChecksumError, Gpt2hubError
from ..integrity import FileCheck
from ..layout import HParams, is_model_tensor
from ..registry import FileRecord, sha256_file
from ..release import Release
from ..trust import HashStatus
from .report import IntegrityRow


def check_integrity(release: Release) -> list[IntegrityRow]:
    """Sizes and sha256 from the manifest (where known), hparams, and every tensor's CRC32C (read in chunks)."""
    from ..tfcheckpoint import KIND, Checkpoint

    folder = release.folder  # a one-file kind's file lies in it with the manifest's other files
    if release.manifest is None:
        checks = [IntegrityRow("manifest", True, "none for a folder: sizes and sha256 not checked (use --manifest)")]
    else:
        record = store.read_verified(release.name) if release.in_store else None
        pulled = record.files if record is not None else {}
        checks = [_file_row(rec, folder / rec.name, pulled.get(rec.name)) for rec in release.manifest.files]
    if release.kind != KIND:
        return checks + _source_rows(release)
    try:
        hparams = HParams.from_file(folder / "hparams.json")
        ckpt = Checkpoint(folder)
    except Gpt2hubError as e:
        return checks + [IntegrityRow("checkpoint", False, str(e))]
    if release.manifest is not None and hparams != release.manifest.hparams:
        checks.append(IntegrityRow("hparams.json", False,
                                   f"{hparams.to_dict()} != manifest {release.manifest.hparams.to_dict()}"))
    bad, n = [], 0
    for name in ckpt.entries:
        if not is_model_tensor(name):
            continue
        n += 1
        try:
            ckpt.verify(name)
        except ChecksumError:
            bad.append(name)
    detail = f"all {n} tensors match the index" if not bad else f"{len(bad)} of {n} tensors fail, e.g. {bad[0]}"
    checks.append(IntegrityRow("CRC32C", not bad, detail))
    return checks


def _source_rows(release: Release) -> list[IntegrityRow]:
    """A checkpoint of another kind (no CRC32C of its own; its files' sha256 are the rows above): opened as its
    kind, its hparams and tensor layout (names, shapes, encodings, byte ranges) as the manifest recorded at import."""
    from ..importing import tensor_row
    from ..original import open_original

    try:
        with open_original(release) as o:
            hparams, layout = o.hparams, [tensor_row(e, o.ckpt.data_paths) for e in o.ckpt.entries.values()]
    except Gpt2hubError as e:
        return [IntegrityRow("checkpoint", False, str(e))]
    m = release.manifest
    if m is None:
        return [IntegrityRow("checkpoint", True, f"opened as {release.kind}: {len(layout)} tensors")]
    rows = [IntegrityRow("hparams", hparams == m.hparams, "as the manifest records" if hparams == m.hparams
                         else f"{hparams.to_dict()} != manifest {m.hparams.to_dict()}")]
    recorded = {t["name"]: t for t in m.tensors}
    differ = [t["name"] for t in layout if recorded.get(t["name"]) != t]
    if len(recorded) != len(layout) or differ:
        first = differ[0] if differ else sorted(set(recorded) - {t["name"] for t in layout})[0]
        rows.append(IntegrityRow("checkpoint", False, f"opened as {release.kind}: the tensor layout differs from "
                                 f"the manifest's, e.g. {first}"))
    else:
        rows.append(IntegrityRow("checkpoint", True, f"opened as {release.kind}: all {len(layout)} tensors where "
                                 "the manifest records them"))
    return rows


def _file_row(rec: FileRecord, path: Path, info: FileCheck | None) -> IntegrityRow:
    """One manifest file against the manifest's size and sha256, else the sha256 pull measured (`info`: its record
    of the file), which catches damage since the pull and says what pull checked that one against."""
    if not path.is_file():
        return IntegrityRow(rec.name, False, "missing")
    size, status = path.stat().st_size, HashStatus(rec.status)
    if rec.size is not None and size != rec.size:
        unconfirmed = " (an expected size, not yet confirmed by anyone)" if status is HashStatus.EXPECTED else ""
        return IntegrityRow(rec.name, False, f"size {size:,}, manifest says {rec.size:,}{unconfirmed}")
    known, whose = rec.sha256, _whose_sha(status)
    if (known is None or not status.vouches) and info is not None and info.sha256 and info.size == size:
        known, whose = info.sha256, f"pull's record (pull checked it: {info.check.label})"
    if known:
        digest = sha256_file(path)
        ok = digest == known
        return IntegrityRow(rec.name, ok, f"sha256 matches {whose}" if ok else f"sha256 {digest} != {whose} {known}")
    return IntegrityRow(rec.name, True, f"size {size:,}" + (" matches (size only: not verified)" if rec.size is not None
                                                            else "; no sha256 known"))


def _whose_sha(status: HashStatus) -> str:
    """Whose sha256 a manifest's is, in the words of what a match counts as."""
    check = status.check
    return f"manifest ({check.label if check else 'not verified: an expected sha256'})"
