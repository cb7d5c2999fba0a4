"""Every exception lora-audit raises on purpose.

The CLI turns a :class:`LoraAuditError` into one line on stderr and the exit code in ``exit_code``;
anything else is a bug.
"""

from __future__ import annotations


class LoraAuditError(Exception):
    """Base class: a problem the user can fix, explained in one line."""

    exit_code = 2


class UsageError(LoraAuditError):
    """Bad command-line flags or a bad policy file (exit code 4)."""

    exit_code = 4


class PolicyError(UsageError):
    """A policy file (lora-audit.toml / [tool.lora-audit]) that cannot be parsed or names unknown keys."""


class InvalidFileError(LoraAuditError):
    """A file that is not a readable safetensors LoRA: missing, truncated, corrupt header, bad offsets."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NothingToScanError(LoraAuditError):
    """The given paths held no file lora-audit could scan (exit code 3)."""

    exit_code = 3
