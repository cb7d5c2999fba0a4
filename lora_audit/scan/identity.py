"""The identity finding of ``scan``: run the weight-to-image attack on a LoRA file and judge the result.

The measure is how consistently the K reconstructions show one identity: the mean pairwise cosine
similarity of their face embeddings. It is compared with the same measure on K generic faces of the
base model (the class prompt, K sampler seeds), whose distribution over several groups of seeds is
the reference: a LoRA leaks when its reconstructions are more consistent than
``mean + 3 std`` of the generic groups. This says "the weights decode to one person", not whose
face it is: that needs the owner's photos.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lora_audit.errors import LoraAuditError
from lora_audit.results import Finding
from lora_audit.rules import make_finding

log = logging.getLogger("lora_audit")

GENERIC_GROUPS = 8  # groups of generic faces behind the reference distribution
LEAK_SIGMAS = 3.0


@dataclass
class AttackOptions:
    attack_model: str | None = None
    base: str | None = None
    face_weights: str | None = None  # FaceNet checkpoint for real-world families
    references: str | None = None  # a folder of the owner's photos: adds the LA304/LA305 verdict
    out_dir: Path = Path("lora-audit-reconstructions")
    latents: int = 4
    seeds: int = 2
    sampling_steps: int = 25


def attack_inputs(family: str, attack_model: str | None, base: str | None) -> tuple[str | None, str | None, list[str]]:
    """(attack model dir, base dir, missing inputs) for a LoRA of ``family``.

    ``--attack-model``/``--base`` serve the family the attack model was trained for; toy LoRAs
    otherwise get the shipped toy attack and base (None, None). ``missing`` names the flags still needed.
    """
    if attack_model is not None and attack_family(attack_model) == family:
        return attack_model, base, []
    if family == "toy":
        return None, None, []
    other = f" (--attack-model {attack_model} is for {attack_family(attack_model)})" if attack_model else ""
    missing = [f"{flag} ({what} for {family})" for flag, value, what in (
        ("--base", base, "a local diffusers pipeline directory"),
        ("--attack-model", None, "an attack model trained with `lora-audit train-attack`"))
        if value is None]
    return None, None, [m + other if m.startswith("--attack-model") else m for m in missing]


def attack_family(attack_model: str) -> str | None:
    """The base family an attack model directory was trained for (its attack.json), None if unreadable."""
    import json

    try:
        return json.loads((Path(attack_model) / "attack.json").read_text()).get("family")
    except (OSError, ValueError, AttributeError):
        return None


def check_inputs(options: AttackOptions) -> None:
    """Fail early (a usage error) on an --attack-model or --base directory that cannot be what it claims."""
    from lora_audit.errors import UsageError

    if options.attack_model is not None and not (Path(options.attack_model) / "attack.json").is_file():
        raise UsageError(f"--attack-model {options.attack_model} is not an attack model directory (no attack.json)")
    if options.references is not None and not Path(options.references).is_dir():
        raise UsageError(f"--references {options.references} is not a directory of the owner's photos")
    if options.base is not None and not (Path(options.base) / "model_index.json").is_file():
        raise UsageError(f"--base {options.base} is not a diffusers pipeline directory (no model_index.json)")


def consistency(embeddings: np.ndarray) -> float:
    """Mean pairwise cosine similarity of unit embeddings [K, D] (K >= 2), diagonal excluded."""
    k = len(embeddings)
    gram = embeddings @ embeddings.T  # [K, K]
    return float((gram.sum() - np.trace(gram)) / (k * (k - 1)))


def generic_consistency(base, embedder, prompt: str, k: int, groups: int = GENERIC_GROUPS,
                        sampling_steps: int = 25) -> dict:
    """The consistency of K generic faces (``prompt``, K seeds) over ``groups`` groups: mean, std, values."""
    embeds = base.encode_prompt([prompt]).detach().expand(k, -1, -1)
    values = [consistency(embedder.embed(base.generate(embeds, seed=10_000 + g, steps=sampling_steps)))
              for g in range(groups)]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values, "k": k,
            "prompt": prompt, "sampling_steps": sampling_steps}


class IdentityAuditor:
    """Runs the attack on LoRA files of any family it has the inputs for; loads each model once."""

    def __init__(self, options: AttackOptions):
        self.options = options
        self._models: dict[str, tuple] = {}

    def findings(self, path: str, family: str) -> list[Finding]:
        """LA301/LA302 with the measure and the grid path, or LA303 saying why the attack did not run."""
        attack_model, base, missing = attack_inputs(family, self.options.attack_model, self.options.base)
        if missing:
            return [make_finding("LA303", f"no weight-to-image attack for a {family} LoRA without "
                                 + " and ".join(missing), {"missing": ", ".join(m.split(" ")[0] for m in missing)})]
        try:
            return self._audit(path, family, attack_model, base)
        except LoraAuditError as e:
            return [make_finding("LA303", f"the weight-to-image attack could not run: {e}")]
        except Exception as e:  # a bug or out of memory must not cost the batch its report
            log.debug("attack failed on %s", path, exc_info=True)
            return [make_finding("LA303", f"the weight-to-image attack failed: {type(e).__name__}: {e}")]

    def _audit(self, path: str, family: str, attack_model: str | None, base_path: str | None) -> list[Finding]:
        from lora_audit.attack.reconstruct import reconstruct, save_reconstruction
        from lora_audit.weights import open_lora

        o = self.options
        attack, base, embedder, generic = self._load(family, attack_model, base_path)
        with open_lora(path) as lora_file:
            result = reconstruct(attack, base, lora_file, latents=o.latents, seeds=o.seeds,
                                 sampling_steps=o.sampling_steps)
        name = f"{Path(path).stem}-{hashlib.sha1(path.encode()).hexdigest()[:6]}"
        grid = save_reconstruction(result, o.out_dir, name)[-1]
        value = consistency(embedder.embed(result.images))
        threshold = generic["mean"] + LEAK_SIGMAS * generic["std"]
        sigmas = (value - generic["mean"]) / max(generic["std"], 1e-6)
        evidence = {"identity consistency": f"{value:.3f}",
                    "generic faces": f"{generic['mean']:.3f} +/- {generic['std']:.3f} (threshold {threshold:.3f})",
                    "fine-tuning step r": f"{result.step:.0f} ({result.step_source})",
                    "reconstructions": f"{result.latents} z samples x {result.seeds} seeds",
                    "grid": str(grid)}
        findings = []
        if o.references is not None:
            from lora_audit.identity.scoring import describe_unused, leak_finding, score_leak

            references, impostors, unused = self._references(family, base, embedder)
            findings.append(leak_finding(score_leak(result.images, references, embedder, impostors)))
            if unused:
                findings.append(make_finding(
                    "LA306", f"{len(unused)} of {len(unused) + len(references)} reference photos not used: "
                    + describe_unused(unused), dict(unused)))
        if value > threshold:
            return [make_finding("LA301", f"the weights alone decode to one consistent identity: consistency "
                                 f"{value:.3f} vs {generic['mean']:.3f} for generic faces ({sigmas:.1f} std above)",
                                 evidence), *findings]
        return [make_finding("LA302", f"reconstructions show no consistent identity: consistency {value:.3f} "
                             f"vs {generic['mean']:.3f} for generic faces ({sigmas:.1f} std)", evidence), *findings]

    def _references(self, family: str, base, embedder) -> tuple:
        """The owner's photos at the base's resolution, the impostor reference of ``family``'s embedder,
        and the ``(name, reason)`` of each photo left out."""
        key = ("references", family)
        if key not in self._models:
            from lora_audit.identity.scoring import reference_photos

            photos, unused = reference_photos(self.options.references, base.image_size)
            self._models[key] = (photos, _impostors(embedder, base.image_size), unused)
        return self._models[key]

    def _load(self, family: str, attack_model: str | None, base_path: str | None) -> tuple:
        if family not in self._models:
            from lora_audit.attack.reconstruct import load_attack

            o = self.options
            attack, base = load_attack(family, attack_model, base_path)
            embedder = _embedder(family, o.face_weights, base.device)
            k = o.latents * o.seeds
            generic = attack.config.evaluation.get("generic_consistency")
            if not generic or generic.get("k") != k or generic.get("sampling_steps") != o.sampling_steps:
                generic = generic_consistency(base, embedder, attack.config.class_prompt, k,
                                              sampling_steps=o.sampling_steps)
            self._models[family] = (attack, base, embedder, generic)
        return self._models[family]


def _impostors(embedder, size: int):
    """The verdict's reference for ``embedder``: FaceNet's published threshold, or the toy world's
    similarities between different people (distractor identities rendered at ``size``)."""
    from lora_audit.identity.facenet import FaceNetEmbedder
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.identity.scoring import ImpostorReference, impostor_reference_from_embeddings

    if isinstance(embedder, FaceNetEmbedder):
        threshold, source = embedder.verification_threshold()
        return ImpostorReference(source=source, threshold=threshold)
    if not isinstance(embedder, ToyFaceEmbedder):
        raise TypeError(f"no impostor reference for a {type(embedder).__name__}")
    from lora_audit.toyworld.lab.attack_eval import DISTRACTORS
    from lora_audit.toyworld.lab.victims import REFERENCE_INDICES, reference_views

    views = len(REFERENCE_INDICES)
    labels = np.repeat(np.arange(len(DISTRACTORS)), views)
    return impostor_reference_from_embeddings(
        embedder.embed(reference_views(DISTRACTORS, size)), labels,
        f"toy world: {len(DISTRACTORS)} identities x {views} views")


def _embedder(family: str, face_weights: str | None, device):
    if family == "toy":
        from lora_audit.toyworld.embedder import ToyFaceEmbedder
        from lora_audit.toyworld.assets import toy_embedder_path

        return ToyFaceEmbedder.load(toy_embedder_path(), device=device)
    from lora_audit.identity.facenet import FaceNetEmbedder

    return FaceNetEmbedder.load(face_weights, device=device)
