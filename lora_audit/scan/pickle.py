"""The pickle check (LA002): pickle checkpoints are never loaded; their opcodes are read as data."""

from __future__ import annotations

from lora_audit.evidence import items, short_list
from lora_audit.results import Finding
from lora_audit.rules import make_finding
from lora_audit.weights.pickle_file import pickle_imports

NOT_LOADED = "pickle checkpoint: not loaded (unsafe format); convert it to safetensors to audit it"
FORMATS = {"zip": "pickle (torch.save zip archive)", "raw": "pickle (raw stream)"}


def pickle_finding(path: str) -> Finding:
    """LA002 for the pickle checkpoint at ``path``: the imports it would run as evidence, those outside
    the allow-list of torch.save checkpoints named in the message."""
    found = pickle_imports(path)
    evidence = {"format": FORMATS[found.kind] if found.opcodes else "pickle extension (no readable pickle stream)"}
    if found.imports:
        evidence |= items("imports", found.imports)
    if found.unsafe:
        evidence |= items("unsafe_imports", found.unsafe)
    if found.truncated:
        evidence["truncated"] = f"{found.truncated}; imports further on are not listed"
    if found.unsafe:
        message = "pickle checkpoint; unpickling it would import " + short_list(found.unsafe)
    elif found.truncated:
        message = "pickle checkpoint, only partly read; lora-audit never unpickles files"
    else:
        message = "pickle checkpoint; lora-audit never unpickles files"
    return make_finding("LA002", message, evidence)
