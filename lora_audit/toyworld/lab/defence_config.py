"""What the defence evaluation runs (:mod:`lora_audit.toyworld.lab.defences`): its identities, settings
and recipe, apart from the evaluation so that the command line reads the defaults without loading it."""

from __future__ import annotations

from dataclasses import dataclass, field

from lora_audit.diffusion.dp import DPConfig
from lora_audit.diffusion.finetune import FinetuneConfig
from lora_audit.toyworld.identities import PRIVATE

DEFENCE_IDENTITIES = range(PRIVATE.start + 2000, PRIVATE.start + 2100)  # held out: no other model uses them


@dataclass(frozen=True)
class Setting:
    adapter: str  # lora | loda
    epsilon: float | None  # None: no DP

    @property
    def name(self) -> str:
        return f"{self.adapter}-" + ("nodp" if self.epsilon is None else f"eps{self.epsilon:g}")


@dataclass
class DefenceConfig:
    identities: int = 20
    epsilons: tuple[float | None, ...] = (None, 16.0, 8.0, 4.0, 1.0)
    adapters: tuple[str, ...] = ("lora", "loda")
    photos: int = 5
    image_size: int = 32
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # the victims' recipe, but for its steps:
    steps: int = 200  # every run, DP or not: one budget (a DP step costs 2-3 plain ones on the CPU)
    dp: DPConfig = field(default_factory=lambda: DPConfig(epsilon=1.0))  # the epsilon is set per setting
    samples: int = 4  # trigger-prompted images per adapter (the oracle)
    latents: int = 4
    seeds: int = 1
    sampling_steps: int = 25
    owner_far: float = 0.01

    def settings(self) -> list[Setting]:
        return [Setting(a, e) for e in self.epsilons for a in self.adapters]

    def recipe(self, setting: Setting, seed: int) -> FinetuneConfig:
        recipe = {**self.finetune.__dict__, "adapter": setting.adapter, "seed": seed, "steps": self.steps}
        if setting.epsilon is not None:  # an experiment: its noise is seeded, so that a run repeats
            recipe.update(dp=DPConfig(**{**self.dp.__dict__, "epsilon": setting.epsilon, "noise_seed": seed}))
        return FinetuneConfig(**recipe)
