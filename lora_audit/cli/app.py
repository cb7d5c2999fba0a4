"""The ``lora-audit`` app: the root command, ``--version``, the command modules, and :func:`main`,
which turns errors and SIGINT / SIGTERM into one line on stderr and an exit code."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

import typer
from typer.core import TyperGroup

from lora_audit import __version__
from lora_audit.cli import attack, evaluate, federated, finetune, scan, toy
from lora_audit.cli.options import error_message, printable
from lora_audit.cli.output import Interrupted, interrupt
from lora_audit.errors import LoraAuditError

log = logging.getLogger("lora_audit")

PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away


def _stdout_closed() -> int:
    """The reader of stdout went away (``scan ... | head -1``): point stdout at /dev/null so that
    nothing more fails on it (the interpreter flushes it at exit), and return :data:`PIPE_CLOSED`."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: not a real file (tests capture it)
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return PIPE_CLOSED


class _RootGroup(TyperGroup):
    """The root command. click would turn a broken pipe on stdout into exit code 1, which means
    "findings": this ends the command quietly with :data:`PIPE_CLOSED` instead. Typer would turn
    a KeyboardInterrupt into a silent exit 130: it becomes :class:`Interrupted`, which :func:`main` reports."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise typer.Exit(_stdout_closed()) from None
        except KeyboardInterrupt:
            raise Interrupted(signal.SIGINT) from None


app = typer.Typer(
    cls=_RootGroup,
    name="lora-audit",
    help="Privacy-risk audit of LoRA weights for text-to-image diffusion models.\n\n" + scan.EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for module in (scan, finetune, attack, evaluate, federated):
    app.add_typer(module.commands)
app.add_typer(toy.commands, name="toy")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lora-audit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Privacy-risk audit of LoRA weights for text-to-image diffusion models."""


def _on_signal(signum, frame) -> None:
    """SIGINT / SIGTERM: stop the command with :class:`Interrupted`; further signals are ignored
    while it cleans up (workers, temporary files), which takes a moment."""
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    interrupt(signum)


@contextlib.contextmanager
def _signals_interrupt():
    """While the command runs, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app, maps errors to one line on stderr and the documented exit code
    (130 for SIGINT, 143 for SIGTERM)."""
    logging.basicConfig(level=os.environ.get("LORA_AUDIT_LOG", "WARNING").upper(), format="%(levelname)s %(message)s")
    with _signals_interrupt():
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    click_usage_error = typer.BadParameter.__mro__[1]  # click's UsageError, vendored or not
    try:
        code = app(args=argv, prog_name="lora-audit", standalone_mode=False)
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
    except BrokenPipeError:
        return _stdout_closed()
    except click_usage_error as e:
        e.show()
        return 4
    except LoraAuditError as e:
        typer.echo(f"lora-audit: error: {printable(error_message(e))}", err=True)
        return e.exit_code
    except Interrupted as e:
        typer.echo(f"lora-audit: {e.word}", err=True)
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("lora-audit: interrupted", err=True)
        return 130
    except Exception as e:  # a bug: never exit 1, which means "findings"
        log.debug("internal error", exc_info=True)
        typer.echo(f"lora-audit: internal error: {e!r} (LORA_AUDIT_LOG=debug shows the traceback)", err=True)
        return 2
    return code if isinstance(code, int) else 0


def run() -> None:
    sys.exit(main())
