"""Mirror uploads to a Hugging Face Hub repo: the planned files and a generated model card, in one commit."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from . import modelcard, settings, store
from .errors import MirrorError
from .mirror_plan import HUB_PREFIX, Destination, MirrorReport, generated_file
from .mirror_proof import check_files
from .progress import Reporter, TerminalProgress
from .registry import ReleaseManifest

HUB_CARD = "README.md"
HF_ENDPOINT = "HF_ENDPOINT"  # huggingface_hub's own; read per call, as huggingface_hub reads it only on import


def upload(report: MirrorReport, m: ReleaseManifest, where: Destination, endpoint_url: str | None,
           dry_run: bool, private: bool, revision: str | None, progress: Reporter | None) -> None:
    """Check the token, prove the files, write the card, then commit everything to the repo (and branch)."""
    token = None
    if not dry_run:
        from huggingface_hub import get_token

        token = get_token()
        if not token:
            raise MirrorError(f"{where}: no Hugging Face token; set HF_TOKEN or run `hf auth login`")
    check_files(report, progress)
    originals = {f.dest.removeprefix(HUB_PREFIX["original"]): f.sha256 for f in report.files if f.format == "original"}
    if not originals:  # the card names the release's hashes even when the original files stay home
        originals = {r.name: r.sha256 for r in m.files if r.sha256}
    report.files.append(generated_file(HUB_CARD, _card(report, m, originals).encode(), "card"))
    if dry_run:
        return
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint_url or settings.library(HF_ENDPOINT), token=token)
    repo_id = where.bucket_or_repo
    ops = [CommitOperationAdd(path_in_repo=f.dest, path_or_fileobj=str(f.source) if f.source else f.data)
           for f in report.files]
    with _progress_bars(progress), _hub_errors(where, api.endpoint):
        api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.create_commit(
            repo_id, ops, repo_type="model", revision=revision,
            commit_message=f"GPT-2 {m.name} ({', '.join(report.formats)}), mirrored with gpt2hub",
            commit_description=f"Release {m.name}; original sha256: "
                               + ", ".join(f"{k}={v}" for k, v in sorted(originals.items())),
        )
    report.commit = info.oid
    report.bytes_sent = None
    for f in report.files:
        f.action = "committed"


def _card(report: MirrorReport, m: ReleaseManifest, originals: dict[str, str]) -> str:
    """README.md for the repo: the release, the files sent, and how each was checked."""
    record = store.read_verified(m.name)
    return modelcard.render(m, report.formats, originals, {f.dest: f.size for f in report.files},
                            checks={f.dest: (f.check, f.checked_at) for f in report.files if f.check},
                            pulled=record.files if record is not None else {})


@contextmanager
def _progress_bars(progress: Reporter | None) -> Iterator[None]:
    """huggingface_hub draws its own bars only where the terminal reporter draws ours; turned off here, they
    are turned back on after, and a caller's own choice to turn them off is left as it was."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    quiet = not (isinstance(progress, TerminalProgress) and progress.bars) and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet:
            enable_progress_bars()


@contextmanager
def _hub_errors(where: Destination, endpoint: str) -> Iterator[None]:
    """Turn huggingface_hub's and its HTTP client's exceptions into one line; the token never appears in them."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:  # huggingface_hub 2.x sends through httpx2, 1.x through httpx
        from httpx2 import TransportError
    except ImportError:
        from httpx import TransportError

    try:
        yield
    except RepositoryNotFoundError:
        raise MirrorError(f"{where}: no such repo, or the token may not write to it") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise MirrorError(f"{where}: the Hub at {endpoint} rejected the token (401); check HF_TOKEN or `hf auth login`") from None
        if status == 403:
            raise MirrorError(f"{where}: access denied (403); the token needs write access to this repo") from None
        raise MirrorError(f"{where}: the Hub answered {status}: {str(e).splitlines()[0]}") from None
    except TransportError as e:
        raise MirrorError(f"{where}: cannot connect to the Hub at {endpoint} ({type(e).__name__})") from None
    except RuntimeError as e:  # huggingface_hub wraps a failed LFS upload: report its cause too
        cause = e.__cause__
        detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0]})" if cause and str(cause) else ""
        raise MirrorError(f"{where}: {str(e).splitlines()[0]}{detail}") from None
    except ValueError as e:  # the Hub's README metadata validation, among others
        raise MirrorError(f"{where}: {str(e).splitlines()[0]}") from None
