"""Which attack model and base pipeline serve a LoRA of a given family, decided in one place.

An attack model serves only the family it was trained for (its ``attack.json`` says which); a
family whose attack model ships with lora-audit (the toy world) needs nothing given. For any
other family the weight-to-image VAE needs both the base pipeline and an attack model; the
training-free attacks (:mod:`lora_audit.attack.training_free`) need the family's base alone.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from lora_audit.errors import InputError, InvalidFileError, MissingInputError
from lora_audit.families import family_of_base, get_family

CONFIG_FILE = "attack.json"


@dataclass(frozen=True)
class MissingInput:
    """An input the attack still needs: its name, the flag a user gives it with, and what it is."""

    input: str  # "base" | "attack_model"
    flag: str
    what: str


@dataclass
class AttackPlan:
    """What attacks a LoRA of ``family``: the attack model and base to load, or what is missing."""

    family: str
    attack_dir: Path | None = None
    base: str | None = None
    missing: list[MissingInput] = field(default_factory=list)
    given_attack_family: str | None = None  # the family of a given attack model that does not serve this one
    given_attack_model: str | None = None  # that attack model's directory

    @property
    def training_free(self) -> bool:
        """Whether only the training-free attacks can run: the family's base, but no attack model."""
        return self.attack_dir is None and self.base is not None

    def require(self) -> "AttackPlan":
        """This plan, or an :class:`InputError` saying what is missing or mismatched."""
        if self.given_attack_family is not None:
            raise InputError("attack_model", self.given_attack_model,
                             f"attacks {self.given_attack_family} LoRAs, not {self.family} ones")
        if self.missing:
            first, *more = self.missing
            fix = (more[0].input, f"too ({more[0].what})") if more else None
            raise MissingInputError(first.input, None, f"needed to attack a {self.family} LoRA ({first.what})", fix=fix)
        return self


class AttackSources:
    """The attack model and base the user gave, checked and read once, then resolved per family."""

    def __init__(self, attack_model: str | None = None, base: str | None = None):
        if attack_model is not None and not (Path(attack_model) / CONFIG_FILE).is_file():
            raise InputError("attack_model", attack_model, f"is not an attack model directory (no {CONFIG_FILE})")
        if base is not None and not (Path(base) / "model_index.json").is_file():
            raise InputError("base", base, "is not a diffusers pipeline directory (no model_index.json)")
        self.attack_model = attack_model
        self.base = base
        self.attack_family = _trained_for(Path(attack_model)) if attack_model is not None else None

    def plan(self, family: str) -> AttackPlan:
        """The attack for a LoRA of ``family``: the given attack model if it serves the family, else
        the family's shipped one, else the inputs still missing. A given attack model of another
        family is recorded in ``given_attack_family`` (``scan`` falls back, ``reconstruct`` refuses)."""
        registered = get_family(family)
        if self.attack_model is not None and self.attack_family == family:
            base = self.base or (registered.default_base() if registered else None)
            if base is not None:
                return AttackPlan(family, Path(self.attack_model), base)
            return AttackPlan(family, missing=[_missing_base(family)])
        mismatch = {"given_attack_family": self.attack_family, "given_attack_model": self.attack_model}
        if registered is not None and (shipped := registered.shipped_attack_model()) is not None:
            return AttackPlan(family, shipped, registered.default_base(), **mismatch)
        base_family = self.base_family if self.base is not None and registered is not None else None
        base = self.base if base_family == family else None
        missing = [] if base is not None else [_missing_base(family, self.base, base_family)]
        note = f" (--attack-model {self.attack_model} is for {self.attack_family})" if self.attack_model else ""
        missing.append(MissingInput("attack_model", "--attack-model",
                                    f"an attack model trained with `lora-audit train-attack` for {family}{note}"))
        return AttackPlan(family, base=base, missing=missing, **mismatch)

    @functools.cached_property
    def base_family(self) -> str:
        """The family of the given base (read from its configs, nothing loaded)."""
        return family_of_base(self.base).name


def _missing_base(family: str, given: str | None = None, given_family: str | None = None) -> MissingInput:
    note = f" (--base {given} is a {given_family} pipeline)" if given_family and given_family != family else ""
    return MissingInput("base", "--base", f"a local diffusers pipeline directory for {family}{note}")


def _trained_for(directory: Path) -> str:
    """The family an attack model directory was trained for (its attack.json's ``family``)."""
    path = directory / CONFIG_FILE
    try:
        family = json.loads(path.read_text(encoding="utf-8")).get("family")
    except (OSError, ValueError, AttributeError) as e:
        raise InvalidFileError(str(path), f"not a readable attack configuration ({type(e).__name__})") from None
    if not isinstance(family, str):
        raise InvalidFileError(str(path), "not an attack configuration (no family)")
    return family
