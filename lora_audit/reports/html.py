"""HTML report: one self-contained page for people (no network, no external CSS or JavaScript).

A batch summary table (click a column heading to sort it, a few lines of inline JavaScript), then per
file its findings by severity and, where the identity attack ran, its reconstruction grid (embedded
as a ``data:`` PNG from the ``grid`` path in the LA301/LA302/LA310 evidence) with the consistency score and
the owner verdict (LA304/LA305: similarity, rank, FAR), each score from its finding's evidence
(:data:`_SCORES`). The owner's reference photos are not embedded: the scan gives reports no photos,
and a report that is passed around should not carry them; the verdict's evidence says how many were
compared. Everything that comes from a scanned file (paths, metadata in messages and evidence) is
escaped; a Content-Security-Policy forbids any fetch.
"""

from __future__ import annotations

import base64
import html
import os
from typing import TextIO

from lora_audit import evidence
from lora_audit.reports.json_report import unicode_text
from lora_audit.results import FileResult, Finding, ScanResult, Severity

MAX_GRID_BYTES = 20 << 20  # a grid larger than this is linked by path, not embedded
_PNG = b"\x89PNG\r\n\x1a\n"
_CONSISTENCY = ("LA301", "LA302", "LA310")
_VERDICT = ("LA304", "LA305")
_SCORES = {  # the scores beside the grid: the rules they come from -> (evidence key, label)
    _CONSISTENCY: (("identity_consistency", "identity consistency"),
                   ("generic_consistency_mean", "generic faces' consistency (mean)"),
                   ("generic_consistency_std", "generic faces' consistency (std)"),
                   ("threshold", "consistency threshold (mean + 3 std)"),
                   ("crowd_far", "share of LoRAs of no one person as consistent"),
                   ("crowd_null", "LoRAs of no one person")),
    _VERDICT: (("owner_similarity", "owner similarity"), ("paper_score", "paper score"),
               ("owner_rank", "owner rank"), ("photo_sets", "photo sets ranked"),
               ("impostor_far_note", "impostor FAR"), ("threshold", "similarity threshold"),
               ("reconstructions", "reconstructions"), ("reference_photos", "reference photos")),
}

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1d1d1f; }
h1 { font-size: 1.6em; } h2 { font-size: 1.15em; margin-top: 2em; word-break: break-all; }
table { border-collapse: collapse; width: 100%; margin: .5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: .35em .6em; text-align: left; vertical-align: top; }
table.sortable th { cursor: pointer; user-select: none; background: #f4f4f6; }
table.sortable th::after { content: " \\2195"; color: #999; }
.sev { display: inline-block; min-width: 5.5em; padding: 0 .4em; border-radius: 3px; color: #fff;
       font-weight: 600; text-align: center; }
.critical { background: #7b1fa2; } .high { background: #c62828; } .medium { background: #ef6c00; }
.low { background: #f9a825; color: #222; } .info { background: #78909c; } .none { background: #2e7d32; }
.error { color: #c62828; font-weight: 600; } .evidence { color: #555; font-size: .92em; }
.evidence code, .path { font-family: ui-monospace, monospace; word-break: break-all; }
.identity { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; margin: 1em 0; }
.identity figure { margin: 0; } .identity > div { flex: 1; min-width: 22em; }
.identity img { width: 256px; max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
.verdict { font-weight: 600; } .note { color: #666; font-size: .9em; max-width: 32em; }
"""

_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var dir = th.dataset.dir === "asc" ? -1 : 1;
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    var key = function (row) { var c = row.cells[col]; return c.dataset.sort !== undefined ? c.dataset.sort : c.textContent; };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b), n = Number(x) - Number(y);
      return dir * (isNaN(n) ? x.localeCompare(y) : n);
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def esc(text: object) -> str:
    """``text`` as HTML text or attribute value: escaped, and valid Unicode (undecodable file-name bytes
    as ``\\xff``)."""
    return html.escape(unicode_text(str(text)), quote=True)


def write_html(result: ScanResult, stream: TextIO) -> None:
    """Write ``result`` as one self-contained HTML page."""
    from lora_audit import __version__

    summary = result.summary()
    counts = ", ".join(f"{n} {label}" for label, n in reversed(summary["findings"].items()) if n)
    stream.write("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                 f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
                 "<title>lora-audit report</title>\n"
                 f"<style>{_CSS}</style></head><body>\n"
                 f"<h1>lora-audit report</h1>\n<p>lora-audit {esc(__version__)}: {summary['scanned']} of "
                 f"{summary['files']} files scanned, {summary['errors']} could not be; findings: "
                 f"{esc(counts or 'none')}; exit code {summary['exit_code']} (fail on {esc(summary['fail_on'])}).</p>\n")
    stream.write(_summary_table(result.files))
    for index, file in enumerate(result.files):
        stream.write(_file_section(index, file))
    stream.write(f"<script>{_JS}</script>\n</body></html>\n")


def _severity(severity: Severity | None) -> str:
    label = severity.label if severity is not None else "none"
    return f"<span class=\"sev {label}\">{label}</span>"


def _summary_table(files: list[FileResult]) -> str:
    rows = []
    for index, file in enumerate(files):
        worst = file.max_severity
        identity = ", ".join(f.rule_id for f in file.findings if f.rule_id in _CONSISTENCY + _VERDICT)
        shown = "-" if worst is None and file.error is not None else _severity(worst)
        status = f"<span class=\"error\">error: {esc(file.error)}</span>" if file.error is not None else "scanned"
        rows.append(
            f"<tr><td data-sort=\"{esc(file.path)}\"><a class=\"path\" href=\"#file-{index}\">{esc(file.path)}</a></td>"
            f"<td>{status}</td><td data-sort=\"{-1 if worst is None else int(worst)}\">{shown}</td>"
            f"<td>{len(file.findings)}</td><td>{esc(identity or '-')}</td>"
            f"<td data-sort=\"{file.size_bytes or 0}\">{esc(_size(file.size_bytes))}</td></tr>")
    return ("<h2>Summary</h2>\n<table class=\"sortable\" id=\"summary\"><thead><tr><th>file</th><th>status</th>"
            "<th>worst severity</th><th>findings</th><th>identity</th><th>size</th></tr></thead>\n<tbody>\n"
            + "\n".join(rows) + "\n</tbody></table>\n")


def _file_section(index: int, file: FileResult) -> str:
    parts = [f"<section id=\"file-{index}\"><h2 class=\"path\">{esc(file.path)}</h2>"]
    if file.error is not None:
        parts.append(f"<p class=\"error\">could not be scanned: {esc(file.error)}</p>")
    if file.stats is not None:
        s = file.stats
        parts.append(f"<p>{esc(s.layout)} layout, base model {esc(s.base_model)}, {s.module_count} modules, "
                     f"{s.tensor_count} tensors</p>")
    parts.append(_identity(file.findings))
    if file.findings:
        rows = "\n".join(_finding_row(f) for f in sorted(file.findings, key=lambda f: f.severity, reverse=True))
        parts.append("<table><thead><tr><th>severity</th><th>rule</th><th>finding</th></tr></thead>\n"
                     f"<tbody>\n{rows}\n</tbody></table>")
    elif file.error is None:
        parts.append(f"<p>{_severity(None)} no findings</p>")
    return "\n".join(p for p in parts if p) + "</section>\n"


def _finding_row(finding: Finding) -> str:
    shown = "".join(_evidence_item(key, value, more) for key, value, more in evidence.entries(finding.evidence))
    fix = f"<p><b>fix:</b> {esc(finding.remediation)}</p>" if finding.remediation else ""
    return (f"<tr><td>{_severity(finding.severity)}</td><td>{esc(finding.rule_id)}</td>"
            f"<td><b>{esc(finding.title)}</b><p>{esc(finding.message)}</p>"
            + (f"<ul class=\"evidence\">{shown}</ul>" if shown else "") + f"{fix}</td></tr>")


def _evidence_item(key: str, value: evidence.Value, more: int) -> str:
    """One evidence entry as a list item; an object's items as a list of their own."""
    if not isinstance(value, dict):
        return f"<li><code>{esc(key)}</code>: {esc(evidence.text(value, more))}</li>"
    rows = [f"<li><code>{esc(k)}</code>: {esc(v)}</li>" for k, v in value.items()]
    return f"<li><code>{esc(key)}</code>:<ul>{''.join(rows)}{f'<li>+{more} more</li>' if more else ''}</ul></li>"


def _identity(findings: list[Finding]) -> str:
    """The reconstruction grid beside the scores and the verdict; empty when the attack did not run."""
    consistency = next((f for f in findings if f.rule_id in _CONSISTENCY), None)
    if consistency is None:
        return ""
    verdict = next((f for f in findings if f.rule_id in _VERDICT), None)
    grid = consistency.evidence.get("grid")
    picture = _grid_image(grid) if grid else "<p class=\"note\">no reconstruction grid recorded</p>"
    scores = "".join(f"<tr><th>{esc(label)}</th><td>{esc(evidence.text(f.evidence[key]))}</td></tr>"
                     for f, rules in ((consistency, _CONSISTENCY), (verdict, _VERDICT)) if f is not None
                     for key, label in _SCORES[rules] if key in f.evidence)
    lines = [f"<p class=\"verdict\">{_severity(consistency.severity)} {esc(consistency.rule_id)}: {esc(consistency.title)}</p>"]
    if verdict is not None:
        lines.append(f"<p class=\"verdict\">{_severity(verdict.severity)} {esc(verdict.rule_id)}: {esc(verdict.title)}</p>")
        lines.append("<p class=\"note\">The owner's reference photos are not embedded in this report; "
                     "the verdict compared the reconstructions with them (see <i>reference photos</i>).</p>")
    else:
        lines.append("<p class=\"note\">No owner verdict: the scan was given no reference photos (--references).</p>")
    return (f"<div class=\"identity\"><figure>{picture}<figcaption>reconstructions from the weights alone"
            f"</figcaption></figure><div>{''.join(lines)}<table>{scores}</table></div></div>")


def _grid_image(path: str) -> str:
    """The grid PNG at ``path`` as an ``<img>`` with a data: URI, or a note saying why not."""
    try:
        if os.path.getsize(path) > MAX_GRID_BYTES:
            return f"<p class=\"note\">grid too large to embed: <code>{esc(path)}</code></p>"
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"<p class=\"note\">grid not readable ({esc(e.strerror or e)}): <code>{esc(path)}</code></p>"
    if not data.startswith(_PNG):
        return f"<p class=\"note\">grid is not a PNG: <code>{esc(path)}</code></p>"
    encoded = base64.b64encode(data).decode("ascii")
    return f"<img alt=\"reconstruction grid\" src=\"data:image/png;base64,{encoded}\">"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
