"""The one small interface every group of rules implements: a file in, its findings out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from lora_audit.results import Finding, WeightStats
from lora_audit.weights.lora_file import LoraFile


@dataclass
class Subject:
    """One opened safetensors LoRA being scanned: its path as given, the file, and its weight
    statistics once the static checks have run (the identity check reads the base family there)."""

    path: str
    lora: LoraFile
    stats: WeightStats | None = None


class Check(ABC):
    """A group of rules (``rule_ids``) whose findings are made here and nowhere else."""

    rule_ids: tuple[str, ...] = ()
    batch: int = 1  # subjects the scan hands to prepare() at a time (1: none, each file on its own)

    @abstractmethod
    def run(self, subject: Subject) -> list[Finding]:
        """The findings of this group for ``subject``; problems of the file itself raise InvalidFileError."""

    def prepare(self, subjects: list[Subject]) -> None:
        """Work shared by up to ``batch`` subjects, done before their :meth:`run` calls (default: none)."""
