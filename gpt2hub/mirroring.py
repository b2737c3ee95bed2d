"""Mirror a pulled release and its conversions to S3 (`s3://bucket/prefix`) or a Hub repo (`hf://org/repo`).

S3 layout, OpenAI's own plus what `gpt2hub pull --source s3://bucket/prefix` reads back:

    <prefix>/<folder>/<file>                    the original files (folder = manifest.folders[0])
    <prefix>/<folder>/<format>/<path>           each converted format, as `gpt2hub convert` wrote it
    <prefix>/<folder>/gpt2hub-manifest.json     the release manifest, uploaded last

Hub layout: the safetensors folder (and pytorch/GGUF files, as asked) at the repo root, the original
TF files under `original/`, and a generated README.md model card, all in one commit.

The plan is gpt2hub.mirror_plan, the proof before upload gpt2hub.mirror_proof, the uploads
gpt2hub.upload_s3 and gpt2hub.upload_hub.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import offline, registry, upload_hub, upload_s3
from .errors import MirrorError
from .mirror_plan import MirrorReport, local_files, parse_destination, select_formats
from .progress import Reporter


def mirror(
    name: str,
    dest: str,
    *,
    formats: list[str] | tuple[str, ...] | None = None,
    endpoint_url: str | None = None,
    dry_run: bool = False,
    private: bool = False,
    revision: str | None = None,
    manifest: Path | str | None = None,
    progress: Reporter | None = None,
    part_size: int | None = None,
) -> MirrorReport:
    """Upload a pulled release (and its conversions) to `dest` (see gpt2hub.mirror)."""
    offline.refuse(f"mirror to {dest}")
    part_size = part_size or upload_s3.PART_SIZE
    m = registry.resolve(name, manifest)
    where = parse_destination(dest)
    if where.scheme == "s3" and (private or revision):
        raise MirrorError(f"{where}: --private and --revision apply to hf:// destinations only")
    fmts = select_formats(m, where, formats)
    files = local_files(m, where, fmts)  # cheap checks first; hashing waits until the destination answered
    report = MirrorReport(m.name, str(where), fmts, dry_run, files, manifest=m)
    started = time.monotonic()
    if where.scheme == "s3":
        upload_s3.upload(report, where, endpoint_url, dry_run, progress, part_size)
    else:
        upload_hub.upload(report, m, where, endpoint_url, dry_run, private, revision, progress)
    report.seconds = time.monotonic() - started
    return report
