"""``python -m lora_audit`` runs the CLI."""

from lora_audit.cli import run

run()
