"""What `gpt2hub verify` found: one row per fact, and the text tables it prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class IntegrityRow:
    """One integrity fact about the original files."""

    name: str
    passed: bool
    detail: str


@dataclass
class OutputRow:
    """One exact fact about a converted output: its tensors against the source, or its metadata against the manifest."""

    format: str
    dtype: str
    what: str  # "weights" or "metadata"
    source: str
    passed: bool
    detail: str

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"


class Judged:
    """PASS, FAIL, or ERROR when the consumer's process died: for rows with `passed` and `crashed`; APPROX for a
    passing row of an output that approximates the release (--allow-approximate-activation; its note gives the gap)."""

    passed: bool
    crashed: bool

    @property
    def status(self) -> str:
        if self.crashed:
            return "ERROR"
        return ("APPROX" if getattr(self, "approximate", False) else "PASS") if self.passed else "FAIL"


@dataclass
class Row(Judged):
    """One consumer's logits compared with the float64 reference on the weights that output holds."""

    format: str
    dtype: str
    consumer: str
    source: str
    max_abs: float | None = None
    mean_abs: float | None = None
    top1: float | None = None
    kl: float | None = None
    noise: float | None = None  # max|delta| of the reference run in this consumer's arithmetic, on this model
    bound: float | None = None
    tolerance: str = ""
    passed: bool = False
    note: str = ""
    crashed: bool = False  # the consumer's process died (note says how): status ERROR
    # The output computes another model than the release's (approximated fields): judged against that model's
    # reference; the note gives its gap to the release's exact model. Status APPROX when it passes.
    approximate: bool = False
    gap_max_abs: float | None = None  # max|delta| from the float64 reference of the release's exact model
    gap_top1: float | None = None


@dataclass
class TokenizerRow(Judged):
    """One tokenizer's ids for the parity text, compared with tiktoken's."""

    tokenizer: str
    source: str
    n_tokens: int | None
    passed: bool
    detail: str = ""
    crashed: bool = False  # the tokenizer's process died (detail says how): status ERROR


@dataclass
class Report:
    release: str
    original: str
    device: str
    tokens: list[int]
    integrity: list[IntegrityRow] = field(default_factory=list)
    files: list[OutputRow] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    tokenization: list[TokenizerRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        """Failed integrity checks, outputs (once, whatever of theirs failed) and tokenizers."""
        outputs = {(r.format, r.source) for r in [*self.files, *self.rows] if not r.passed}
        return sum(not c.passed for c in self.integrity) + len(outputs) + sum(not t.passed for t in self.tokenization)

    @property
    def passed(self) -> bool:
        return self.failed == 0

    def to_text(self) -> str:
        """The report as text tables, as `gpt2hub verify` prints it."""
        return format_report(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        for key, items in (("files", self.files), ("rows", self.rows), ("tokenization", self.tokenization)):
            for out, item in zip(d[key], items):
                out["status"] = item.status
        return d


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _num(x: float | None, fmt: str = ".2e") -> str:
    return "-" if x is None else format(x, fmt)


def _label(fmt: str, source: str) -> str:
    """A file output is named by its file (several per format); a folder output by its format."""
    path = Path(source)
    return f"{fmt}:{path.name}" if path.suffix and not path.is_dir() else fmt


def format_report(report: Report) -> str:
    """The report as text tables, as `gpt2hub verify` prints it."""
    lines = [f"{report.release}: {report.original}", f"input: {len(report.tokens)} tokens; device {report.device}", ""]
    lines += _table([["CHECK", "STATUS", "DETAIL"]] + [[c.name, "PASS" if c.passed else "FAIL", c.detail] for c in report.integrity])
    if report.files:
        lines.append("")
        lines += _table([["CHECK", "OUTPUT", "DTYPE", "STATUS", "DETAIL"]] +
                        [[f.what, _label(f.format, f.source), f.dtype, f.status, f.detail] for f in report.files])
    lines.append("")
    rows = [["FORMAT", "DTYPE", "CONSUMER", "MAX|Δ|", "MEAN|Δ|", "TOP-1", "KL", "NOISE", "TOLERANCE", "STATUS", "NOTE"]]
    for r in report.rows:
        rows.append([_label(r.format, r.source), r.dtype, r.consumer, _num(r.max_abs), _num(r.mean_abs),
                     _num(r.top1, ".3f"), _num(r.kl), _num(r.noise), r.tolerance, r.status, r.note])
    lines += _table(rows)
    if report.tokenization:
        lines.append("")
        lines += _table([["TOKENIZER", "TOKENS", "STATUS", "DETAIL", "SOURCE"]] +
                        [[t.tokenizer, str(t.n_tokens), t.status, t.detail, t.source] for t in report.tokenization])
    lines += [""] + [f"note: {n}" for n in report.notes]
    lines.append(f"{'PASS' if report.passed else f'FAIL ({report.failed} failed)'} in {report.seconds:.1f} s")
    return "\n".join(lines)
