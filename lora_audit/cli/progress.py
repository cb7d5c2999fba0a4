"""Progress on stderr: stage bars for the long-running commands, a file bar for scan batches."""

from __future__ import annotations

import contextlib
import logging
import sys


@contextlib.contextmanager
def stage_progress():
    """A progress callback ``(stage, step, total, metrics)``: rich bars on a terminal, else a line on
    stderr at most every 30 s (logs of background runs)."""
    if not sys.stderr.isatty():
        import time

        last = {"time": 0.0}

        def line(stage: str, step: int, total: int, metrics: dict) -> None:
            if step == total or time.monotonic() - last["time"] >= 30:
                last["time"] = time.monotonic()
                print(f"{stage} {step}/{total} {_shown(metrics)}", file=sys.stderr, flush=True)

        yield line
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=False) as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, step: int, total: int, metrics: dict) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=step, description=f"{stage} {_shown(metrics)}")

        yield report


def _shown(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


@contextlib.contextmanager
def scan_progress(total: int, quiet: bool):
    """A rich progress bar on stderr for batches, only on a terminal and without --quiet: files done of
    ``total``, findings so far and the current file. Yields ``advance(file_result)`` (a file is done),
    which has ``advance.starting(path)`` (an attack on ``path`` begins: it takes seconds)."""
    if quiet or total < 2 or not sys.stderr.isatty():
        advance = lambda file_result: None  # noqa: E731
        advance.starting = lambda path: None
        yield advance
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    findings = 0
    columns = (TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[found]} findings  {task.fields[current]}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("scanning", total=total, found=0, current="")

        def advance(file_result) -> None:
            nonlocal findings
            findings += len(file_result.findings)
            progress.update(task, advance=1, found=findings, current=escape(file_result.path[-60:]))

        advance.starting = lambda path: progress.update(task, current="attacking " + escape(path[-50:]))
        yield advance


@contextlib.contextmanager
def errors_only(quiet: bool):
    """With ``quiet`` (--quiet), the library's log shows errors only for the duration of the block."""
    logger = logging.getLogger("lora_audit")
    previous = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)
