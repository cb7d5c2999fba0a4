"""The differential-privacy guarantee a LoRA file states: ``lora_audit.dp.*`` metadata.

``lora-audit finetune --dp`` writes it; the scan reads it (LA108) and the identity verdict quotes it.
The privacy unit is part of the guarantee: DP-SGD over training images protects one image, and a
person who is in every photo of a DreamBooth set is protected only by group privacy over all of them.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Mapping

PREFIX = "lora_audit.dp."
IMAGE_UNIT = "one training image (an instance photo or a class image); the number of images is treated as public"


@dataclass(frozen=True)
class DPGuarantee:
    """(epsilon, delta)-DP of the released adapter with respect to the privacy unit."""

    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    accountant: str  # prv | rdp
    privacy_unit: str = IMAGE_UNIT
    dataset_size: int = 0  # records the sampling ran over (photos + class images)
    instance_images: int = 0  # of them, the subject's photos

    def group_epsilon(self, k: int | None = None) -> float:
        """The epsilon for a group of ``k`` records (default: all the subject's photos), by group
        privacy: k * epsilon."""
        return self._group(k) * self.epsilon

    def group_delta(self, k: int | None = None) -> float:
        """The delta that goes with :meth:`group_epsilon`: k * e^((k-1) epsilon) * delta (inf past floats)."""
        k = self._group(k)
        try:
            return k * math.exp((k - 1) * self.epsilon) * self.delta
        except OverflowError:
            return math.inf

    def _group(self, k: int | None) -> int:
        return k if k is not None else max(self.instance_images, 1)

    def person_protection(self) -> str:
        """What the guarantee means for the person in all their photos."""
        if self.instance_images <= 1:
            return "the person has one photo: the per-image guarantee is theirs"
        eps, delta = self.group_epsilon(), self.group_delta()
        meaningless = eps > 10 or delta > 1e-3  # delta far above 1e-3 allows whole records to be released
        return (f"the person, in all {self.instance_images} photos, only by group privacy: epsilon {eps:.3g}, "
                f"delta {delta:.2g}" + (" (no meaningful guarantee)" if meaningless else ""))

    def summary(self) -> str:
        """One line: what is guaranteed, for what unit, and what that means for the person."""
        return (f"DP-SGD (epsilon {self.epsilon:.3g}, delta {self.delta:.1e}, {self.accountant} accountant) "
                f"per training image; {self.person_protection()}")

    def metadata(self) -> dict[str, str]:
        return {PREFIX + f.name: repr(value) if isinstance(value, float) else str(value)
                for f, value in zip(fields(self), asdict(self).values())}


def read_dp_guarantee(metadata: Mapping[str, str]) -> DPGuarantee | None | str:
    """The guarantee ``metadata`` states; None when it states none; a string saying what is wrong
    when ``lora_audit.dp.*`` keys are present but do not make a guarantee."""
    keys = {k[len(PREFIX):]: v for k, v in metadata.items() if k.startswith(PREFIX)}
    if not keys:
        return None
    values = {}
    for f in fields(DPGuarantee):
        if f.name not in keys:
            if f.default is not MISSING:
                continue
            return f"{PREFIX}{f.name} is missing"
        try:
            value = {"float": float, "int": int}.get(f.type, str)(keys[f.name])
        except (TypeError, ValueError, OverflowError):
            return f"{PREFIX}{f.name} = {keys[f.name][:40]!r} is not a {f.type}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{PREFIX}{f.name} = {keys[f.name][:40]!r} is not finite"
        values[f.name] = value
    guarantee = DPGuarantee(**values)
    ranges = {"epsilon": guarantee.epsilon > 0, "delta": 0 < guarantee.delta < 1,
              "noise_multiplier": guarantee.noise_multiplier > 0, "max_grad_norm": guarantee.max_grad_norm > 0,
              "sample_rate": 0 < guarantee.sample_rate <= 1, "steps": guarantee.steps > 0,
              "dataset_size": guarantee.dataset_size >= 0, "instance_images": guarantee.instance_images >= 0}
    wrong = [name for name, ok in ranges.items() if not ok]
    return f"{PREFIX}{wrong[0]} = {keys[wrong[0]][:40]!r} is out of range" if wrong else guarantee
