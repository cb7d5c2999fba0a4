"""A LoRA file opened for auditing: metadata, canonical modules, dW and base-model family."""

from __future__ import annotations

import numpy as np

from lora_audit.weights.base_model import detect_base_model
from lora_audit.weights.modules import (LoraModule, ModuleProblems, delta_weight, file_layout, group_modules,
                                        low_rank_factors)
from lora_audit.weights.safetensors_file import SafetensorsFile


class LoraFile:
    """A validated safetensors LoRA. Use as a context manager (it holds the file open)."""

    def __init__(self, path: str):
        self.file = SafetensorsFile(path)
        self.path = path
        self.metadata = self.file.metadata
        self.tensors = self.file.tensors
        self.modules: list[LoraModule]
        self.problems: ModuleProblems
        self.modules, self.problems = group_modules(self.tensors, self.metadata, self.file.scalar)
        self.layout = file_layout(self.modules)
        self.base_model, self.base_model_evidence = detect_base_model(self.metadata, self.modules)

    def delta(self, module: LoraModule) -> np.ndarray:
        """dW of one module, shaped (out, in) or (out, in, kh, kw)."""
        return delta_weight(module, self.file.read)

    def deltas(self) -> dict[str, np.ndarray]:
        return {m.name: self.delta(m) for m in self.modules}

    def factors(self, module: LoraModule) -> tuple[np.ndarray, np.ndarray] | None:
        """(scale * up [out, r], down [r, in]) when dW is their product (:func:`low_rank_factors`), else None."""
        return low_rank_factors(module, self.file.read)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "LoraFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_lora(path: str) -> LoraFile:
    """Open and validate ``path``; raises InvalidFileError with a one-line reason."""
    return LoraFile(path)
