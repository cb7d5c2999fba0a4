"""Human-readable report with rich: a summary table, then each file's weight statistics and findings.

Everything that comes from a scanned file (paths, metadata evidence, module names) is shown as
literal text: rich markup is not interpreted and control characters are escaped, so a crafted
file cannot restyle or take over the terminal.
"""

from __future__ import annotations

import math
import os
from typing import TextIO

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from lora_audit import evidence
from lora_audit.results import FileResult, ModuleStats, ScanResult, Severity, WeightStats

SEVERITY_STYLES = {
    Severity.CRITICAL: "bold white on red",
    Severity.HIGH: "bold red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}
TOP_MODULES = 20
FILE_WIDTH = 120  # width for logs and files, rather than rich's 80 columns (COLUMNS overrides it)
MIN_WIDTH = 80  # narrower (COLUMNS=0 or 1) and rich would drop or fold away the report
INDENT = 2


class _Console(Console):
    """rich's console, except that a closed pipe is an error for the caller: rich would exit 1 ("findings")."""

    def on_broken_pipe(self) -> None:
        raise  # the BrokenPipeError being handled (rich calls this in its except clause)


def write_console(result: ScanResult, stream: TextIO, *, color: bool | None = None,
                  verbose: bool = False) -> None:
    """Write the report; ``color`` None colours only a terminal, ``verbose`` adds module tables."""
    console = _Console(file=stream, force_terminal=True if color else None,
                       color_system=None if color is False else ("standard" if color else "auto"),
                       markup=False, emoji=False, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = FILE_WIDTH
    console.width = max(console.width, MIN_WIDTH)
    if result.files:
        console.print(_summary_table(result))
    for file in result.files:
        console.print()
        _print_file(console, file, verbose)
    console.print()
    console.print(_totals(result))


def _summary_table(result: ScanResult) -> Table:
    table = Table(title="lora-audit scan", title_justify="left")
    table.add_column("File", overflow="fold")
    table.add_column("Layout")
    table.add_column("Base model")
    table.add_column("Modules", justify="right")
    table.add_column("Max severity")
    table.add_column("Findings", justify="right")
    for file in result.files:
        path = Text(_clean(file.path))
        severity = _severity(file.max_severity)
        if file.error is not None:
            path.append("\n" + _clean(file.error), style="red")
            if not file.findings:
                severity = Text("error", style="bold red")
        stats = file.stats
        table.add_row(path, stats.layout if stats else "-", stats.base_model if stats else "-",
                      str(stats.module_count) if stats else "-", severity, str(len(file.findings)))
    return table


def _print_file(console: Console, file: FileResult, verbose: bool) -> None:
    header = Text(_clean(file.path), style="bold")
    details = [_size(file.size_bytes)] if file.size_bytes is not None else []
    details.append(f"{file.seconds:.2f} s")
    header.append(f"  ({', '.join(details)})", style="dim")
    console.print(header, soft_wrap=True)
    if file.error is not None:
        _indented(console, Text(f"could not be scanned: {_clean(file.error)}", style="red"))
    if file.stats is not None:
        _indented(console, Text(_stats_line(file.stats), style="dim"))
        if verbose and file.stats.modules:
            _indented(console, _module_table(file.stats.modules))
    if file.error is None and not file.findings:
        _indented(console, Text("no findings", style="green"))
    for finding in sorted(file.findings, key=lambda f: f.severity, reverse=True):
        line = Text.assemble(_severity(finding.severity), "  ", (finding.rule_id, "bold"), "  ",
                             _clean(finding.title))
        _indented(console, line)
        body = [(Text(_clean(finding.message)), 3), *_evidence_lines(finding.evidence)]
        if finding.remediation:
            body.append((Text.assemble(("fix: ", "bold green"), _clean(finding.remediation)), 3))
        for text, level in body:
            _indented(console, text, level=level)


def _evidence_lines(found: evidence.Evidence) -> list[tuple[Text, int]]:
    """Each evidence entry as (line, indent level); an object's items one per line below its key."""
    lines = []
    for key, value, more in evidence.entries(found):
        if not isinstance(value, dict):
            lines.append((Text.assemble((f"{_clean(key)}: ", "dim"), _clean(evidence.text(value, more))), 3))
            continue
        lines.append((Text(f"{_clean(key)}:", style="dim"), 3))
        lines += [(Text.assemble((f"{_clean(k)}: ", "dim"), _clean(v)), 4) for k, v in value.items()]
        if more:
            lines.append((Text(f"+{more} more", style="dim"), 4))
    return lines


def _stats_line(stats: WeightStats) -> str:
    base = stats.base_model
    if stats.base_model_evidence:
        base += f" ({stats.base_model_evidence})"
    parts = [
        f"layout {stats.layout}",
        f"base {base}",
        f"{stats.module_count} modules ({_counts(stats.kinds)})" if stats.kinds
        else f"{stats.module_count} modules",
        f"ranks {_counts(stats.ranks)}",
        f"alphas {_counts(stats.alphas)}",
        f"dtypes {_counts(stats.dtypes)}",
        f"{_number(stats.parameter_count)} parameters in {stats.tensor_count} tensors",
    ]
    return _clean(" | ".join(parts))


def _module_table(modules: list[ModuleStats]) -> Table:
    # Non-finite norms (damaged weights) sort first: they are the ones to look at.
    ranked = sorted(modules, key=lambda m: -m.dw_norm if math.isfinite(m.dw_norm) else -math.inf)
    shown = ranked[:TOP_MODULES]
    caption = f"{len(shown)} of {len(modules)} modules, largest dW norm first"
    table = Table(caption=caption, caption_justify="left")
    table.add_column("Module", overflow="fold")
    table.add_column("Kind")
    table.add_column("Rank", justify="right")
    table.add_column("Alpha", justify="right")
    table.add_column("Shape", justify="right")
    table.add_column("|dW|_F", justify="right")
    table.add_column("Eff. rank", justify="right")
    for m in shown:
        table.add_row(Text(_clean(m.name)), _clean(m.kind), str(m.rank), f"{m.alpha:g}",
                      "x".join(str(n) for n in m.shape), f"{m.dw_norm:.4g}", f"{m.effective_rank:.2f}")
    return table


def _totals(result: ScanResult) -> Text:
    summary = result.summary()
    found = [f"{count} {label}" for label, count in reversed(summary["findings"].items()) if count]
    text = Text(f"Scanned {summary['scanned']} of {summary['files']} files")
    if summary["errors"]:
        text.append(f", {summary['errors']} could not be scanned", style="red")
    text.append(". Findings: " + (", ".join(found) if found else "none") + ". ")
    text.append(f"Exit code {summary['exit_code']} (fail on {summary['fail_on']}).")
    return text


def _severity(severity: Severity | None) -> Text:
    if severity is None:
        return Text("-")
    return Text(severity.label.upper(), style=SEVERITY_STYLES[severity])


def _indented(console: Console, renderable: Text | Table, level: int = 1) -> None:
    console.print(Padding(renderable, (0, 0, 0, INDENT * level), expand=False))


def _clean(text: str) -> str:
    """``text`` with control and other non-printable characters escaped (``\\x1b``, ``\\n``)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _counts(counts: dict[str, int], limit: int = 5) -> str:
    """``{"16": 24, "8": 2}`` -> ``"16×24, 8×2"``, most frequent first."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{key}\u00d7{n}" for key, n in items[:limit])
    if len(items) > limit:
        text += f", +{len(items) - limit} more"
    return text or "-"


def _number(n: int) -> str:
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= threshold:
            return f"{n / threshold:.2f}{suffix}"
    return str(n)


def _size(n: int) -> str:
    for threshold, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= threshold:
            return f"{n / threshold:.1f} {suffix}"
    return f"{n} B"
