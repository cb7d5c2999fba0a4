"""The identity check of ``scan`` (LA301-LA310): run the identity attacks on a LoRA and judge them.

The attack is the weight-to-image VAE where the file's family has an attack model (the toy one
ships), else, with the family's base alone, model-guidance extraction (:mod:`lora_audit.attack.training_free`):
K images either way. The measure is how consistently they show one identity: the mean pairwise cosine
similarity of their face embeddings. It is compared with the same measure on K generic faces of the
base model (the class prompt, K sampler seeds), whose distribution over several groups of seeds is
the reference: above ``mean + 3 std`` of the generic groups the images show a consistent face (for
guidance extraction the generic faces are exactly what it samples from a LoRA that changed nothing),
at or below it LA302. A consistent face is not yet a person: LoRAs fine-tuned on several people or on
objects decode to consistent faces too. So it is compared again with the crowd null, the same measure
on such LoRAs (:mod:`lora_audit.toyworld.lab.crowd`): LA301 "one identity" when at most ``crowd_far``
of them are as consistent, else (or with no crowd null for the attack) LA310. Whose face it is needs the owner's
photos (``references``), scored against the null of the LoRA's family (LA304/LA305, with LA306 for
photos left out, LA307 when no verdict can be made). When the metadata names a trigger, the LoRA is
also prompted with it and judged the same way (LA308/LA309): what the metadata alone hands out.

Every finding of this rule group is made here, but for LA307 of an attack that failed on a file, which
the scan engine records with the file's error (:class:`~lora_audit.errors.AttackFailedError`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lora_audit.attack.resolve import AttackPlan, AttackSources
from lora_audit.errors import AttackFailedError, InputError, MissingInputError, NotAttackableError
from lora_audit.evidence import items, per_item
from lora_audit.families import get_family
from lora_audit.identity.metrics import consistency
from lora_audit.identity.scoring import (DEFAULT_OWNER_FAR, LeakScore, OperatingPoint, describe_unused,
                                         load_references, reference_crops, score_leak)
from lora_audit.weights.triggers import Trigger, metadata_triggers
from lora_audit.results import Finding
from lora_audit.rules import make_finding
from lora_audit.scan.check import Check, Subject
from lora_audit.weights.dp_metadata import DPGuarantee, read_dp_guarantee

log = logging.getLogger("lora_audit")

GENERIC_GROUPS = 8  # groups of generic faces behind the reference distribution
LEAK_SIGMAS = 3.0
DEFAULT_CROWD_FAR = 0.05  # LA301 when at most this share of LoRAs of no one person are as consistent (crowd_far)
CROWD_FILE = "crowd_references.json"  # in a base pipeline folder: guidance extraction's crowd nulls on that base


@dataclass
class IdentityOptions:
    attack_model: str | None = None
    base: str | None = None
    face_weights: str | None = None  # a face-embedder checkpoint for families that need one (FaceNet)
    references: str | None = None  # a folder of the owner's photos: adds the LA304/LA305 verdict
    out_dir: Path = Path("lora-audit-reconstructions")
    latents: int = 4
    seeds: int = 2
    sampling_steps: int | None = None  # None: the family's own (Family.sampling_steps)
    owner_far: float = DEFAULT_OWNER_FAR  # the verdict's target FAR against other people's photo sets
    crowd_far: float = DEFAULT_CROWD_FAR  # LA301's target FAR against LoRAs of several people or of objects
    device: str | None = None  # None: CUDA when available, else the CPU
    required: bool = False  # a LoRA no identity attack can run on is an incomplete audit (LA307), not LA303
    batch: int = 1  # LoRAs of one family whose reconstructions are decoded in one batch (scan --attack-batch)


@dataclass
class LoadedAttack:
    """Everything the attacks on one family need, loaded once per scan."""

    attack: object | None  # AttackModel; None: no attack model for the family (the training-free attacks)
    base: object  # DiffusionBase
    embedder: object  # FaceEmbedder
    generic: dict  # the generic faces' consistency: mean, std, values, k, sampling_steps, embedder
    crowd: dict | None  # the attack's consistency on LoRAs of no one person (measure_null); None: not measured
    class_prompt: str  # the generic faces' prompt, and guidance extraction's
    sampling_steps: int  # of every image the attacks and the generic faces sample
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
    """Runs the attacks on LoRAs of every family it has the inputs for; loads each family's models once.

    Outcomes: LA303 when an input is missing (no attack ran); :class:`~lora_audit.errors.AttackFailedError` when an
    attack broke on a file (the scan records an error); bad inputs (a corrupt attack model, a base of
    another family) raise and stop the scan with one line; everything else is LA301-LA310.
    """

    rule_ids = ("LA301", "LA302", "LA303", "LA304", "LA305", "LA306", "LA307", "LA308", "LA309", "LA310")

    def __init__(self, options: IdentityOptions):
        self.options = options
        self.on_attack: Callable[[str], None] | None = None  # told each path as its attack begins (a progress bar); not pickled
        self.sources = AttackSources(options.attack_model, options.base)
        self.references = load_references(options.references) if options.references is not None else None
        self._loaded: dict[str, LoadedAttack | MissingInputError] = {}
        self._owners: dict[str, tuple] = {}
        self._prepared: dict[str, object] = {}  # path -> its Reconstruction, decoded with others' (prepare)

    @property
    def batch(self) -> int:  # the Check attribute, from the options
        return self.options.batch

    def prepare(self, subjects: list[Subject]) -> None:
        """Decode the VAE reconstructions of ``subjects`` in one batch per family (cross-LoRA batched
        decoding, :func:`~lora_audit.attack.reconstruct.reconstruct_many`: the same images as one file at a
        time); each file's :meth:`run` then takes its own. Files without an attack model are left to :meth:`run`."""
        from lora_audit.attack.decoder import batchable
        from lora_audit.attack.reconstruct import reconstruct_many

        self._prepared = {}  # one batch at a time: nothing of an earlier batch is kept
        families: dict[str, list[Subject]] = {}
        for subject in subjects:
            try:  # any problem is left to run(), which reports it for its own file as before
                plan = self.sources.plan(subject.stats.base_model)
                loaded = self._load(plan) if plan.base is not None and not plan.training_free else None
            except Exception:
                continue
            if isinstance(loaded, LoadedAttack) and loaded.attack is not None and \
                    batchable(loaded.base, [m.name for m in subject.lora.modules]):
                families.setdefault(plan.family, []).append(subject)
        for family, group in families.items():
            loaded, o = self._loaded[family], self.options
            if len(group) < 2:
                continue
            try:
                found = reconstruct_many(loaded.attack, loaded.base, [s.lora for s in group], latents=o.latents,
                                         seeds=o.seeds, sampling_steps=loaded.sampling_steps)
            except Exception:  # e.g. out of memory: each file decodes alone in run() and reports its own failure
                log.debug("batched decoding failed; decoding one file at a time", exc_info=True)
                continue
            self._prepared.update((s.path, result) for s, result in zip(group, found))

    def run(self, subject: Subject) -> list[Finding]:
        """LA301/LA302/LA310 (+ LA304/LA305/LA306/LA307 with references, LA308/LA309 when the metadata names a
        trigger), or LA303 saying why no attack ran (with ``required``, the file's audit failed instead)."""
        findings = self._run(subject)
        if self.options.required and findings and findings[0].rule_id == "LA303":
            raise AttackFailedError(f"no identity audit ({findings[0].message})")
        return findings

    def _run(self, subject: Subject) -> list[Finding]:
        plan = self.sources.plan(subject.stats.base_model)
        if plan.base is None:
            return [_unavailable(plan)]
        if self.on_attack is not None:
            self.on_attack(subject.path)
        loaded = self._load(plan)
        if isinstance(loaded, MissingInputError):
            return [make_finding("LA303", f"the identity attack could not run: {loaded}",
                                 items("missing", [loaded.input]))]
        try:
            return self._audit(subject, plan, loaded)
        except NotAttackableError as e:
            return [make_finding("LA303", f"the weight-to-image attack does not apply to this file: {e}")]
        except Exception as e:  # a bug, out of memory, a LoRA the base cannot take: this file's audit failed
            log.debug("attack failed on %s", subject.path, exc_info=True)
            what = "weight-to-image attack" if loaded.attack is not None else "identity attack"
            raise AttackFailedError(f"the {what} failed: {type(e).__name__}: {e}") from None

    def __getstate__(self) -> dict:  # to a Ray actor: without the progress callback
        return {**self.__dict__, "on_attack": None}

    def _audit(self, subject: Subject, plan: AttackPlan, loaded: LoadedAttack) -> list[Finding]:
        name = f"{Path(subject.path).stem}-{hashlib.sha1(subject.path.encode()).hexdigest()[:6]}"
        triggers = metadata_triggers(subject.lora.metadata)
        deltas = subject.lora.deltas() if loaded.attack is None or triggers else None
        images, about, grid = self._attack(subject, loaded, deltas, name)
        weights = _consistency(consistency(loaded.embedder.embed(images)), loaded.generic, about, grid,
                               loaded.crowd, self.options.crowd_far)
        findings = [weights]
        owner = self._owner(plan.family, loaded) if self.references is not None else None
        if owner is not None:
            faces, null, unused = owner
            if faces is None:
                findings.append(make_finding(
                    "LA307", f"no verdict on the owner's face: none of the {len(unused)} photos in "
                    f"{self.references.folder} is usable for a {plan.family} LoRA",
                    per_item("photos", dict(unused))))
            else:
                findings.append(verdict_finding(self._score(images, owner, loaded), consistency=weights.rule_id,
                                                privacy=read_dp_guarantee(subject.lora.metadata)))
                if unused:
                    findings.append(_unused_photos(unused, len(faces)))
        if triggers:
            findings.append(self._trigger(triggers, deltas, loaded, name, owner))
        return findings

    def _attack(self, subject: Subject, loaded: LoadedAttack, deltas: dict | None,
                name: str) -> tuple[np.ndarray, dict, Path]:
        """The identity attack's K images, its evidence and their grid: the VAE's reconstructions where
        there is an attack model, else guidance extraction's samples."""
        from lora_audit.attack.reconstruct import reconstruct, save_reconstruction
        from lora_audit.attack.training_free import GUIDANCE_WEIGHT, guidance_images

        o = self.options
        if loaded.attack is not None:
            result = self._prepared.pop(subject.path, None) or reconstruct(
                loaded.attack, loaded.base, subject.lora, latents=o.latents, seeds=o.seeds,
                sampling_steps=loaded.sampling_steps)
            about = {"attack": "vae", "step": round(result.step), "step_source": result.step_source,
                     "latents": result.latents, "seeds": result.seeds, "sampling_steps": loaded.sampling_steps}
            return result.images, about, save_reconstruction(result, o.out_dir, name)[-1]
        k = o.latents * o.seeds
        images = guidance_images(loaded.base, deltas, k, prompt=loaded.class_prompt, steps=loaded.sampling_steps)
        about = {"attack": "guidance_extraction", "guidance_weight": GUIDANCE_WEIGHT, "prompt": loaded.class_prompt,
                 "images": k, "sampling_steps": loaded.sampling_steps}
        return images, about, self._grid(images, f"{name}_guided")

    def _trigger(self, triggers: list[Trigger], deltas: dict, loaded: LoadedAttack, name: str,
                 owner: tuple | None) -> Finding:
        """LA308/LA309: the LoRA prompted with the triggers of its metadata, the most consistent set of
        images judged as the attack's are (with ``owner``, against the owner's photos too)."""
        from lora_audit.attack.training_free import render_triggers

        o = self.options
        found = render_triggers(loaded.base, deltas, triggers, o.latents * o.seeds, loaded.embedder,
                                steps=loaded.sampling_steps)
        score = self._score(found.images, owner, loaded) if owner is not None and owner[0] is not None else None
        return _trigger_finding(found, loaded.generic, self._grid(found.images, f"{name}_trigger"), score)

    def _grid(self, images: np.ndarray, name: str) -> Path:
        """``<name>_<i>.png`` per image and ``<name>_grid.png`` (rows of ``seeds``) in the output folder."""
        from lora_audit.attack.reconstruct import save_images

        tiles = [f"{name}_{i}" for i in range(len(images))]
        return save_images(images, self.options.out_dir, name, tiles, columns=self.options.seeds)[-1]

    def _score(self, images: np.ndarray, owner: tuple, loaded: LoadedAttack) -> LeakScore:
        """The owner's leak score of ``images`` against the family's null (``owner``: :meth:`_owner`)."""
        faces, null, _ = owner
        generic = self._generic_faces(loaded) if isinstance(null, OperatingPoint) else None
        return score_leak(images, faces, loaded.embedder, null, far=self.options.owner_far, generic=generic)

    def _generic_faces(self, loaded: LoadedAttack) -> np.ndarray:
        """The generic faces' embeddings [G, K, D] (the measured null beside an operating point), once."""
        if loaded.generic_faces is None:
            o = self.options
            loaded.generic_faces = generic_faces(loaded.base, loaded.embedder, loaded.class_prompt,
                                                 o.latents * o.seeds, sampling_steps=loaded.sampling_steps)
        return loaded.generic_faces

    def _load(self, plan: AttackPlan) -> LoadedAttack | MissingInputError:
        """The family's models, loaded once; a missing input (e.g. face-embedder weights) is kept as such.
        Without an attack model (``plan.training_free``) the base alone."""
        if plan.family not in self._loaded:
            from lora_audit.attack.reconstruct import load_attack
            from lora_audit.attack.training_free import CLASS_PROMPT, GUIDANCE_WEIGHT
            from lora_audit.families import load_base

            o = self.options
            attack, base = (None, load_base(plan.base, o.device)) if plan.training_free else load_attack(plan, o.device)
            try:
                embedder = get_family(base.family).face_embedder(base.device, o.face_weights)
            except MissingInputError as e:
                self._loaded[plan.family] = e
                return e
            k = o.latents * o.seeds
            steps = o.sampling_steps or get_family(base.family).sampling_steps
            class_prompt = attack.config.class_prompt if attack is not None else CLASS_PROMPT
            wanted = {"k": k, "sampling_steps": steps, "embedder": embedder.fingerprint()}
            evaluation = attack.config.evaluation if attack is not None else {}
            stored = [evaluation.get("generic_consistency") or {}, *evaluation.get("generic_references", [])]
            generic = _matching(stored, wanted)
            if generic is None:  # none measured under these settings: measure it now, once per scan
                generic = generic_consistency(base, embedder, class_prompt, k, sampling_steps=steps)
            settings = ({"attack": "vae", "latents": o.latents, "seeds": o.seeds} if attack is not None else
                        {"attack": "guidance_extraction", "images": k, "guidance_weight": GUIDANCE_WEIGHT,
                         "prompt": class_prompt})
            crowd = crowd_null(attack, plan.base, {**settings, "sampling_steps": steps, "embedder": wanted["embedder"]},
                               plan.attack_dir)
            self._loaded[plan.family] = LoadedAttack(attack, base, embedder, generic, crowd, class_prompt, steps)
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
    """LA303 naming the inputs the attacks on ``plan.family`` still need: its base (guidance extraction
    needs nothing more); for a family lora-audit has no base of, everything the VAE would need."""
    registered = get_family(plan.family) is not None
    needed = [m for m in plan.missing if m.input == "base" or not registered]
    also = ": guidance extraction needs only the base, the weight-to-image VAE also --attack-model" if registered else ""
    return make_finding("LA303", f"no identity attack for a {plan.family} LoRA without "
                        + " and ".join(f"{m.flag} ({m.what})" for m in needed) + also,
                        items("missing", [m.flag for m in needed]))


def _matching(stored: list[dict], wanted: dict) -> dict | None:
    """The first stored reference measured under every setting in ``wanted``, or None."""
    return next((g for g in stored if all(g.get(key) == value for key, value in wanted.items())), None)


def crowd_null(attack, base: str | None, wanted: dict, attack_dir: Path | None = None) -> dict | None:
    """The crowd null measured for the attack that runs, under the settings in ``wanted``
    (:mod:`~lora_audit.toyworld.lab.crowd`), or None: the VAE's is stored in its attack model (``attack``'s
    evaluation, ``crowd_references``); guidance extraction's (``attack`` None) in the base pipeline folder it
    runs on (``crowd_references.json``). Stored values that are not finite numbers are an InputError of
    the attack model (``attack_dir``) or base."""
    import json

    if attack is not None:
        where, stored = ("attack_model", attack_dir, "attack.json"), attack.config.evaluation.get("crowd_references", [])
    else:
        path = Path(base) / CROWD_FILE if base is not None else None
        if path is None or not path.is_file():
            return None
        where = ("base", base, CROWD_FILE)
        try:
            stored = json.loads(path.read_text())["crowd_references"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError("base", base, f"has an unreadable {CROWD_FILE} ({type(e).__name__}: {e})") from None
    if not isinstance(stored, list) or not all(_is_crowd_null(r) for r in stored):
        raise InputError(where[0], where[1], f"has crowd_references in {where[2]} that are not lists of finite "
                         "consistency values (rebuild them: lora-audit toy build --stage crowd)")
    return _matching(stored, wanted)


def _is_crowd_null(reference: object) -> bool:
    values = reference.get("values") if isinstance(reference, dict) else None
    return isinstance(values, list) and len(values) > 0 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)


def _consistency(value: float, generic: dict, about: dict, grid: Path, crowd: dict | None = None,
                 crowd_far: float = DEFAULT_CROWD_FAR) -> Finding:
    """How consistent the attack's images are, judged twice. Against generic faces of the base: no more
    consistent is LA302. Against ``crowd``, LoRAs of several people or of objects: when at most
    ``crowd_far`` of them are as consistent, the images are one identity (LA301); otherwise, or with no
    crowd null measured, a consistent face that is not shown to be anyone's (LA310).
    ``about``: the attack's own evidence (``attack``: ``vae`` or ``guidance_extraction``, and its settings)."""
    evidence = {"attack": about["attack"], **_consistency_evidence(value, generic),
                **{k: v for k, v in about.items() if k != "attack"}, "grid": str(grid)}
    compared = _compared(value, generic)
    guided = about["attack"] == "guidance_extraction"
    how = f"guidance extraction (w = {about.get('guidance_weight', 0):g}, the class prompt, no trigger)"
    subject = f"the weights alone, amplified by {how}," if guided else "the weights alone"
    if value <= evidence["threshold"]:
        said = f"{how} shows" if guided else "reconstructions show"
        return make_finding("LA302", f"{said} no consistent identity: {compared}", evidence)
    if crowd is None:
        evidence["crowd_null"] = "not measured"
        return make_finding("LA310", f"{subject} render a consistent face: {compared}; whether it is one person's is "
                            "not measured (no null of LoRAs of several people or of objects for this attack)", evidence)
    values = np.asarray(crowd["values"], dtype=float)
    at_least = int((values >= value).sum())
    far = at_least / len(values)
    evidence |= {"crowd_far": far, "crowd_at_least": at_least, "crowd_far_target": crowd_far,
                 "crowd_loras": len(values), "crowd_null": crowd.get("source", "not recorded")}
    against = (f"{at_least} of {len(values)} LoRAs of several people or of objects are as consistent "
               f"(FAR {far:.3f}, {'within' if far <= crowd_far else 'above'} the {crowd_far:g} allowed)")
    if len(values) * crowd_far < 1:  # too few to resolve the target: none above it says nothing
        return make_finding("LA310", f"{subject} render a consistent face: {compared}; {against}, but a null of "
                            f"{len(values)} LoRAs cannot show a FAR of {crowd_far:g}", evidence)
    if far <= crowd_far:
        return make_finding("LA301", f"{subject} {'render' if guided else 'decode to'} one consistent identity: "
                            f"{compared}; {against}", evidence)
    return make_finding("LA310", f"{subject} render a consistent face, but not one specific to a person: {compared}; "
                        f"{against}", evidence)


def _consistency_evidence(value: float, generic: dict) -> dict:
    return {"identity_consistency": float(value),
            "generic_consistency_mean": float(generic["mean"]), "generic_consistency_std": float(generic["std"]),
            "threshold": float(generic["mean"] + LEAK_SIGMAS * generic["std"]),
            "embedder": generic.get("embedder", "not recorded")}  # its fingerprint: class and weights hash


def _compared(value: float, generic: dict) -> str:
    """"consistency 0.812 vs 0.301 for generic faces (9.3 std above)"."""
    sigmas = (value - generic["mean"]) / max(generic["std"], 1e-6)
    above = " above" if value > generic["mean"] + LEAK_SIGMAS * generic["std"] else ""
    return f"consistency {value:.3f} vs {generic['mean']:.3f} for generic faces ({sigmas:.1f} std{above})"


def _trigger_finding(found, generic: dict, grid: Path, score: LeakScore | None) -> Finding:
    """LA308 when the trigger-prompted images (``found``: :class:`~lora_audit.attack.training_free.TriggerImages`)
    show one identity more consistently than generic faces, or match the owner's photos (``score``);
    else LA309. Evidence names where the triggers are, not what they say (which ``--redact`` would mask)."""
    sources = [t.source for t in found.tried]
    evidence = {"attack": "metadata_trigger", "trigger_source": found.trigger.source, **items("trigger_sources", sources),
                **_consistency_evidence(found.consistency, generic), "grid": str(grid)}
    consistent = found.consistency > evidence["threshold"]
    tried = f" (the most consistent of {len(sources)} tried)" if len(sources) > 1 else ""
    message = (f"prompted with the trigger in {found.trigger.source}{tried}, the LoRA renders "
               + ("one consistent identity: " if consistent else "no consistent identity: ")
               + _compared(found.consistency, generic))
    if score is not None:
        owner = score.to_evidence()
        owner["owner_threshold"] = owner.pop("threshold")
        evidence |= {**owner, "owner_match": score.leaks}
        message += (f"; it {'matches' if score.leaks else 'does not match'} the owner's photos: similarity "
                    f"{score.similarity:.3f}, {_against(score)}")
    return make_finding("LA308" if consistent or (score is not None and score.leaks) else "LA309", message, evidence)


def verdict_finding(score: LeakScore, consistency: str | None = None,
                    privacy: DPGuarantee | str | None = None) -> Finding:
    """LA304 when the reconstructions match the owner's photos, else LA305, with the score as evidence.

    ``consistency``: the rule the same scan gave the reconstructions' consistency (LA301, LA302 or LA310);
    the message then says how the two findings fit together. ``privacy``: the DP guarantee the file
    states (:func:`~lora_audit.weights.dp_metadata.read_dp_guarantee`), which the message then weighs.
    """
    rule_id, says = ("LA304", "match") if score.leaks else ("LA305", "do not match")
    message = (f"the reconstructions {says} the owner's photos: similarity {score.similarity:.3f} "
               f"(paper score {score.paper_score:.3f}), {_against(score)}")
    if consistency is not None:
        message += "; " + _STORIES[score.leaks, consistency]
    if isinstance(privacy, DPGuarantee):
        message += (f"; the file states DP-SGD training, epsilon {privacy.epsilon:.3g} per training image (LA108)"
                    + (": DP did not stop this leak" if score.leaks else
                       f", which bounds each photo's influence, not the person's ({privacy.person_protection()})"))
    return make_finding(rule_id, message, score.to_evidence())


def _against(score: LeakScore) -> str:
    """What the owner's similarity was compared with, and how it came out."""
    if score.far is not None:
        return (f"rank {score.rank} of {score.impostors + 1} photo sets, impostor FAR {score.far_text()}, "
                f"{'within' if score.leaks else 'above'} the {score.target_far:g} allowed")
    return f"{'>=' if score.leaks else '<'} the operating point {score.threshold:.3f} ({score.source})"


_STORIES = {  # (leaks, LA301/LA302/LA310) -> how the verdict and the consistency finding fit together
    (True, "LA301"): "the weights decode to one consistent identity (LA301), and it is the owner's",
    (True, "LA310"): "the weights render a consistent face (LA310), and it is the owner's",
    (True, "LA302"): "the reconstructions vary (LA302), yet together they resemble the owner",
    (False, "LA301"): "the weights decode to one consistent identity (LA301), but not one these photos match",
    (False, "LA310"): "the weights render a consistent face (LA310), but not one these photos match",
    (False, "LA302"): "the reconstructions show no consistent identity either (LA302)",
}


def _unused_photos(unused: list[tuple[str, str]], used: int) -> Finding:
    """LA306 listing the owner's photos that could not be used, with the reason for each."""
    return make_finding("LA306", f"{len(unused)} of {len(unused) + used} reference photos not used: "
                        + describe_unused(unused), per_item("photos", dict(unused)))
