"""The HTML report: one self-contained, escaped page, rendered in a real headless Chromium (skipped
when none is on PATH): the findings show, the console stays free of errors, the summary table sorts,
a screenshot is made."""

from __future__ import annotations

import base64
import html
import io
import re
import shutil
import subprocess

import pytest
from PIL import Image

import lora_audit.testing.synthetic as S
from lora_audit.cli import main
from lora_audit.reports import write_report
from lora_audit.results import FileResult, ScanResult
from lora_audit.rules import make_finding

HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


def _chromium(page, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--enable-logging=stderr", "--v=0", "--window-size=1200,900", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "Uncaught" in line or "ERROR:CONSOLE" in line or "Refused to" in line]


def _grid(path) -> str:
    image = Image.new("RGB", (64, 32), (200, 120, 90))
    image.paste((30, 60, 200), (32, 0, 64, 32))
    image.save(path)
    return str(path)


def _identity_result(grid: str) -> ScanResult:
    consistency = make_finding("LA301", "the weights alone decode to one consistent identity",
                               {"identity_consistency": 0.517, "generic_consistency_mean": 0.073,
                                "generic_consistency_std": 0.026, "threshold": 0.151, "grid": grid,
                                "crowd_far": 0.025, "crowd_null": "40 toy LoRAs"})
    verdict = make_finding("LA304", "the reconstructions match the owner's photos",
                           {"owner_similarity": 0.538, "paper_score": 0.769, "owner_rank": 1, "photo_sets": 201,
                            "impostor_far": 0.0, "impostor_far_note": "< 0.005", "threshold": 0.31,
                            "reconstructions": 8, "reference_photos": 5})
    return ScanResult(files=[FileResult("victim.safetensors", findings=[consistency, verdict], size_bytes=300_000),
                             FileResult(f"{HOSTILE}.safetensors", error=f"bad header {HOSTILE}")])


@pytest.fixture
def scanned(tmp_path, monkeypatch):
    """A real ``scan -f html`` of a leaky LoRA whose metadata holds HTML, and a clean one."""
    monkeypatch.chdir(tmp_path)
    metadata = {**S.leaky_kohya_metadata(), "ss_training_comment": HOSTILE}
    lora = S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2))
    S.save_synthetic(tmp_path / "leaky.safetensors", lora, metadata)
    S.save_synthetic(tmp_path / "clean.safetensors", lora, S.clean_metadata("sd15", rank=2))
    report = tmp_path / "report.html"
    assert main(["scan", "-q", "--no-attack", "leaky.safetensors", "clean.safetensors", "-f", "html",
                 "-o", str(report)]) == 1
    return report


def test_the_page_is_self_contained_and_escapes_what_files_hold(scanned):
    page = scanned.read_text("utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert HOSTILE not in page and "<img src=x" not in page
    assert html.escape(HOSTILE, quote=True) in page
    for rule in ("LA101", "LA102", "LA103", "LA104", "LA105", "LA106"):
        assert rule in page
    assert re.findall(r"<(?:link|iframe|object|embed)\b", page) == []
    assert re.findall(r"<script\b[^>]*\bsrc=", page) == []
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_the_identity_grid_is_embedded_beside_the_scores_and_verdict(tmp_path):
    grid = _grid(tmp_path / "grid.png")
    out = io.StringIO()
    write_report(_identity_result(grid), "html", out)
    page = out.getvalue()
    (data,) = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(data) == (tmp_path / "grid.png").read_bytes()
    for text in ("<th>identity consistency</th><td>0.517</td>",
                 "<th>consistency threshold (mean + 3 std)</th><td>0.151</td>",
                 "<th>share of LoRAs of no one person as consistent</th><td>0.025</td>",
                 "<th>LoRAs of no one person</th><td>40 toy LoRAs</td>",
                 "<th>owner similarity</th><td>0.538</td>", "<th>paper score</th><td>0.769</td>",
                 "<th>photo sets ranked</th><td>201</td>", "<th>impostor FAR</th><td>&lt; 0.005</td>",
                 "<th>similarity threshold</th><td>0.31</td>", "<th>reference photos</th><td>5</td>",
                 "LA304", "reference photos are not embedded"):
        assert text in page
    assert re.findall(r'\b(?:src|href)="(?!data:|#)', page) == []  # nothing fetched, links stay in the page
    missing = io.StringIO()
    write_report(_identity_result(str(tmp_path / "gone.png")), "html", missing)
    assert "grid not readable" in missing.getvalue() and "data:image" not in missing.getvalue()


@needs_chromium
def test_chromium_renders_the_report_without_console_errors(scanned, tmp_path):
    shot = tmp_path / "report.png"
    dom = _chromium(scanned, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console_errors(dom.stderr) == []
    for text in ("lora-audit report", "leaky.safetensors", "clean.safetensors", "LA101",
                 "Training captions and tags are stored in the metadata", "no findings"):
        assert text in dom.stdout
    assert "&lt;script&gt;alert(" in dom.stdout and "<img src=\"x\"" not in dom.stdout  # the hostile value stayed text
    run = _chromium(scanned, f"--screenshot={shot}")
    assert run.returncode == 0 and _console_errors(run.stderr) == []
    assert shot.read_bytes().startswith(b"\x89PNG") and Image.open(shot).size == (1200, 900)


@needs_chromium
def test_chromium_catches_a_console_error_and_the_summary_table_sorts(scanned, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>undefinedFunction()</script></body></html>")
    assert _console_errors(_chromium(broken, "--dump-dom").stderr)  # the check above can fail
    page = scanned.read_text("utf-8")
    rows = []
    for clicks in (1, 2):  # the "worst severity" heading: ascending, then descending
        clicked = tmp_path / f"sorted{clicks}.html"
        click = 'document.querySelectorAll("#summary th")[2].click();' * clicks
        clicked.write_text(page.replace("</body>", f"<script>{click}</script></body>"), "utf-8")
        dom = _chromium(clicked, "--dump-dom")
        assert _console_errors(dom.stderr) == []
        body = dom.stdout.split('id="summary"', 1)[1].split("</table>", 1)[0]
        rows.append(re.findall(r'href="#file-\d+">([^<]+)<', body))
    assert rows == [["clean.safetensors", "leaky.safetensors"], ["leaky.safetensors", "clean.safetensors"]]


@needs_chromium
def test_chromium_shows_the_embedded_grid(tmp_path):
    page = tmp_path / "identity.html"
    with open(page, "w", encoding="utf-8") as stream:
        write_report(_identity_result(_grid(tmp_path / "grid.png")), "html", stream)
    probe = tmp_path / "probe.html"  # the image decoded: its natural width is written into the DOM
    probe.write_text(page.read_text("utf-8").replace(
        "</body>", '<script>var i = document.querySelector("img"); '
        'i.decode().then(function () { document.title = "grid " + i.naturalWidth; });</script></body>'), "utf-8")
    dom = _chromium(probe, "--dump-dom", "--virtual-time-budget=2000")
    assert _console_errors(dom.stderr) == [] and "<title>grid 64</title>" in dom.stdout
    shot = tmp_path / "identity.png"
    assert _chromium(page, f"--screenshot={shot}").returncode == 0 and shot.stat().st_size > 0
