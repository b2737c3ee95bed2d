"""gpt2hub: OpenAI's original GPT-2 release, pulled intact and converted to today's formats.

The API mirrors the CLI: pull, convert, verify, sample, sample_interactive, mirror and run_demo each
return a result object, and take one reporting hook, `progress` (see gpt2hub.progress): None reports
nothing, `gpt2hub.progress.TerminalProgress()` draws what the CLI draws. Each loads its module on
first call, so `import gpt2hub` stays light; no module is named like a function here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .errors import Gpt2hubError
from .progress import ProgressEvent, Reporter
from .registry import ReleaseManifest, create_manifest, releases, resolve
from .version import __version__
from . import settings, source_kinds, store

SOURCE_KINDS = source_kinds.names()  # what convert reads, --from's choices (gpt2hub.source_kinds)

if TYPE_CHECKING:
    from .conversion import ConversionReport
    from .demo import DemoReport
    from .mirroring import MirrorReport
    from .housekeeping import Removal, Usage
    from .hub_pull import HubPullResult
    from .importing import ImportResult
    from .pulling import PullPlan, PullResult
    from .sampling import Samples
    from .tiktoken_cache import TiktokenReport
    from .verifying import ForeignProof, Report


def __getattr__(name: str):
    if name == "Checkpoint":  # numpy behind it: loaded on first use
        from .tfcheckpoint import Checkpoint

        return Checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_releases() -> list[dict]:
    """Every known release with its download size, local state and bytes on disk."""
    from .housekeeping import release_bytes

    return [{**store.status(m), "disk_bytes": release_bytes(m.name)} for m in releases()]


def info(name: str, manifest: Path | str | None = None) -> ReleaseManifest:
    """The manifest of a release, by name or alias."""
    return resolve(name, manifest)


def path(name: str, fmt: str = "original", manifest: Path | str | None = None) -> Path:
    """Where one format of a release lives (whether or not it is there yet)."""
    return store.release_dir(resolve(name, manifest).name, fmt)


def remove(name: str, formats: Sequence[str] | None = None, dtype: str | None = None, everything: bool = False,
           dry_run: bool = False) -> Removal:
    """Remove a release's conversions from the store (default: all, keeping the original), or the given formats,
    or with everything=True the whole release; dtype narrows to outputs of that weight type.

    Only what gpt2hub wrote is removed, never through a symbolic link, never while a pull of it runs.
    dry_run: remove nothing. Returns a Removal: .removed (each path and its bytes), .kept, .freed.
    """
    from .housekeeping import remove as run

    return run(name, formats, dtype, everything, dry_run)


def disk_usage(name: str | None = None) -> list[Usage]:
    """Bytes on disk of one release (or of every release in the store), per format and per file."""
    from .housekeeping import usages

    return usages(name)


def pull(name: str, *, manifest: Path | str | None = None, sources: Sequence[str] | str = (), endpoint_url: str | None = None,
         connections: int = settings.CONNECTIONS, verify: bool = False, force: bool = False, only: Sequence[str] = (),
         to: Path | str | None = None, dry_run: bool = False,
         progress: Reporter | None = None, public_mirrors: bool = True,
         as_name: str | None = None) -> PullResult | PullPlan | HubPullResult:
    """Fetch and verify every file of a release into <home>/<name>/original/; a verified release is a quick no-op.

    name: a release or alias, or a release a `sources` mirror publishes a manifest for; or hf://ORG/REPO[@REVISION],
        a Hugging Face Hub repo whose config, weights and tokenizer are fetched, each LFS file checked against the
        sha256 the Hub lists (every other file against its git blob id), and imported as release `as_name`
        (default: REPO); `connections`, `force` and `progress` apply, and `endpoint_url` is the Hub's (else
        $HF_ENDPOINT). Returns a HubPullResult: .commit, .files (what each was checked against), .imported.
    manifest: a manifest file to use instead of looking `name` up.
    sources: base URLs, s3://bucket/prefix or folders laid out <src>/<folder>/<file>, tried first, in order.
    endpoint_url: the S3-compatible endpoint for s3:// sources.
    connections: parallel ranges per file.
    verify: re-hash files already pulled instead of trusting their recorded sizes.
    force: download again even if the release is verified.
    only: some files: "tokenizer" (encoder.json, vocab.bpe), "model" (every other file) or file names.
    to: a folder of your own to put the release in, in OpenAI's layout (its record and lock go there too).
    dry_run: touch no file; return a PullPlan: what would be fetched, from which source, what is already there.
    progress: the reporting hook: byte tasks "total" and one per file (parent "total"); warnings as messages.
    public_mirrors: False (or $GPT2HUB_NO_PUBLIC_MIRRORS=1): never fall back to the public third-party copies.
    Returns a PullResult: .path, .files (each with its size, sha256 and what it was checked against: .check,
    .against, .verified), .verified, .warnings.
    Offline (GPT2HUB_OFFLINE=1): only folder sources are used; anything else is one OfflineError.
    """
    from .hub_pull import is_hub, pull_hub
    from .pulling import pull as run

    if is_hub(name):
        asked = [o for o, v in (("manifest", manifest), ("sources", sources), ("only", only), ("to", to),
                                ("dry_run", dry_run), ("verify", verify)) if v]
        if asked:
            raise Gpt2hubError(f"pull {name[:80]}: {', '.join(asked)} apply to gpt2hub releases, not to a Hub repo")
        return pull_hub(name, name=as_name, endpoint_url=endpoint_url, connections=connections, force=force,
                        progress=progress)
    if as_name is not None:
        raise Gpt2hubError("--name applies to pull hf://ORG/REPO only")
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    return run(name, manifest=manifest, sources=sources, endpoint_url=endpoint_url, connections=connections,
               verify=verify, force=force, only=tuple(only), to=to, dry_run=dry_run, progress=progress,
               public_mirrors=public_mirrors)


def import_checkpoint(path: str | Path, name: str, *, from_: str | None = None, force: bool = False,
                      vocab: Path | str | None = None, link: bool = False,
                      progress: Reporter | None = None) -> ImportResult:
    """Put a checkpoint of any kind in the store as a release of its own, <home>/<name>/original/ + its manifest.

    path: a checkpoint of any kind in SOURCE_KINDS (a folder or a file), opened first: every refusal before a byte lands.
    name: the release name: a plain folder name that is not a shipped release's name or alias.
    from_: read `path` as this kind (None: detected from its content). force: replace a release of this name
        (and remove its conversions). vocab: as for convert.
    link: hard-link the files instead of copying them (same file system only; the store's copy then changes if
        you rewrite your file in place, which `verify` reports against the sha256 recorded here).
    progress: the reporting hook: one byte task "import".
    Returns an ImportResult: .path, .manifest, .kind, .files (each with its size and measured sha256), .hparams.
    Then list, info, convert, verify, sample, mirror, rm and du take `name` as they take OpenAI's releases.
    """
    from .importing import import_checkpoint as run

    return run(path, name, from_=from_, force=force, vocab=vocab, link=link, progress=progress)


def convert(name_or_dir: str | Path | None = None, to: str | None = None, dtype: str | None = None,
            out: Path | str | None = None, force: bool = False, *, untie: bool = False,
            hparams: Path | str | None = None, manifest: Path | str | None = None,
            progress: Reporter | None = None, from_: str | None = None, vocab: Path | str | None = None,
            allow_approximate_activation: bool = False) -> ConversionReport:
    """Convert a release to another format in bounded memory; nothing is written on a bad input.

    name_or_dir: a pulled release's name, a checkpoint of any kind in SOURCE_KINDS (a TF checkpoint folder, a
        Hugging Face GPT-2 folder, ...: a folder or a file), or None for the only release pulled.
    to: a format of gpt2hub.converters.names() (None: converters.DEFAULT).
    dtype: one of that format's dtypes (None: its default).
    out: the output path, or a folder to put a one-file output in (None: the store, or beside a folder).
    force: replace an existing output, only once the new one is complete.
    untie: formats that allow it write the output head rather than tie it to the token embedding.
    hparams: an hparams.json to use (else the folder's, the manifest's, or inferred from the shapes).
    manifest: a manifest file describing the release.
    progress: the reporting hook: one byte task "<format> <dtype>" over the tensors read.
    from_: a name of SOURCE_KINDS to read the path as that kind (None: detected from its content).
    vocab: a folder with GPT-2's encoder.json + vocab.bpe, for a source that carries no vocabulary.
    allow_approximate_activation: convert a model whose activation the target only approximates (exact GELU into
        gguf or llmc: both compute the tanh form); the output records it and verify measures the gap. Any other
        field a target cannot hold is refused in one line naming it.
    Returns a ConversionReport: .path, .format, .dtype, .tensors, .hparams and where they came from, and
    .notes (e.g. which ggml type llama.cpp gave each tensor of a K-quant mix).
    """
    from .conversion import convert as run

    return run(name_or_dir, to, dtype, out, force, untie=untie, hparams=hparams, manifest=manifest, progress=progress,
               from_=from_, vocab=vocab, allow_approximate_activation=allow_approximate_activation)


def verify(name_or_dir: str | Path | None = None, *, formats: Sequence[str] | str | None = None, device: str = "cpu",
           prompt: str | None = None, tokens: int | None = None, manifest: Path | str | None = None,
           progress: Reporter | None = None) -> Report:
    """Check the original files, then every format's logits against the reference through its real consumer.

    name_or_dir: a pulled release's name, a TF checkpoint folder, or None for the only release pulled.
    formats: the formats to check, a list or "a,b" (None: every one present).
    device: cpu, cuda or cuda:N for the PyTorch consumers.
    prompt: the text whose logits are compared (None: a fixed paragraph); excludes `tokens`.
    tokens: compare on this many seeded random token ids instead.
    manifest: a manifest file describing the release.
    progress: the reporting hook: each step as a message.
    Returns a Report: .integrity checks, .rows per output, .tokenization, .passed, .to_text().
    """
    from .verifying import verify as run

    return run(name_or_dir, formats=formats, device=device, prompt=prompt, tokens=tokens, manifest=manifest,
               progress=progress)


def verify_against(path: str | Path, against: str | None = None, *, logits: bool = True,
                   device: str = "cpu", progress: Reporter | None = None) -> ForeignProof:
    """Prove a GPT-2 file or folder anyone wrote against a release on disk, tensor by tensor, to a one-line verdict.

    path: any checkpoint of SOURCE_KINDS (an HF folder, a GGUF, ...) or one .safetensors/.bin state dict; or
        hf://ORG/REPO[@REVISION]: its files fetched into the store's cache (each the Hub's hash; kept, so a second
        verify downloads nothing; `progress` shows the transfer) and proven as an HF folder: a RemoteProof, whose
        .hub lists the files and what vouched for each and .proof is the ForeignProof.
    against: a release on disk, by name or folder (None: each release on disk whose shapes the file has).
    logits: then run a file whose tensors pass through its own consumer (transformers, llama.cpp, onnxruntime)
        against the release's float64 reference: NMSE (llama.cpp's bands), KL, top-1/top-5. device: for torch.
    Returns a ForeignProof: .tensors (each identical / rounded / blocks identical / within bound / differs, with
    max |delta|, relative error and NMSE), .metadata, .verdict (one line), .passed, .to_text(), .to_dict().
    """
    from .verifying import verify_against as run

    return run(path, against, logits=logits, device=device, progress=progress)


def is_foreign_path(target: str | Path) -> bool:
    """Whether `verify TARGET` names a file or folder to prove against a release (an HF folder, a GGUF, a state dict
    file, ...) rather than a release itself (a name, an OpenAI checkpoint folder, a release root holding original/)."""
    from .hub_pull import is_hub
    from .verification.foreign import is_foreign

    return (isinstance(target, str) and is_hub(target)) or is_foreign(target)


def sample(name_or_dir: str | Path | None = None, *, prompt: str | None = None, nsamples: int = 1,
           length: int | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           seed: int | None = None, device: str = "cpu", manifest: Path | str | None = None,
           progress: Reporter | None = None) -> Samples:
    """Sample text as openai/gpt-2's scripts do, with the KV cache, stopping at <|endoftext|>.

    name_or_dir: a pulled release's name, a TF checkpoint folder, or None for the only release pulled.
    prompt: the text to continue (None: unconditional, from <|endoftext|>).
    nsamples: samples to draw (0: until interrupted).
    length: tokens per sample (None: n_ctx/2 with a prompt, else n_ctx-1).
    temperature, top_k, top_p: openai's sampling (temperature 0: greedy; top_k 0 and top_p 1: no cut).
    seed: sample i uses seed + i, so a seed gives the same texts on the same device.
    device: cpu, cuda or cuda:N. manifest: a manifest file describing the release.
    progress: the reporting hook: the text as `output` events as it is generated, with openai's headers.
    Returns Samples: .texts (without their prompts).
    """
    from .sampling import sample as run

    return run(name_or_dir, prompt=prompt, nsamples=nsamples, length=length, temperature=temperature, top_k=top_k,
               top_p=top_p, seed=seed, device=device, manifest=manifest, progress=progress)


def sample_interactive(name_or_dir: str | Path | None = None, *, read: Callable[[str], str] = input,
                       nsamples: int = 1, length: int | None = None, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0, seed: int | None = None, device: str = "cpu",
                       manifest: Path | str | None = None, progress: Reporter | None = None) -> Samples:
    """openai's interactive_conditional_samples: each prompt `read` returns is continued, until EOFError.

    read: called with the prompt text "Model prompt >>> "; returns one prompt (default: input).
    Every other parameter is as for gpt2hub.sample; an empty prompt is reported and skipped.
    Returns Samples: .texts and the .prompts they continue.
    """
    from .sampling import sample_interactive as run

    return run(name_or_dir, read=read, nsamples=nsamples, length=length, temperature=temperature, top_k=top_k,
               top_p=top_p, seed=seed, device=device, manifest=manifest, progress=progress)


def mirror(name: str, dest: str, *, formats: Sequence[str] | None = None, endpoint_url: str | None = None,
           dry_run: bool = False, private: bool = False, revision: str | None = None,
           manifest: Path | str | None = None, part_size: int | None = None,
           progress: Reporter | None = None) -> MirrorReport:
    """Upload a pulled release and its conversions to s3://bucket/prefix or hf://org/repo.

    name: a pulled release's name or alias. dest: s3://bucket/prefix or hf://org/repo.
    formats: "original" and format names to send (None: s3:// everything present, hf:// the Hub defaults).
    endpoint_url: an S3-compatible store or Hub endpoint (else AWS_ENDPOINT_URL / HF_ENDPOINT).
    dry_run: decide what would be sent and skipped; send nothing.
    private, revision: hf:// only: create the repo private; the branch to commit to.
    manifest: a manifest file describing the release.
    part_size: s3:// only: bytes per multipart part (None: 16 MiB; S3 allows 5 MiB..5 GiB).
    progress: the reporting hook: byte tasks "sha256" and "mirror <release>"; with TerminalProgress
    huggingface_hub also draws its own bars.
    Returns a MirrorReport: .files (each with its destination, size, sha256 and action), bytes sent.
    """
    from .mirroring import mirror as run

    return run(name, dest, formats=formats, endpoint_url=endpoint_url, dry_run=dry_run, private=private,
               revision=revision, manifest=manifest, part_size=part_size, progress=progress)


def run_demo(workdir: Path | str | None = None, *, device: str = "cpu", progress: Reporter | None = None) -> DemoReport:
    """Offline end to end: build a tiny release, serve it on loopback, pull, convert, verify, sample.

    workdir: build everything here and keep it (None: a temporary folder, removed after).
    device: cpu or cuda. progress: the reporting hook: one `output` line per step ("[ok] ...").
    Returns a DemoReport: .steps, .passed.
    """
    from .demo import run_demo as run

    return run(workdir, device=device, progress=progress)


def diagnose() -> dict:
    """Extras installed, home and free disk, available consumers, GPU (what `gpt2hub doctor` prints)."""
    from .doctor import diagnose as run

    return run()


def tiktoken(name_or_dir: str | Path | None = None, *, cache_dir: Path | str | None = None) -> TiktokenReport:
    """Put a release's encoder.json and vocab.bpe in tiktoken's cache so tiktoken.get_encoding("gpt2") works offline.

    name_or_dir: a pulled release (its tokenizer files suffice), a folder holding the two files, or None: any pulled.
    cache_dir: where to put them instead of tiktoken's own ($TIKTOKEN_CACHE_DIR, $DATA_GYM_CACHE_DIR, <tmp>/data-gym-cache).
    Returns a TiktokenReport: .cache_dir, .files (each with its URL, path, sha256 and whether it was already there).
    """
    from .tiktoken_cache import install

    return install(name_or_dir, cache_dir)


__all__ = [
    "__version__", "Gpt2hubError", "ReleaseManifest", "Checkpoint", "ProgressEvent", "Reporter",
    "releases", "resolve", "create_manifest", "list_releases", "info", "path", "remove", "disk_usage", "pull", "import_checkpoint",
    "convert", "verify", "verify_against", "is_foreign_path", "sample",
    "sample_interactive", "mirror", "run_demo", "diagnose", "tiktoken",
]
