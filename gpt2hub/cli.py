"""The `gpt2hub` command: parses arguments, calls the library, prints the result."""

from __future__ import annotations

import atexit
import gc
import json
import sys
from pathlib import Path

import click

import gpt2hub
from . import converters, registry, store
from .errors import Gpt2hubError
from .printing import (doctor_text, in_home, manifest_text, mirror_text, pull_plan_text, pull_text, releases_text,
                       size_text, usage_text)
from .progress import MODES, TerminalProgress, resolve_mode


class Gpt2hubGroup(click.Group):
    """Turns library errors and Ctrl-C into one line on stderr and a non-zero exit."""

    def main(self, *args, **kwargs):
        # The process ends with the command: its last garbage collections would walk every module imported for
        # nothing. Frozen objects are left to the OS, as the whole heap is anyway.
        atexit.unregister(gc.freeze)
        atexit.register(gc.freeze)
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Gpt2hubError as e:
            click.echo(f"gpt2hub: error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("gpt2hub: interrupted", err=True)
            sys.exit(130)
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            click.echo(f"gpt2hub: error: {where}{e.strerror or e}", err=True)
            sys.exit(1)


manifest_option = click.option(
    "--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Use this manifest file instead of looking NAME up in the registry.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
progress_option = click.option(
    "--progress", "progress_mode", type=click.Choice(MODES), default=None,
    help="bar (a terminal), plain (a line every 10% or 30 s: for logs), none; default auto: bar on a terminal, "
         "else plain (also $GPT2HUB_PROGRESS).")


def _names(formats) -> str:
    return ", ".join(f.name for f in formats)


def _dtype_help() -> str:
    """--dtype's help from the registry: "Weight type (default f32; q8_0 is gguf only)."."""
    forms = converters.formats()
    defaults = "/".join(dict.fromkeys(f.default_dtype for f in forms))
    where: dict[str, list[str]] = {}  # the formats' names -> the dtypes only they write
    for d in converters.dtypes():
        if not all(d in f.dtypes for f in forms):
            where.setdefault(_names(f for f in forms if d in f.dtypes), []).append(d)
    only = [f"{', '.join(ds)} {'is' if len(ds) == 1 else 'are'} {names} only" for names, ds in where.items()]
    return f"Weight type (default {defaults}; {'; '.join(only)})." if only else f"Weight type (default {defaults})."


def _file_formats_help() -> str:
    """"a .gguf file for gguf", for every format that writes one file."""
    return "; ".join(f"a {f.file_suffix} file for {f.name}" for f in converters.formats() if not f.writes_folder)


def _go_offline(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from . import offline

        ctx.with_resource(offline.switched_on())  # put back when the command ends


offline_option = click.option("--offline", is_flag=True, expose_value=False, callback=_go_offline, is_eager=True,
                              help="Use only what is on disk (also GPT2HUB_OFFLINE=1); say so if the network is needed.")


@click.group(cls=Gpt2hubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(gpt2hub.__version__, prog_name="gpt2hub")
@offline_option
def main() -> None:
    """Pull OpenAI's original GPT-2 release intact and convert it to today's formats."""
    from . import offline

    if offline.enabled():  # GPT2HUB_OFFLINE=1 set outside: switch the libraries' own offline modes on too
        click.get_current_context().with_resource(offline.switched_on())


@main.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """Every known release, its size and local state."""
    rows = gpt2hub.list_releases()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(releases_text(rows))


@main.command()
@click.argument("name")
@manifest_option
@json_option
def info(name: str, manifest: Path | None, as_json: bool) -> None:
    """The manifest of a release (by name or alias)."""
    m = gpt2hub.info(name, manifest)
    record = store.read_verified(m.name) if store.original_state(m.name) == "verified" else None
    if as_json:
        click.echo(json.dumps({**m.to_dict(), **({"pulled": record.to_dict()} if record else {})}, indent=1))
        return
    click.echo(manifest_text(m, record))


@main.command()
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(store.FORMATS), default="original", show_default=True)
@manifest_option
def path(name: str, fmt: str, manifest: Path | None) -> None:
    """Print where a release (or one of its formats) lives."""
    click.echo(gpt2hub.path(name, fmt, manifest))


@main.command()
@click.argument("name")
@click.option("--source", "sources", multiple=True, metavar="SRC",
              help="Base URL, s3://bucket/prefix or folder laid out <SRC>/<folder>/<file> (repeatable, tried in order; "
                   "default $GPT2HUB_SOURCE), before the manifest's sources, OpenAI and public mirrors.")
@click.option("--connections", type=click.IntRange(1, 64), default=8, show_default=True, help="Parallel ranges per file.")
@click.option("--verify", is_flag=True, help="Re-hash files already pulled instead of trusting their sizes.")
@click.option("--force", is_flag=True, help="Download again even if the release is verified.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--endpoint-url", default=None, metavar="URL", help="S3-compatible endpoint for s3:// sources.")
@click.option("--only", "only", multiple=True, metavar="WHAT",
              help="Only these files: tokenizer (encoder.json, vocab.bpe), model (everything else) or file names "
                   "(repeatable or comma-separated).")
@click.option("--to", "to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Put the files in this folder (OpenAI's layout) instead of the store.")
@click.option("--dry-run", is_flag=True, help="Print what would be fetched, from where, and what is here; touch no file.")
@click.option("--no-public-mirrors", is_flag=True,
              help="Only your sources and OpenAI's, never the public third-party copies "
                   "(also $GPT2HUB_NO_PUBLIC_MIRRORS=1).")
@offline_option
@progress_option
@manifest_option
@json_option
@click.option("--name", "as_name", default=None, metavar="NAME",
              help="hf://ORG/REPO[@REVISION]: the release name to import the repo as (default: REPO).")
def pull(name: str, sources: tuple[str, ...], connections: int, verify: bool, force: bool, quiet: bool,
         endpoint_url: str | None, only: tuple[str, ...], to: Path | None, dry_run: bool, no_public_mirrors: bool,
         progress_mode: str | None, manifest: Path | None, as_json: bool, as_name: str | None) -> None:
    """Download a release, check every file, and print where it is and what each file was checked against.

    "verified" means a published sha256, the sha256 of 124M's identical published file, or every tensor's
    CRC32C from an index fetched from OpenAI; anything less is printed as what it is. NAME may also be
    hf://ORG/REPO[@REVISION]: a Hub repo's GPT-2 files, checked against the Hub's hashes and imported.
    """
    from . import offline

    r = gpt2hub.pull(name, manifest=manifest, sources=sources, connections=connections, verify=verify, force=force,
                     endpoint_url=endpoint_url, only=[w for item in only for w in item.split(",") if w], to=to,
                     dry_run=dry_run, progress=TerminalProgress(bars=not (quiet or as_json), mode=progress_mode),
                     public_mirrors=not no_public_mirrors, as_name=as_name)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    if hasattr(r, "commit"):  # hf://: a HubPullResult
        click.echo(r.to_text())
        return
    if dry_run:
        click.echo(pull_plan_text(r))
        for line in r.unavailable:
            click.echo(f"gpt2hub: no source for {line}", err=True)
        needs = [f for f in r.files if f.fetch and f.source is None]
        if r.offline and needs:
            click.echo(f"gpt2hub: offline ({offline.ENV}=1): {len(needs)} files ({size_text(sum(f.fetch for f in needs))}) "
                       "would need the network", err=True)
        return
    click.echo(pull_text(r))


@main.command()
@click.argument("name_or_dir", metavar="[NAME|DIR]", required=False)
@click.option("--to", "fmt", type=click.Choice(converters.names()), required=True, help="Output format.")
@click.option("--dtype", type=click.Choice(converters.dtypes()), default=None, help=_dtype_help())
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help=f"Output folder ({_file_formats_help()}) instead of the store / a sibling of DIR.")
@click.option("--force", is_flag=True, help="Replace an existing output (only once the new one is complete).")
@click.option("--untie", is_flag=True, help=f"{_names(f for f in converters.formats() if f.untie)}: "
              "write output.weight (for llama.cpp builds before March 2025).")
@click.option("--hparams", "hparams_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="hparams.json to use (else the folder's, else inferred from the tensor shapes).")
@click.option("--from", "from_", type=click.Choice(gpt2hub.SOURCE_KINDS), default=None,
              help="Read PATH as this kind (default: detected from its content).")
@click.option("--vocab", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder with GPT-2's encoder.json + vocab.bpe, for a source that carries no vocabulary.")
@click.option("--allow-approximate-activation", "approximate", is_flag=True,
              help=f"{_names(f for f in converters.formats() if f.approximates)}: convert an exact-GELU model "
              "although the target computes the tanh form (recorded; verify measures the gap).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@progress_option
@manifest_option
@json_option
def convert(name_or_dir: str | None, fmt: str, dtype: str | None, out: Path | None, force: bool, untie: bool,
            hparams_file: Path | None, from_: str | None, vocab: Path | None, approximate: bool, quiet: bool,
            progress_mode: str | None, manifest: Path | None, as_json: bool) -> None:
    """Convert a pulled release (NAME, or the only one pulled) or a checkpoint PATH of any kind --from lists."""
    r = gpt2hub.convert(name_or_dir, fmt, dtype, out, force, untie=untie, hparams=hparams_file, manifest=manifest,
                        progress=TerminalProgress(bars=not (quiet or as_json), mode=progress_mode), from_=from_,
                        vocab=vocab, allow_approximate_activation=approximate)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    if r.ignored:
        click.echo(f"ignored {len(r.ignored)} non-model variables (e.g. {r.ignored[0]})", err=True)
    if not r.hparams_from.startswith(("hparams.json", "--hparams")):
        click.echo(f"hparams {r.hparams_from}: {r.hparams}", err=True)
    for note in r.notes:
        click.echo(note, err=True)
    click.echo(f"{r.release}: {r.tensors} tensors -> {r.format} {r.dtype} at {r.path} "
               f"({size_text(r.bytes_read)} in {r.seconds:.1f} s)")


@main.command("tiktoken")
@click.argument("name_or_dir", metavar="[NAME|DIR]", required=False)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache folder (default: $TIKTOKEN_CACHE_DIR, $DATA_GYM_CACHE_DIR or <tmp>/data-gym-cache).")
@json_option
def tiktoken_cmd(name_or_dir: str | None, cache_dir: Path | None, as_json: bool) -> None:
    """Make tiktoken.get_encoding("gpt2") work offline from a release's encoder.json and vocab.bpe."""
    r = gpt2hub.tiktoken(name_or_dir, cache_dir=cache_dir)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    for f in r.files:
        click.echo(f"{f.name}: {'already in' if f.already else 'copied to'} {f.path}")
    if cache_dir is not None:
        click.echo(f"tiktoken reads it with: export TIKTOKEN_CACHE_DIR={r.cache_dir}")


@main.command("rm")
@click.argument("name")
@click.option("--format", "formats", default=None, metavar="LIST",
              help=f"Comma-separated formats to remove ({', '.join(store.FORMATS)}); default: every conversion.")
@click.option("--dtype", default=None, metavar="DTYPE", help="Only conversions of this weight type (f32, f16, bf16, q8_0).")
@click.option("--all", "everything", is_flag=True, help="The whole release, original files included.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@json_option
def rm(name: str, formats: str | None, dtype: str | None, everything: bool, dry_run: bool, quiet: bool,
       as_json: bool) -> None:
    """Remove a release's conversions (or, with --all, the whole release) from the store; print what it freed."""
    r = gpt2hub.remove(name, formats.split(",") if formats else None, dtype, everything, dry_run)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    if quiet:
        return
    verb = "would remove" if dry_run else "removed"
    for e in r.removed:
        click.echo(f"{verb} {in_home(e.path)} ({size_text(e.bytes)}{', ' + e.note if e.note else ''})")
    for p in r.kept:
        click.echo(f"kept {in_home(p)} (not gpt2hub's)", err=True)
    click.echo(f"{r.name}: {'would free' if dry_run else 'freed'} {size_text(r.freed)}"
               + ("" if r.removed else " (nothing to remove)"))


@main.command()
@click.argument("name", required=False)
@json_option
def du(name: str | None, as_json: bool) -> None:
    """Bytes on disk per release and format (every release in the store), or per file of NAME."""
    found = gpt2hub.disk_usage(name)
    if as_json:
        click.echo(json.dumps([u.to_dict() for u in found], indent=1))
        return
    click.echo(usage_text(found, name))


@main.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="The release name (not a shipped release's name or alias).")
@click.option("--from", "from_", type=click.Choice(gpt2hub.SOURCE_KINDS), default=None,
              help="Read PATH as this kind (default: detected from its content).")
@click.option("--force", is_flag=True, help="Replace a release of this name (its conversions are removed too).")
@click.option("--link", is_flag=True, help="Hard-link the files instead of copying them (same file system; the "
              "store's copy then changes if you rewrite yours in place: verify reports it).")
@click.option("--vocab", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder with GPT-2's encoder.json + vocab.bpe, for a source that carries no vocabulary.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def import_cmd(path: Path, name: str, from_: str | None, force: bool, link: bool, vocab: Path | None, quiet: bool,
               as_json: bool) -> None:
    """Put a checkpoint of any kind (PATH) in the store as release NAME, with a manifest of its files' sha256."""
    r = gpt2hub.import_checkpoint(path, name, from_=from_, force=force, vocab=vocab, link=link,
                                  progress=TerminalProgress(bars=not (quiet or as_json)))
    click.echo(json.dumps(r.to_dict(), indent=1) if as_json else r.to_text())


@main.group()
def manifest() -> None:
    """Create manifests for your own checkpoints."""


@manifest.command("create")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="The release name the manifest gives.")
@click.option("--alias", "aliases", multiple=True, help="Another name for it (repeatable).")
@click.option("--n-head", type=int, default=None, help="Heads, where the folder has no hparams.json.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here instead of <home>/manifests/NAME.json.")
def manifest_create(folder: Path, name: str, aliases: tuple[str, ...], n_head: int | None, output: Path | None) -> None:
    """Describe a local checkpoint FOLDER: file sizes, sha256, hparams and tensor layout."""
    m = gpt2hub.create_manifest(folder, name, aliases=aliases, n_head=n_head)
    output = registry.save_user_manifest(m, output)
    click.echo(f"wrote {output} ({len(m.files)} files, {len(m.tensors)} tensors, {m.parameters:,} parameters)")


@main.command()
@json_option
def doctor(as_json: bool) -> None:
    """Extras installed, home and free disk, available consumers, GPU."""
    report = gpt2hub.diagnose()
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    click.echo(doctor_text(report))


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    Enable it with, e.g., `eval "$(gpt2hub completion bash)"` in ~/.bashrc.
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    click.echo(cls(main, {}, "gpt2hub", "_GPT2HUB_COMPLETE").source())


@main.command()
@click.argument("name")
@click.argument("dest")
@click.option("--formats", default=None, metavar="LIST",
              help=f"Comma-separated: {','.join(store.FORMATS)}. Default: s3:// everything present; "
                   f"hf:// {_names(f for f in converters.formats() if f.hub_default)}.")
@click.option("--endpoint-url", default=None, metavar="URL", help="S3-compatible store or Hub endpoint (else AWS_ENDPOINT_URL / HF_ENDPOINT).")
@click.option("--dry-run", is_flag=True, help="List what would be sent and what skipped; send nothing.")
@click.option("--private", is_flag=True, help="hf://: create the repo private.")
@click.option("--revision", default=None, metavar="REV", help="hf://: the branch to commit to (created if missing).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@progress_option
@manifest_option
@json_option
def mirror(name: str, dest: str, formats: str | None, endpoint_url: str | None, dry_run: bool, private: bool,
           revision: str | None, quiet: bool, progress_mode: str | None, manifest: Path | None, as_json: bool) -> None:
    """Upload a pulled release and its conversions to DEST: s3://bucket/prefix or hf://org/repo."""
    report = gpt2hub.mirror(name, dest, formats=formats.split(",") if formats else None, endpoint_url=endpoint_url,
                            dry_run=dry_run, private=private, revision=revision, manifest=manifest,
                            progress=TerminalProgress(bars=not (quiet or as_json), mode=progress_mode))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
        return
    click.echo(mirror_text(report, dry_run))


device_option = click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (PyTorch consumers).")


@main.command("verify")
@click.argument("name_or_dir", metavar="[NAME|DIR|PATH]", required=False)
@click.option("--against", default=None, metavar="NAME",
              help="Prove PATH (any GPT-2 file or folder, whoever wrote it) tensor by tensor against this release on "
                   "disk (default for a PATH that is no release: every release on disk with its shapes).")
@click.option("--weights-only", is_flag=True, help="With a PATH: prove the tensors and metadata, run no consumer.")
@click.option("--formats", default=None, metavar="LIST", help=f"Comma-separated: {','.join(store.FORMATS)} (default: all present).")
@device_option
@click.option("--prompt", default=None, help="Text whose logits are compared (default: a fixed paragraph).")
@click.option("--tokens", "n_tokens", type=int, default=None, metavar="N", help="Compare on N seeded random token ids instead.")
@progress_option
@manifest_option
@json_option
def verify_cmd(name_or_dir: str | None, against: str | None, weights_only: bool, formats: str | None, device: str, prompt: str | None,
               n_tokens: int | None, progress_mode: str | None, manifest: Path | None, as_json: bool) -> None:
    """Check the original files, then compare every format's logits with the reference; exit 1 on any FAIL.

    With a PATH someone else wrote, or hf://ORG/REPO[@REV] (fetched into the store's cache, each file checked against
    the Hub's hash), or --against NAME: prove it against a release, ending in a one-line verdict."""
    if against is not None or (name_or_dir is not None and gpt2hub.is_foreign_path(name_or_dir)):
        if name_or_dir is None:
            raise gpt2hub.Gpt2hubError("--against NAME proves a PATH: name the file or folder to prove")
        proof = gpt2hub.verify_against(name_or_dir, against, logits=not weights_only, device=device,
                                       progress=None if as_json or resolve_mode(progress_mode) == "none"
                                       else TerminalProgress(mode=progress_mode))
        click.echo(json.dumps(proof.to_dict(), indent=1) if as_json else proof.to_text())
        if not proof.passed:
            sys.exit(1)
        return
    report = gpt2hub.verify(name_or_dir, formats=formats, device=device, prompt=prompt, tokens=n_tokens, manifest=manifest,
                            progress=None if as_json or resolve_mode(progress_mode) == "none"
                            else TerminalProgress(mode=progress_mode))
    click.echo(json.dumps(report.to_dict(), indent=1) if as_json else report.to_text())
    if not report.passed:
        sys.exit(1)


@main.command("sample")
@click.argument("name_or_dir", metavar="[NAME|DIR]", required=False)
@click.option("--prompt", default=None, help="Continue this text (openai's interactive_conditional_samples, once).")
@click.option("--interactive", is_flag=True, help="Read prompts from the terminal until end of input.")
@click.option("--unconditional", is_flag=True, help="Start from <|endoftext|> (the default without --prompt).")
@click.option("--nsamples", type=int, default=1, show_default=True, help="Samples per prompt (0: until interrupted).")
@click.option("--length", type=int, default=None, help="Tokens per sample [default: n_ctx/2 with a prompt, else n_ctx-1].")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="0 means greedy.")
@click.option("--top-k", type=int, default=0, show_default=True, help="Keep the k most likely tokens (0: all).")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus: keep tokens up to this cumulative probability.")
@click.option("--seed", type=int, default=None, help="The same seed gives the same text (same device).")
@device_option
@manifest_option
def sample_cmd(name_or_dir: str | None, prompt: str | None, interactive: bool, unconditional: bool, nsamples: int,
               length: int | None, temperature: float, top_k: int, top_p: float, seed: int | None, device: str,
               manifest: Path | None) -> None:
    """Generate text with the KV cache, streamed as it comes, stopping at <|endoftext|>."""
    if sum((prompt is not None, interactive, unconditional)) > 1:
        raise gpt2hub.Gpt2hubError("--prompt, --interactive and --unconditional exclude each other")
    settings = dict(nsamples=nsamples, length=length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                    device=device, manifest=manifest, progress=TerminalProgress())
    if interactive:
        gpt2hub.sample_interactive(name_or_dir, read=input, **settings)
    else:
        gpt2hub.sample(name_or_dir, prompt=prompt, **settings)


@main.command()
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Build everything in this folder and keep it (default: a temporary folder, removed after).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def demo(keep: Path | None, device: str) -> None:
    """Offline end to end: build a tiny release, serve it on loopback, pull, convert, verify, sample."""
    report = gpt2hub.run_demo(keep, device=device, progress=TerminalProgress())
    if not report.passed:
        raise gpt2hub.Gpt2hubError("demo: not every step passed (see above)")
    click.echo("demo: every step passed")
    if report.next_steps:
        click.echo(report.next_steps)


if __name__ == "__main__":
    main()
