"""The identity check of ``scan`` (LA301-LA307): run the weight-to-image attack on a LoRA and judge it.

The measure is how consistently the K reconstructions show one identity: the mean pairwise cosine
similarity of their face embeddings. It is compared with the same measure on K generic faces of the
base model (the class prompt, K sampler seeds), whose distribution over several groups of seeds is
the reference: a LoRA leaks when its reconstructions are more consistent than
``mean + 3 std`` of the generic groups. This says "the weights decode to one person", not whose
face it is: that needs the owner's photos (``references``), scored against the null
of the LoRA's family (LA304/LA305, with LA306 for photos left out, LA307 when no verdict can be made).

Every finding of this rule group is made here, but for LA307 of an attack that failed on a file, which
the scan engine records with the file's error (:class:`~lora_audit.errors.AttackFailedError`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lora_audit.attack.resolve import AttackPlan, AttackSources
from lora_audit.errors import AttackFailedError, MissingInputError, NotAttackableError
from lora_audit.evidence import items, per_item
from lora_audit.families import get_family
from lora_audit.identity.metrics import consistency
from lora_audit.identity.scoring import (DEFAULT_OWNER_FAR, LeakScore, OperatingPoint, describe_unused,
                                         load_references, reference_crops, score_leak)
from lora_audit.results import Finding
from lora_audit.rules import make_finding
from lora_audit.scan.check import Check, Subject
from lora_audit.weights.dp_metadata import DPGuarantee, read_dp_guarantee

log = logging.getLogger("lora_audit")

GENERIC_GROUPS = 8  # groups of generic faces behind the reference distribution
LEAK_SIGMAS = 3.0


@dataclass
class IdentityOptions:
    attack_model: str | None = None
    base: str | None = None
    face_weights: str | None = None  # a face-embedder checkpoint for families that need one (FaceNet)
    references: str | None = None  # a folder of the owner's photos: adds the LA304/LA305 verdict
    out_dir: Path = Path("lora-audit-reconstructions")
    latents: int = 4
    seeds: int = 2
    sampling_steps: int = 25
    owner_far: float = DEFAULT_OWNER_FAR  # the verdict's target FAR against other people's photo sets
    device: str | None = None  # None: CUDA when available, else the CPU


@dataclass
class LoadedAttack:
    """Everything the attack on one family needs, loaded once per scan."""

    attack: object  # AttackModel
    base: object  # DiffusionBase
    embedder: object  # FaceEmbedder
    generic: dict  # the generic faces' consistency: mean, std, values, k, sampling_steps, embedder
    generic_faces: np.ndarray | None = None  # [G, K, D] their embeddings, made when a verdict needs them


def generic_faces(base, embedder, prompt: str, k: int, groups: int = GENERIC_GROUPS,
                  sampling_steps: int = 25) -> np.ndarray:
    """Embeddings [G, K, D] of ``groups`` groups of K generic faces (``prompt``, K sampler seeds each)."""
    embeds = base.encode_prompt([prompt]).detach().expand(k, -1, -1)
    return np.stack([embedder.embed(base.generate(embeds, seed=10_000 + g, steps=sampling_steps))
                     for g in range(groups)])


def generic_consistency(base, embedder, prompt: str, k: int, groups: int = GENERIC_GROUPS,
                        sampling_steps: int = 25) -> dict:
    """The consistency of K generic faces (``prompt``, K seeds) over ``groups`` groups: mean, std, values,
    and the ``embedder`` (its fingerprint) that measured them."""
    values = [consistency(group) for group in generic_faces(base, embedder, prompt, k, groups, sampling_steps)]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values, "k": k,
            "prompt": prompt, "sampling_steps": sampling_steps, "embedder": embedder.fingerprint()}


class IdentityCheck(Check):
    """Runs the attack on LoRAs of every family it has the inputs for; loads each family's models once.

    Outcomes: LA303 when an input is missing (the attack did not run); :class:`~lora_audit.errors.AttackFailedError` when the
    attack broke on a file (the scan records an error); bad inputs (a corrupt attack model, a base of
    another family) raise and stop the scan with one line; everything else is LA301-LA307.
    """

    rule_ids = ("LA301", "LA302", "LA303", "LA304", "LA305", "LA306", "LA307")

    def __init__(self, options: IdentityOptions):
        self.options = options
        self.sources = AttackSources(options.attack_model, options.base)
        self.references = load_references(options.references) if options.references is not None else None
        self._loaded: dict[str, LoadedAttack | MissingInputError] = {}
        self._owners: dict[str, tuple] = {}

    def run(self, subject: Subject) -> list[Finding]:
        """LA301/LA302 (+ LA304/LA305/LA306/LA307 with references), or LA303 saying why the attack did not run."""
        plan = self.sources.plan(subject.stats.base_model)
        if plan.missing:
            return [_unavailable(plan)]
        loaded = self._load(plan)
        if isinstance(loaded, MissingInputError):
            return [make_finding("LA303", f"the weight-to-image attack could not run: {loaded}",
                                 items("missing", [loaded.input]))]
        try:
            return self._audit(subject, plan, loaded)
        except NotAttackableError as e:
            return [make_finding("LA303", f"the weight-to-image attack does not apply to this file: {e}")]
        except Exception as e:  # a bug, out of memory, a LoRA the base cannot take: this file's audit failed
            log.debug("attack failed on %s", subject.path, exc_info=True)
            raise AttackFailedError(f"the weight-to-image attack failed: {type(e).__name__}: {e}") from None

    def _audit(self, subject: Subject, plan: AttackPlan, loaded: LoadedAttack) -> list[Finding]:
        from lora_audit.attack.reconstruct import reconstruct, save_reconstruction

        o = self.options
        result = reconstruct(loaded.attack, loaded.base, subject.lora, latents=o.latents, seeds=o.seeds,
                             sampling_steps=o.sampling_steps)
        name = f"{Path(subject.path).stem}-{hashlib.sha1(subject.path.encode()).hexdigest()[:6]}"
        grid = save_reconstruction(result, o.out_dir, name)[-1]
        weights = _consistency(consistency(loaded.embedder.embed(result.images)), loaded.generic, result, grid)
        findings = [weights]
        if self.references is not None:
            faces, null, unused = self._owner(plan.family, loaded)
            if faces is None:
                findings.append(make_finding(
                    "LA307", f"no verdict on the owner's face: none of the {len(unused)} photos in "
                    f"{self.references.folder} is usable for a {plan.family} LoRA",
                    per_item("photos", dict(unused))))
            else:
                generic = self._generic_faces(loaded) if isinstance(null, OperatingPoint) else None
                score = score_leak(result.images, faces, loaded.embedder, null, far=o.owner_far, generic=generic)
                findings.append(verdict_finding(score, consistent=weights.rule_id == "LA301",
                                                privacy=read_dp_guarantee(subject.lora.metadata)))
                if unused:
                    findings.append(_unused_photos(unused, len(faces)))
        return findings

    def _generic_faces(self, loaded: LoadedAttack) -> np.ndarray:
        """The generic faces' embeddings [G, K, D] (the measured null beside an operating point), once."""
        if loaded.generic_faces is None:
            o = self.options
            loaded.generic_faces = generic_faces(loaded.base, loaded.embedder, loaded.attack.config.class_prompt,
                                                 o.latents * o.seeds, sampling_steps=o.sampling_steps)
        return loaded.generic_faces

    def _load(self, plan: AttackPlan) -> LoadedAttack | MissingInputError:
        """The family's models, loaded once; a missing input (e.g. face-embedder weights) is kept as such."""
        if plan.family not in self._loaded:
            from lora_audit.attack.reconstruct import load_attack

            o = self.options
            attack, base = load_attack(plan, o.device)
            try:
                embedder = get_family(base.family).face_embedder(base.device, o.face_weights)
            except MissingInputError as e:
                self._loaded[plan.family] = e
                return e
            k = o.latents * o.seeds
            generic = attack.config.evaluation.get("generic_consistency") or {}
            wanted = {"k": k, "sampling_steps": o.sampling_steps, "embedder": embedder.fingerprint()}
            if any(generic.get(key) != value for key, value in wanted.items()):
                generic = generic_consistency(base, embedder, attack.config.class_prompt, k,
                                              sampling_steps=o.sampling_steps)
            self._loaded[plan.family] = LoadedAttack(attack, base, embedder, generic)
        return self._loaded[plan.family]

    def _owner(self, family: str, loaded: LoadedAttack) -> tuple:
        """The owner's faces at the base's resolution (None when none is usable), the family's null for
        the verdict (other people's photo sets of as many photos, or an operating point), and the
        ``(name, reason)`` of each photo left out; once per family."""
        if family not in self._owners:
            size = loaded.base.image_size
            registered = get_family(family)
            faces, unused = reference_crops(self.references, size, detect=registered.detect_faces,
                                            embedder=loaded.embedder)
            null = registered.owner_null(loaded.embedder, size, len(faces)) if faces is not None else None
            self._owners[family] = (faces, null, unused)
        return self._owners[family]


def _unavailable(plan: AttackPlan) -> Finding:
    """LA303 naming the inputs the attack on ``plan.family`` still needs."""
    needed = " and ".join(f"{m.flag} ({m.what})" for m in plan.missing)
    return make_finding("LA303", f"no weight-to-image attack for a {plan.family} LoRA without {needed}",
                        items("missing", [m.flag for m in plan.missing]))


def _consistency(value: float, generic: dict, result, grid: Path) -> Finding:
    """LA301 when the reconstructions are more consistent than generic faces allow, else LA302."""
    threshold = generic["mean"] + LEAK_SIGMAS * generic["std"]
    sigmas = (value - generic["mean"]) / max(generic["std"], 1e-6)
    evidence = {"identity_consistency": float(value),
                "generic_consistency_mean": float(generic["mean"]), "generic_consistency_std": float(generic["std"]),
                "threshold": float(threshold),  # mean + LEAK_SIGMAS std
                "embedder": generic.get("embedder", "not recorded"),  # its fingerprint: class and weights hash
                "step": round(result.step), "step_source": result.step_source,  # the fine-tuning step r
                "latents": result.latents, "seeds": result.seeds, "grid": str(grid)}
    if value > threshold:
        return make_finding("LA301", f"the weights alone decode to one consistent identity: consistency "
                            f"{value:.3f} vs {generic['mean']:.3f} for generic faces ({sigmas:.1f} std above)",
                            evidence)
    return make_finding("LA302", f"reconstructions show no consistent identity: consistency {value:.3f} "
                        f"vs {generic['mean']:.3f} for generic faces ({sigmas:.1f} std)", evidence)


def verdict_finding(score: LeakScore, consistent: bool | None = None,
                    privacy: DPGuarantee | str | None = None) -> Finding:
    """LA304 when the reconstructions match the owner's photos, else LA305, with the score as evidence.

    ``consistent``: whether the same scan found the reconstructions consistent (LA301) or not (LA302);
    the message then says how the two findings fit together. ``privacy``: the DP guarantee the file
    states (:func:`~lora_audit.weights.dp_metadata.read_dp_guarantee`), which the message then weighs.
    """
    rule_id, says = ("LA304", "match") if score.leaks else ("LA305", "do not match")
    if score.far is not None:
        against = (f"rank {score.rank} of {score.impostors + 1} photo sets, impostor FAR {score.far_text()}, "
                   f"{'within' if score.leaks else 'above'} the {score.target_far:g} allowed")
    else:
        against = (f"{'>=' if score.leaks else '<'} the operating point {score.threshold:.3f} "
                   f"({score.source})")
    message = (f"the reconstructions {says} the owner's photos: similarity {score.similarity:.3f} "
               f"(paper score {score.paper_score:.3f}), {against}")
    if consistent is not None:
        message += "; " + _STORIES[score.leaks, consistent]
    if isinstance(privacy, DPGuarantee):
        message += (f"; the file states DP-SGD training, epsilon {privacy.epsilon:.3g} per training image (LA108)"
                    + (": DP did not stop this leak" if score.leaks else
                       f", which bounds each photo's influence, not the person's ({privacy.person_protection()})"))
    return make_finding(rule_id, message, score.to_evidence())


_STORIES = {  # (leaks, consistent) -> how the verdict and LA301/LA302 fit together
    (True, True): "the weights decode to one consistent identity (LA301), and it is the owner's",
    (True, False): "the reconstructions vary (LA302), yet together they resemble the owner",
    (False, True): "the weights decode to one consistent identity (LA301), but not one these photos match",
    (False, False): "the reconstructions show no consistent identity either (LA302)",
}


def _unused_photos(unused: list[tuple[str, str]], used: int) -> Finding:
    """LA306 listing the owner's photos that could not be used, with the reason for each."""
    return make_finding("LA306", f"{len(unused)} of {len(unused) + used} reference photos not used: "
                        + describe_unused(unused), per_item("photos", dict(unused)))
