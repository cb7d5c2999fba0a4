"""The pickle check (LA002): pickle checkpoints are never loaded; their opcodes are read as data."""

from __future__ import annotations

from lora_audit.results import Finding
from lora_audit.rules import make_finding
from lora_audit.scan.check import listing
from lora_audit.weights.pickle_file import pickle_imports

NOT_LOADED = "pickle checkpoint: not loaded (unsafe format); convert it to safetensors to audit it"


def pickle_finding(path: str) -> Finding:
    """LA002 for the pickle checkpoint at ``path``, naming the imports outside torch/numpy it would run."""
    imports, unsafe = pickle_imports(path)
    evidence = {"format": "pickle (torch.save / zip archive)" if imports else "pickle extension"}
    if unsafe:
        evidence["imports outside torch/numpy"] = listing(unsafe)
    message = ("pickle checkpoint; unpickling it would import " + listing(unsafe)
               if unsafe else "pickle checkpoint; lora-audit never unpickles files")
    return make_finding("LA002", message, evidence)
