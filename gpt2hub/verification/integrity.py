"""Integrity of the original files: sizes and sha256 from the manifest (or pull's record), hparams, every tensor's CRC32C."""

from __future__ import annotations

from .. import store
from ..errors import ChecksumError, Gpt2hubError
from ..integrity import MEASURED_LABEL
from ..layout import HParams, is_model_tensor
from ..registry import sha256_file
from ..release import Release
from .report import Check


def check_integrity(release: Release) -> list[Check]:
    """Sizes and sha256 from the manifest (where known), hparams, and every tensor's CRC32C (read in chunks)."""
    from ..tfcheckpoint import Checkpoint

    checks: list[Check] = []
    folder = release.original
    if release.manifest is None:
        checks.append(Check("manifest", True, "none for a folder: sizes and sha256 not checked (use --manifest)"))
    else:
        record = store.read_verified(release.name) if release.in_store else None
        pulled = record.files if record is not None else {}
        whose_sha = {"published": "manifest (verified: published sha256)",
                     "measured": f"manifest ({MEASURED_LABEL})",
                     "shared": "manifest (verified: sha256 of 124M's identical published file)",
                     "mirror": "manifest (not verified: the mirror's own sha256 only)",
                     "expected": "manifest (not verified: an expected sha256)"}
        for rec in release.manifest.files:
            path = folder / rec.name
            if not path.is_file():
                checks.append(Check(rec.name, False, "missing"))
                continue
            size = path.stat().st_size
            if rec.size is not None and size != rec.size:
                checks.append(Check(rec.name, False, f"size {size:,}, manifest says {rec.size:,}"
                                    + (" (an expected size, not yet confirmed by anyone)" if rec.status == "expected" else "")))
                continue
            # sha256: the manifest's, else the one pull measured (catches damage since the pull), saying what
            # pull checked that one against.
            info = pulled.get(rec.name)
            known, whose = rec.sha256, whose_sha.get(rec.status, rec.status)
            if (known is None or rec.status in ("expected", "mirror")) and info is not None and info.sha256 \
                    and info.size == size:
                known, whose = info.sha256, f"pull's record (pull checked it: {info.check.label})"
            if known:
                digest = sha256_file(path)
                ok = digest == known
                checks.append(Check(rec.name, ok, f"sha256 matches {whose}" if ok else f"sha256 {digest} != {whose} {known}"))
            else:
                checks.append(Check(rec.name, True, f"size {size:,}" + (" matches (size only: not verified)"
                                                                        if rec.size is not None else "; no sha256 known")))
    try:
        hparams = HParams.from_file(folder / "hparams.json")
        ckpt = Checkpoint(folder)
    except Gpt2hubError as e:
        return checks + [Check("checkpoint", False, str(e))]
    if release.manifest is not None and hparams != release.manifest.hparams:
        checks.append(Check("hparams.json", False, f"{hparams.to_dict()} != manifest {release.manifest.hparams.to_dict()}"))
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
    checks.append(Check("CRC32C", not bad, detail))
    return checks
