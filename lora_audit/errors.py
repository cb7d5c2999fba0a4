"""Every exception lora-audit raises on purpose.

The CLI turns a :class:`LoraAuditError` into one line on stderr and the exit code in ``exit_code``;
anything else is a bug. Errors about a named input (:class:`InputError`) carry which input and what
is wrong as fields, so the library never words them as command-line flags: the CLI does.
"""

from __future__ import annotations


class LoraAuditError(Exception):
    """Base class: a problem the user can fix, explained in one line."""

    exit_code = 2


class UsageError(LoraAuditError):
    """Bad command-line flags or a bad policy file (exit code 4)."""

    exit_code = 4


class InputError(UsageError):
    """An input the caller named (``input``, e.g. ``"attack_model"``) whose ``value`` cannot be used.

    ``problem`` says what is wrong; ``fix`` optionally names another input and what setting it does,
    e.g. ``("force", "to replace it")``. ``str(error)`` words inputs by name ("attack model x: ...");
    :meth:`describe` lets the CLI word them as its flags ("--attack-model x: ...").
    """

    def __init__(self, input: str, value: object, problem: str, fix: tuple[str, str] | None = None):
        self.input = input
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(self.describe(lambda name: name.replace("_", " ")))

    def describe(self, word, verb: str = "set") -> str:
        """The one-line message, each input name passed through ``word`` (name -> wording) and the fix
        introduced by ``verb`` (the CLI says "pass --force to replace it")."""
        text = f"{word(self.input)} {self.value}: {self.problem}" if self.value is not None else \
            f"{word(self.input)}: {self.problem}"
        if self.fix is not None:
            text += f"; {verb} {word(self.fix[0])} {self.fix[1]}"
        return text

    def __reduce__(self):  # pickled with its fields (a Ray worker's error reaches the scan whole)
        return type(self), (self.input, self.value, self.problem, self.fix)


class MissingInputError(InputError):
    """An input that is needed but was not given and has no default (a scan reports it as LA303)."""


class PolicyError(UsageError):
    """A policy file (lora-audit.toml / [tool.lora-audit]) that cannot be parsed or names unknown keys."""


class InvalidFileError(LoraAuditError):
    """A file that cannot be read as what it should be: missing, truncated, corrupt, or an unknown format version."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.path, self.reason)


class NotAttackableError(LoraAuditError):
    """The attack does not apply to this LoRA (e.g. none of its modules is one the attack model reads)."""


class AttackFailedError(LoraAuditError):
    """The attack failed on one file, not for want of an input: that file's identity audit is incomplete."""


class NothingToScanError(LoraAuditError):
    """The given paths held no file lora-audit could scan (exit code 3)."""

    exit_code = 3
