"""How the `gpt2hub` command shows results to people: byte counts, text tables, and each command's report."""

from __future__ import annotations

from pathlib import Path

from . import store


def size_text(n: int | None) -> str:
    """A byte count as people read it: "512 B", "1.5 MB"; None is "unknown"."""
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def table(rows: list[list[str]]) -> str:
    """Rows as left-aligned columns two spaces apart, the first row being the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def checks_table(files: dict) -> str:
    """FILE / CHECKED AGAINST rows from pull's results or record (anything with .check and .against)."""
    rows = [["FILE", "CHECKED AGAINST", "DETAIL"]]
    for name, f in sorted(files.items()):
        rows.append([name, f.check.label, f.against])
    return table(rows)


def in_home(path: Path) -> str:
    """`path` relative to the store's home where it is inside it, else as given."""
    try:
        return str(path.relative_to(store.home()))
    except ValueError:
        return str(path)


def releases_text(rows: list[dict]) -> str:
    """`gpt2hub list`: one row per release, then the store's home."""
    out = [["NAME", "ALIASES", "PARAMETERS", "DOWNLOAD", "STATE", "FORMATS", "ON DISK"]]
    for r in rows:
        out.append([r["name"], ", ".join(r["aliases"]), f"{r['parameters']:,}",
                    size_text(r["download_size"]) + ("" if r["download_size_known"] else "+"),
                    r["state"], ", ".join(r["formats"]) or "-", size_text(r["disk_bytes"]) if r["disk_bytes"] else "-"])
    return f"{table(out)}\n\nhome: {store.home()}"


def manifest_text(m, record) -> str:
    """`gpt2hub info`: a release's manifest, then what its pull record says (when pulled and verified)."""
    h = m.hparams
    lines = [f"{m.name}  ({', '.join(m.aliases) or 'no aliases'})"]
    if m.description:
        lines.append(m.description)
    lines.append(f"released {m.released or 'unknown'}; {m.parameters:,} parameters; "
                 f"n_layer={h.n_layer} n_head={h.n_head} n_embd={h.n_embd} n_ctx={h.n_ctx} n_vocab={h.n_vocab}")
    lines.append(f"source folders: {', '.join(m.folders)}; {len(m.tensors)} tensors; manifest {m.path}")
    rows = [["FILE", "SIZE", "SHA256", "STATUS"]]
    for f in m.files:
        rows.append([f.name, "unknown" if f.size is None else f"{f.size:,}", f.sha256 or "-", f.status])
    lines.append(table(rows))
    if record is not None:
        lines.append(f"\npulled to {store.release_dir(m.name)} "
                     f"({'verified' if record.verified else 'not every file verified'}):")
        lines.append(checks_table(record.files))
    return "\n".join(lines)


def pull_plan_text(r) -> str:
    """`gpt2hub pull --dry-run`: each file's state and source, then what would be fetched."""
    rows = [["FILE", "SIZE", "STATE", "TO FETCH", "FROM"]]
    for f in r.files:
        rows.append([f.name, size_text(f.size), f.state, size_text(f.fetch) if f.fetch else "-",
                     f.source or ("-" if f.fetch == 0 else "offline" if r.offline else "none")])
    return f"{table(rows)}\n\n{r.name}: would fetch {size_text(r.fetch)} into {r.path}"


def pull_text(r) -> str:
    """`gpt2hub pull`: where the release is and how verified; each file's check unless all are verified."""
    weak = [f for f in r.files if not f.verified]
    own = [f for f in r.files if f.check.users_own]  # the user's own sha256: said as such, not "verified"
    state = ("checked against your own sha256" if own else "verified") if not weak \
        else f"pulled ({len(r.files) - len(weak)} of {len(r.files)} files verified)"
    if r.already:
        text = f"{r.name}: already {state} at {r.path}"
    else:
        rate = r.fetched / r.seconds / 1e6 if r.seconds else 0
        text = (f"{r.name}: {len(r.files)} files {state} at {r.path} "
                f"({size_text(r.fetched)} in {r.seconds:.1f} s, {rate:.0f} MB/s, from {', '.join(r.sources) or 'disk'})")
    if weak or own:
        text += "\n" + checks_table({f.name: f for f in r.files})
    return text


def usage_text(found: list, name: str | None) -> str:
    """`gpt2hub du`: bytes per file of NAME (when named), then per release and format, then the home."""
    text = ""
    if name is not None:
        u = found[0]
        rows = [["FORMAT", "FILE", "ON DISK"]]
        rows += [[e.format, str(e.path.relative_to(u.path)), size_text(e.bytes)] for e in u.files]
        rows += [["(other)", str(e.path.relative_to(u.path)), size_text(e.bytes)] for e in u.other]
        text = table(rows) + "\n\n"
    rows = [["NAME", "FORMAT", "ON DISK"]]
    for u in found:
        rows += [[u.name, fmt, size_text(n)] for fmt, n in u.formats.items()]
        rows += [[u.name, "(other)", size_text(sum(e.bytes for e in u.other))]] if u.other else []
        rows.append([u.name, "total", size_text(u.bytes)])
    return f"{text}{table(rows)}\n\nhome: {store.home()}"


def doctor_text(report: dict) -> str:
    """`gpt2hub doctor`: home and free space, GPU, each extra's package, and how to install what is missing."""
    lines = [f"home:  {report['home']} ({size_text(report['free_bytes'])} free)",
             f"gpu:   {report['gpu'] or 'none seen (CPU only)'}"]
    rows = [["EXTRA", "PACKAGE", "VERSION", "ENABLES"]]
    for extra, e in report["extras"].items():
        rows.append([extra, e["package"], e["version"] or "not installed", e["for"]])
    lines.append(table(rows))
    missing = [x for x, e in report["extras"].items() if not e["version"]]
    if missing:
        lines.append(f"\ninstall what is missing with: pip install 'gpt2hub[{','.join(missing)}]'")
    return "\n".join(lines)


def mirror_text(report, dry_run: bool) -> str:
    """`gpt2hub mirror`: each file's destination and action, then what was sent (or committed)."""
    rows = [["DEST", "SIZE", "ACTION"]] + [[f.dest, size_text(f.size), f.action] for f in report.files]
    sent = report.bytes_to_send if dry_run else report.bytes_sent
    done = f"{'would send' if dry_run else 'sent'} {size_text(sent)}" \
        if report.bytes_sent is not None or dry_run else f"committed {report.commit}"
    return f"{table(rows)}\n\n{report.destination}: {done} in {report.seconds:.1f} s"
