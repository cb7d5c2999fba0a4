"""The ``lora-audit`` command line: the app, one module per command group, shared option types."""

from lora_audit.cli.app import app, main, run

__all__ = ["app", "main", "run"]
