"""The `gpt2hub` command: parses arguments, calls the library, prints the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

import gpt2hub
from . import registry, store
from .errors import Gpt2hubError


class Gpt2hubGroup(click.Group):
    """Turns library errors and Ctrl-C into one line on stderr and a non-zero exit."""

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


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


@click.group(cls=Gpt2hubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(gpt2hub.__version__, prog_name="gpt2hub")
def main() -> None:
    """Pull OpenAI's original GPT-2 release intact and convert it to today's formats."""


@main.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """Every known release, its size and local state."""
    rows = gpt2hub.list_releases()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    table = [["NAME", "ALIASES", "PARAMETERS", "DOWNLOAD", "STATE", "FORMATS"]]
    for r in rows:
        table.append([r["name"], ", ".join(r["aliases"]), f"{r['parameters']:,}", _size(r["download_size"]) + ("" if r["download_size_known"] else "+"),
                      r["state"], ", ".join(r["formats"]) or "-"])
    click.echo(_table(table))
    click.echo(f"\nhome: {store.home()}")


@main.command()
@click.argument("name")
@manifest_option
@json_option
def info(name: str, manifest: Path | None, as_json: bool) -> None:
    """The manifest of a release (by name or alias)."""
    m = gpt2hub.info(name, manifest)
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=1))
        return
    h = m.hparams
    click.echo(f"{m.name}  ({', '.join(m.aliases) or 'no aliases'})")
    if m.description:
        click.echo(m.description)
    click.echo(f"released {m.released or 'unknown'}; {m.parameters:,} parameters; "
               f"n_layer={h.n_layer} n_head={h.n_head} n_embd={h.n_embd} n_ctx={h.n_ctx} n_vocab={h.n_vocab}")
    click.echo(f"source folders: {', '.join(m.folders)}; {len(m.tensors)} tensors; manifest {m.path}")
    rows = [["FILE", "SIZE", "SHA256", "STATUS"]]
    for f in m.files:
        rows.append([f.name, "unknown" if f.size is None else f"{f.size:,}", f.sha256 or "-", f.status])
    click.echo(_table(rows))


@main.command()
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(store.FORMATS), default="original", show_default=True)
@manifest_option
def path(name: str, fmt: str, manifest: Path | None) -> None:
    """Print where a release (or one of its formats) lives."""
    click.echo(gpt2hub.path(name, fmt, manifest))


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
    if output is None:
        output = store.home() / "manifests" / f"{m.name}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists() and registry.ReleaseManifest.from_file(output).name != m.name:
        raise gpt2hub.Gpt2hubError(f"{output}: exists and describes another release; choose another -o")
    registry.write_manifest(m, output)
    click.echo(f"wrote {output} ({len(m.files)} files, {len(m.tensors)} tensors, {m.parameters:,} parameters)")


@main.command()
@json_option
def doctor(as_json: bool) -> None:
    """Extras installed, home and free disk, available consumers, GPU."""
    from .doctor import diagnose

    report = diagnose()
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    click.echo(f"home:  {report['home']} ({_size(report['free_bytes'])} free)")
    click.echo(f"gpu:   {report['gpu'] or 'none seen (CPU only)'}")
    rows = [["EXTRA", "PACKAGE", "VERSION", "ENABLES"]]
    for extra, e in report["extras"].items():
        rows.append([extra, e["package"], e["version"] or "not installed", e["for"]])
    click.echo(_table(rows))
    missing = [x for x, e in report["extras"].items() if not e["version"]]
    if missing:
        click.echo(f"\ninstall what is missing with: pip install 'gpt2hub[{','.join(missing)}]'")


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script, e.g. `eval "$(gpt2hub completion bash)"`."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    click.echo(cls(main, {}, "gpt2hub", "_GPT2HUB_COMPLETE").source())


if __name__ == "__main__":
    main()
