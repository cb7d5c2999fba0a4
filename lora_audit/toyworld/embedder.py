"""The toy world's face embedder: a small CNN that plays FaceNet's role on rendered faces.

Trained by :mod:`lora_audit.toyworld.lab.train_embedder`; saved as ``config.json`` (the net's shape and
a ``format_version``) + ``model.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lora_audit.versioned import read_versioned, versioned
from lora_audit.identity.embedder import FaceEmbedder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1  # of config.json; files without one were written before versioning: 1


@dataclass
class ToyNetConfig:
    """Shape of :class:`ToyFaceNet`."""

    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128, 128)  # one conv stage each; a 2x max-pool between stages
    dim: int = 128


class ToyFaceNet(nn.Module):
    """conv-BN-ReLU stages with max-pooling, then the flattened last feature map -> a ``dim`` vector."""

    def __init__(self, config: ToyNetConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 3
        for k, c_out in enumerate(config.channels):
            if k > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        side = config.image_size // 2 ** (len(config.channels) - 1)
        # Flatten rather than average-pool: at 4x4 where a feature sits (eyes vs mouth) still matters.
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, config.dim, bias=False),
                                   nn.BatchNorm1d(config.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 3, S, S] in [0, 1]
        h = self.features((x - 0.5) / 0.25)  # [B, C, S/8, S/8] for four stages
        return self.embed(h)  # [B, dim], not normalised


class ToyFaceEmbedder(FaceEmbedder):
    """A :class:`FaceEmbedder` around a trained :class:`ToyFaceNet`."""

    def __init__(self, model: ToyFaceNet, device: str | torch.device | None = None):
        super().__init__(device)
        self.model = model.to(self.device).eval()

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def dim(self) -> int:
        return self.model.config.dim

    def _embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``; returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = versioned(asdict(self.model.config), FORMAT_VERSION)
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt", "model": "ToyFaceNet"})
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = None) -> "ToyFaceEmbedder":
        """The embedder saved by :meth:`save` in ``directory``."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not a saved toy face embedder")
        config = read_versioned(directory / CONFIG_NAME, "toy-embedder", FORMAT_VERSION)
        model = ToyFaceNet(ToyNetConfig(**{**config, "channels": tuple(config["channels"])}))
        model.load_state_dict(load_file(directory / WEIGHTS_NAME))
        return cls(model, device)
