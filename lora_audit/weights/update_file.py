"""Federated-learning client update files: what a client shares, and how to recognise one.

A client update is a safetensors file of parameter gradients (``what = gradient``) or of a LoRA
update (``what = lora-update``: the change of the LoRA factors after the client's local steps),
with ``__metadata__`` keys under :data:`PREFIX` saying what it holds. It never carries photos,
the client's diffusion noise or its timesteps: only what a federated client sends its server.
Read without torch (static scans); written from torch tensors by the client.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from lora_audit.errors import InvalidFileError
from lora_audit.evidence import Evidence, per_item

PREFIX = "lora_audit.fl."
FORMAT_KEY = PREFIX + "format"  # the format version of the update file
FORMAT_VERSION = "1"
WHAT = ("gradient", "lora-update")
# Keys a client may write; anything else under PREFIX is refused by :func:`write_update`.
KEYS = frozenset(PREFIX + k for k in (
    "format", "what", "batch_size", "model_id", "prompt", "local_steps", "lr", "lora_rank", "lora_alpha",
    "lora_targets", "lora_seed", "defence"))


@dataclass(frozen=True)
class UpdateFacts:
    """The static facts of an update file, read from its header alone."""

    what: str  # gradient | lora-update
    batch_size: int
    model_id: str
    tensor_count: int
    parameter_count: int
    local_steps: int = 1
    defence: dict | None = None  # clipping / noise / sparsification the client applied, if any

    def evidence(self) -> Evidence:
        """The facts as a finding's evidence; ``defence`` as an object of setting -> value (JSON text when
        the value is not a string)."""
        facts: Evidence = {"what": self.what, "batch_size": self.batch_size, "model_id": self.model_id,
                           "tensor_count": self.tensor_count, "parameter_count": self.parameter_count,
                           "local_steps": self.local_steps}
        if self.defence:
            facts |= per_item("defence", {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                                          for k, v in self.defence.items()})
        return facts


def is_update(metadata: dict[str, str]) -> bool:
    """Whether a safetensors ``__metadata__`` is that of a federated client update."""
    return FORMAT_KEY in metadata or any(key.startswith(PREFIX) for key in metadata)


def update_facts(path: str, metadata: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> UpdateFacts:
    """The facts of the update file ``path`` from its metadata and tensor shapes; InvalidFileError
    when the ``lora_audit.fl.*`` keys are incomplete or unusable."""
    version = metadata.get(FORMAT_KEY)
    if version != FORMAT_VERSION:
        raise InvalidFileError(path, f"federated update of format {version!r}; this lora-audit reads format "
                               f"{FORMAT_VERSION}")
    what = metadata.get(PREFIX + "what")
    if what not in WHAT:
        raise InvalidFileError(path, f"federated update whose {PREFIX}what is {what!r}, not one of {', '.join(WHAT)}")
    try:
        batch = int(metadata.get(PREFIX + "batch_size", ""))
        steps = int(metadata.get(PREFIX + "local_steps", "1"))
        defence = json.loads(metadata[PREFIX + "defence"]) if PREFIX + "defence" in metadata else None
    except (ValueError, TypeError):
        raise InvalidFileError(path, f"federated update with an unreadable {PREFIX}batch_size, local_steps or "
                               "defence") from None
    if batch < 1 or steps < 1:
        raise InvalidFileError(path, "federated update with a batch size or local steps below 1")
    return UpdateFacts(what, batch, metadata.get(PREFIX + "model_id", "unknown"), len(shapes),
                       sum(math.prod(s) for s in shapes.values()), steps,
                       defence if isinstance(defence, dict) else None)


def read_update(path: str):
    """(tensors by name as torch tensors, metadata, facts) of an update file; InvalidFileError when
    ``path`` is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lora_audit.weights.safetensors_file import SafetensorsFile

    with SafetensorsFile(path) as file:
        metadata = dict(file.metadata)
        shapes = {name: info.shape for name, info in file.tensors.items()}
    if not is_update(metadata):
        raise InvalidFileError(path, f"not a federated client update (no {PREFIX}* metadata; "
                               "lora-audit fl-client writes them)")
    facts = update_facts(path, metadata, shapes)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise InvalidFileError(path, f"unreadable tensors ({e})") from None
    return tensors, metadata, facts


def write_update(path: str, tensors: dict, metadata: dict[str, str]) -> None:
    """Write ``tensors`` (name -> torch tensor) and ``metadata`` (keys of :data:`KEYS`) as an update file."""
    from safetensors.torch import save_file

    unknown = sorted(set(metadata) - KEYS)
    if unknown:  # a client shares nothing it does not mean to: no free-form keys
        raise ValueError(f"not update-file metadata keys: {', '.join(unknown)}")
    meta = {FORMAT_KEY: FORMAT_VERSION, **{k: str(v) for k, v in metadata.items()}}
    save_file({k: v.detach().cpu().contiguous().float() for k, v in tensors.items()}, path, metadata=meta)
