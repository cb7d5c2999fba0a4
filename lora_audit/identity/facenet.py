"""FaceNet: an Inception-ResNet-v1 whose state_dict loads facenet-pytorch's pretrained checkpoints.

The layer names, shapes, BatchNorm ``eps=1e-3`` and the forward follow ``models/inception_resnet_v1.py``
of timesler/facenet-pytorch, so its files load unchanged: ``20180402-114759-vggface2.pt`` (logits for
8631 classes) and ``20180408-102900-casia-webface.pt`` (10575), David Sandberg's TensorFlow models
ported to PyTorch. The network sees 160x160 RGB face crops standardised as ``(x * 255 - 127.5) / 128``.

Threshold: neither facenet-pytorch nor davidsandberg/facenet publishes a fixed verification threshold
(their LFW accuracies, 0.9965 VGGFace2 and 0.9905 CASIA-WebFace, fit one per fold by 10-fold
cross-validation). deepface publishes tuned thresholds per model (``deepface/config/threshold.py``);
its "Facenet512" is Sandberg's 20180402-114759 VGGFace2 model (LFW 0.9965), the one facenet-pytorch
ports, with two figures tuned separately: an L2 distance of 1.04 between unit embeddings, that is a
cosine similarity of ``1 - 1.04**2 / 2 = 0.459``, and a cosine distance of 0.30 (similarity 0.70).
The FaceNet paper (Schroff et al. 2015, Fig. 1) shows a squared L2 distance of 1.1 (cosine 0.45)
for Google's own network. The verdict uses 0.459, the lower of deepface's two: an owner is warned
when a published operating point of this network takes the reconstructions for them. deepface
feeds the network [0, 1] pixels after its own detector and alignment, facenet-pytorch
``(x * 255 - 127.5) / 128``, so the figure carries over approximately, not exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lora_audit.errors import InputError, MissingInputError
from lora_audit.identity.embedder import FaceEmbedder

VGGFACE2_FILE = "20180402-114759-vggface2.pt"
CASIA_WEBFACE_FILE = "20180408-102900-casia-webface.pt"
IMAGE_SIZE = 160
EMBEDDING_DIM = 512
CHECKPOINTS = {8631: "VGGFace2", 10575: "CASIA-WebFace"}  # rows of logits.weight -> training set
PUBLISHED_L2_DISTANCE = 1.04  # deepface's threshold for Facenet512 = Sandberg's 20180402-114759 (VGGFace2)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (TensorFlow's eps 1e-3) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _chain(*convs: tuple) -> nn.Sequential:
    """A branch of several :class:`BasicConv2d`, each given as its constructor's arguments."""
    return nn.Sequential(*(BasicConv2d(*args) for args in convs))


class _Branches(nn.Module):
    """Runs ``branch0``, ``branch1``, ... on the same input and concatenates their channels (Mixed_6a/7a)."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.width = len(branches)
        for k, branch in enumerate(branches):
            self.add_module(f"branch{k}", branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, f"branch{k}")(x) for k in range(self.width)], dim=1)


class _Residual(_Branches):
    """Block35/17/8: ``relu(x + scale * conv2d(concat(branches(x))))``; the last Block8 has no ReLU."""

    def __init__(self, channels: int, concat: int, scale: float, *branches: nn.Module, relu: bool = True):
        super().__init__(*branches)
        self.conv2d = nn.Conv2d(concat, channels, 1)  # with a bias, unlike the branches' convs
        self.scale = scale
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.scale * self.conv2d(super().forward(x)))


def _block35(scale: float = 0.17) -> _Residual:
    # [B, 256, 17, 17] -> same
    return _Residual(256, 96, scale, BasicConv2d(256, 32, 1),
                     _chain((256, 32, 1), (32, 32, 3, 1, 1)),
                     _chain((256, 32, 1), (32, 32, 3, 1, 1), (32, 32, 3, 1, 1)))


def _block17(scale: float = 0.10) -> _Residual:
    # [B, 896, 8, 8] -> same
    return _Residual(896, 256, scale, BasicConv2d(896, 128, 1),
                     _chain((896, 128, 1), (128, 128, (1, 7), 1, (0, 3)), (128, 128, (7, 1), 1, (3, 0))))


def _block8(scale: float = 0.20, relu: bool = True) -> _Residual:
    # [B, 1792, 3, 3] -> same
    return _Residual(1792, 384, scale, BasicConv2d(1792, 192, 1),
                     _chain((1792, 192, 1), (192, 192, (1, 3), 1, (0, 1)), (192, 192, (3, 1), 1, (1, 0))),
                     relu=relu)


class InceptionResnetV1(nn.Module):
    """facenet-pytorch's ``InceptionResnetV1`` (same state_dict); ``num_classes`` adds its ``logits`` layer.

    :meth:`forward` always returns the L2-normalised embedding; ``logits`` only exists so a checkpoint's
    classifier round-trips.
    """

    def __init__(self, num_classes: int | None = None, dropout: float = 0.6):
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*(_block35() for _ in range(5)))
        self.mixed_6a = _Branches(BasicConv2d(256, 384, 3, stride=2),
                                  _chain((256, 192, 1), (192, 192, 3, 1, 1), (192, 256, 3, 2)),
                                  nn.MaxPool2d(3, stride=2))
        self.repeat_2 = nn.Sequential(*(_block17() for _ in range(10)))
        self.mixed_7a = _Branches(_chain((896, 256, 1), (256, 384, 3, 2)),
                                  _chain((896, 256, 1), (256, 256, 3, 2)),
                                  _chain((896, 256, 1), (256, 256, 3, 1, 1), (256, 256, 3, 2)),
                                  nn.MaxPool2d(3, stride=2))
        self.repeat_3 = nn.Sequential(*(_block8() for _ in range(5)))
        self.block8 = _block8(scale=1.0, relu=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.last_linear = nn.Linear(1792, EMBEDDING_DIM, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=1e-3, momentum=0.1)
        if num_classes is not None:
            self.logits = nn.Linear(EMBEDDING_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 3, 160, 160] standardised as (pixel - 127.5) / 128
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))  # [B, 64, 77, 77]
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x))))  # [B, 256, 17, 17]
        x = self.mixed_6a(self.repeat_1(x))  # [B, 896, 8, 8]
        x = self.mixed_7a(self.repeat_2(x))  # [B, 1792, 3, 3]
        x = self.block8(self.repeat_3(x))  # [B, 1792, 3, 3]
        x = self.dropout(self.avgpool_1a(x)).flatten(1)  # [B, 1792]
        return F.normalize(self.last_bn(self.last_linear(x)), p=2, dim=1)  # [B, 512]


def default_weights_path() -> Path:
    """Where facenet-pytorch caches the VGGFace2 checkpoint: ``<torch home>/checkpoints/``.

    The torch home is ``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``, as in
    facenet-pytorch's ``get_torch_home``.
    """
    home = os.getenv("TORCH_HOME") or os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "checkpoints" / VGGFACE2_FILE


def _check_state(state: Mapping[str, torch.Tensor], model: InceptionResnetV1) -> str | None:
    """Why ``state`` does not fit ``model`` (one line), or None; ``logits.*`` and BN counters may be absent."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and k not in ("logits.weight", "logits.bias")]
    wrong = [f"{k} {list(state[k].shape)} != {list(shape)}" for k, shape in expected.items()
             if k in state and tuple(state[k].shape) != shape]
    weight, bias = state.get("logits.weight"), state.get("logits.bias")
    if (weight is None) != (bias is None) or weight is not None and (
            weight.ndim != 2 or weight.shape[1] != EMBEDDING_DIM or tuple(bias.shape) != (weight.shape[0],)):
        wrong.append("logits.weight and logits.bias not a 512 -> classes layer")
    problems = [f"{len(found)} {what}, e.g. {found[0]}"
                for what, found in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("wrong shapes", wrong)) if found]
    return "; ".join(problems) or None


class FaceNetEmbedder(FaceEmbedder):
    """A :class:`FaceEmbedder` around a pretrained :class:`InceptionResnetV1`: 160x160 crops -> 512-d."""

    def __init__(self, model: InceptionResnetV1, device: str | torch.device | None = None,
                 checkpoint: str = "an unknown checkpoint"):
        super().__init__(device)
        self.model = model.to(self.device).eval()
        self.checkpoint = checkpoint  # the training set of the weights, or what is known of it

    @property
    def image_size(self) -> int:
        return IMAGE_SIZE

    def verification_threshold(self) -> tuple[float, str]:
        """(cosine similarity at or above which two faces count as one person, where that figure comes from)."""
        cosine = 1 - PUBLISHED_L2_DISTANCE ** 2 / 2
        source = (f"deepface's published Facenet512 threshold, L2 distance {PUBLISHED_L2_DISTANCE} "
                  f"= cosine {cosine:.3f} (its cosine-metric figure, 0.70, is stricter), for Sandberg's VGGFace2 weights")
        if self.checkpoint != "VGGFace2":
            source += f"; these weights are {self.checkpoint}, for which no threshold is published"
        return cosine, source

    @property
    def dim(self) -> int:
        return EMBEDDING_DIM

    def _embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images * 255 - 127.5) / 128)

    @classmethod
    def load(cls, weights: str | Path | None, device: str | torch.device | None = None) -> "FaceNetEmbedder":
        """The embedder with facenet-pytorch's checkpoint ``weights``; None: the cached VGGFace2 one.

        Raises :class:`~lora_audit.errors.InputError` (one line) when the file is absent, unreadable, or not an
        InceptionResnetV1 state_dict; nothing is downloaded.
        """
        if weights is None:
            path = default_weights_path()
            if not path.is_file():
                raise MissingInputError("face_weights", None, f"no FaceNet weights ({path} not found): give "
                                 f"facenet-pytorch's {VGGFACE2_FILE} or {CASIA_WEBFACE_FILE}")
        else:
            path = Path(weights)
            if not path.is_file():
                raise InputError("face_weights", path, "no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt or foreign file fails in many ways, all of them the user's to fix
            raise InputError("face_weights", path, f"not a readable PyTorch checkpoint "
                             f"({e.__class__.__name__})") from None
        if not isinstance(state, Mapping) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise InputError("face_weights", path, "not a state_dict (a mapping of names to tensors)")
        model = InceptionResnetV1()
        problem = _check_state(state, model)
        if problem:
            raise InputError("face_weights", path, f"not a facenet-pytorch InceptionResnetV1 checkpoint "
                             f"({problem})")
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits.")}, strict=False)
        logits = state.get("logits.weight")
        checkpoint = ("an unknown checkpoint (no logits layer)" if logits is None
                      else CHECKPOINTS.get(logits.shape[0], f"an unknown checkpoint ({logits.shape[0]} classes)"))
        return cls(model, device, checkpoint)
