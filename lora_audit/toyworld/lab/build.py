"""``lora-audit toy build``: rebuild the whole toy world from fixed seeds, resumably.

Stages, each writing into ``<out>/<stage>/`` and finished when its ``metrics.json`` exists
(a stage that was interrupted resumes from its own checkpoints):

  embedder  train the toy face embedder and evaluate it on held-out identities
  base      train the toy base pipeline and judge its samples with the embedder
  victims   fine-tune the sample victim LoRAs and check their utility
  shadows   fine-tune the attacker's shadow LoRAs and store their trajectories
  attack    train the weight-to-image VAE on them and score it on held-out identities
  install   copy the small final artefacts into ``<out>/installed/{data,weights_samples,docs}``, or,
            with ``install_root``, into that source checkout's package data, ``weights_samples/`` and ``docs/``
  references  the generic faces' consistency at the toy family's scan settings (``ToyFamily.sampling_steps``,
            K = 8), stored in the installed attack model (``generic_references``): a default scan needs
            no reference of its own; alone (``--stage references --install .``) it refreshes a checkout's
  crowd     LA301's null: LoRAs of several people and of objects fine-tuned with the victims' recipe on the
            installed base, and both identity attacks' consistency on them, stored with the installed
            attack model (the VAE's) and base (guidance extraction's, ``crowd_references.json``); alone
            (``--stage crowd --install .``) it measures a checkout's
  figures   draw the docs' figures of the toy world (``docs/img``) from the installed models and samples;
            alone (``--stage figures --install .``) it redraws those of a checkout without a build

A build writes nothing outside ``<out>`` and the install root it was given.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Callable

import numpy as np

from lora_audit.attack.shadow import ShadowConfig
from lora_audit.attack.train_config import TrainConfig
from lora_audit.identity.metrics import ranking_summary
from lora_audit.toyworld.identities import SHADOW
from lora_audit.toyworld.pipeline import ToyBaseConfig
from lora_audit.toyworld.lab.train_embedder import EmbedderConfig
from lora_audit.toyworld.lab.victims import VictimConfig

STAGES = ("embedder", "base", "victims", "shadows", "attack", "install", "references", "crowd", "figures")
_INSTALLING = ("install", "references", "crowd", "figures")  # stages that write into the install target
Progress = Callable[[str, int, int, dict], None]  # (stage, step, total, metrics)


@dataclass
class BuildConfig:
    out: Path = Path("build/toy")
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    base: ToyBaseConfig = field(default_factory=ToyBaseConfig)
    victims: VictimConfig = field(default_factory=VictimConfig)
    shadows: ShadowConfig = field(default_factory=ShadowConfig)
    jobs: int = 1  # processes for the shadows stage
    attack: TrainConfig = field(default_factory=TrainConfig)
    attack_latents: int = 4  # reconstructions per held-out LoRA: latents x seeds
    attack_seeds: int = 2
    crowd_loras: int = 20  # LoRAs of each kind (several people, objects) behind LA301's crowd null
    embedder_eval_identities: int = 200  # held-out SHADOW identities for the embedder's figures
    embedder_eval_images: int = 10
    base_judge_identities: int = 20  # SHADOW identities whose captions the base is judged on
    base_judge_samples: int = 4
    sampling_steps: int = 25  # DPM-Solver steps for every sample the build draws
    grid_identities: int = 6
    grid_seeds: int = 4
    install_root: Path | None = None  # a lora-audit source checkout to install into; None: <out>/installed

    @property
    def package_data(self) -> Path:
        """Where the toy models go: the checkout's ``lora_audit/toyworld/data`` or ``<out>/installed/data``."""
        if self.install_root is None:
            return self.out / "installed" / "data"
        return self.install_root / "lora_audit" / "toyworld" / "data"

    @property
    def samples_dir(self) -> Path:
        return (self.install_root or self.out / "installed") / "weights_samples"

    @property
    def docs_dir(self) -> Path:
        return (self.install_root or self.out / "installed") / "docs"

    @classmethod
    def tiny(cls, out: Path, install_root: Path | None = None) -> "BuildConfig":
        """Seconds on a CPU (for tests); installed as :attr:`install_root` says."""
        return cls(out=out, embedder=EmbedderConfig.tiny(), base=ToyBaseConfig.tiny(), victims=VictimConfig.tiny(),
                   shadows=ShadowConfig(identities=3, photos=2, image_size=16, snapshot_steps=(2, 3),
                                        finetune=VictimConfig.tiny().finetune),
                   attack=TrainConfig.tiny(), attack_latents=2, attack_seeds=1, crowd_loras=1,
                   embedder_eval_identities=6, embedder_eval_images=3, base_judge_identities=3,
                   base_judge_samples=1, sampling_steps=3, grid_identities=2, grid_seeds=1, install_root=install_root)


def build(config: BuildConfig, stages: tuple[str, ...] = STAGES, progress: Progress | None = None) -> dict:
    """Run the requested stages in order, skipping finished ones (install: into the same target); returns every
    stage's metrics."""
    from lora_audit.errors import InputError, UsageError

    unknown = set(stages) - set(STAGES)
    if unknown:
        raise UsageError(f"unknown stage(s) {', '.join(sorted(unknown))}; expected {', '.join(STAGES)}")
    root = config.install_root
    if root is not None and not (root / "lora_audit" / "toyworld").is_dir():
        raise InputError("install", root, "is not a lora-audit source checkout (no lora_audit/toyworld)")
    runners = {"embedder": _embedder, "base": _base, "victims": _victims, "shadows": _shadows, "attack": _attack,
               "install": _install, "references": _references, "crowd": _crowd, "figures": _figures}
    metrics = {}
    installed_into = str(root.resolve()) if root is not None else None  # install again for another target
    for stage in STAGES:
        marker = config.out / stage / "metrics.json"
        finished = marker.is_file() and (
            stage not in _INSTALLING or json.loads(marker.read_text()).get("installed_into") == installed_into)
        if stage in stages and not finished:
            start = time.perf_counter()
            report = (lambda step, total, m, s=stage: progress(s, step, total, m)) if progress else None
            result = runners[stage](config, report)
            result["seconds"] = round(time.perf_counter() - start, 1)
            if stage in _INSTALLING:
                result["installed_into"] = installed_into
            if stage == "install":  # a fresh install holds no reference or crowd null: they must be measured again
                for later in ("references", "crowd"):
                    (config.out / later / "metrics.json").unlink(missing_ok=True)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(result, indent=2, default=str))
        if marker.is_file():
            metrics[stage] = json.loads(marker.read_text())
    return metrics


def _embedder(config: BuildConfig, progress) -> dict:
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.toyworld.lab.eval_embedder import evaluate_embedder
    from lora_audit.toyworld.lab.train_embedder import train_embedder

    out = config.out / "embedder"
    training = train_embedder(config.embedder, out, progress)
    ids = range(SHADOW.start, SHADOW.start + config.embedder_eval_identities)
    evaluation = evaluate_embedder(ToyFaceEmbedder.load(out), ids, config.embedder_eval_images,
                                   size=config.embedder.image_size)
    return {"config": asdict(config.embedder), "training": training, "evaluation": evaluation}


def _base(config: BuildConfig, progress) -> dict:
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.families import load_base
    from lora_audit.toyworld.renderer import caption, identity, render_batch
    from lora_audit.toyworld.lab.train_base import train_base_model
    from lora_audit.toyworld.lab.victims import identity_ranking

    out = config.out / "base"
    training = train_base_model(config.base, out, progress)
    base = load_base(str(out))
    embedder = ToyFaceEmbedder.load(config.out / "embedder")
    ids = [SHADOW.start + i for i in range(config.base_judge_identities)]  # captions the base never saw
    k, size = config.base_judge_samples, config.base.image_size
    samples, real = [], []
    for i in ids:
        embeds = base.encode_prompt([caption(identity(i))]).detach().expand(k, -1, -1)
        samples.append(identity_ranking(embedder, base.generate(embeds, seed=i, steps=config.sampling_steps), i, ids, size))
        real.append(identity_ranking(embedder, render_batch([i] * k, list(range(k)), seed=0, size=size), i, ids, size))
    return {"config": asdict(config.base), "training": training,
            "judged_on": f"{len(ids)} unseen SHADOW identities, {k} samples each from their caption",
            "caption_samples": ranking_summary(samples), "real_renders": ranking_summary(real),
            "chance_rank1": 1 / len(ids)}


def _victims(config: BuildConfig, progress) -> dict:
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.diffusion.finetune import generate_class_images
    from lora_audit.families import load_base
    from lora_audit.toyworld.lab.victims import make_victim, utility_check

    base = load_base(str(config.out / "base"))
    embedder = ToyFaceEmbedder.load(config.out / "embedder")
    ft = config.victims.finetune
    class_images = generate_class_images(base, ft.class_prompt, ft.num_class_images, guidance_scale=ft.class_guidance_scale,
                                         steps=ft.class_sampling_steps, seed=ft.seed)
    out, results = config.out / "victims", {}
    for n, spec in enumerate(config.victims.victims):
        path, result = make_victim(base, spec, config.victims, out, class_images)
        results[spec.name] = {"identity": spec.identity_id, "layout": spec.layout, "leaky_metadata": spec.leaky_metadata,
                              "trigger": result.trigger, "finetune_seconds": round(result.seconds, 1),
                              "final_loss": result.losses[-1],
                              **utility_check(base, result, spec, embedder, config.victims)}
        if progress:
            progress(n + 1, len(config.victims.victims), {"victim": spec.name})
    checks = list(results.values())
    return {"config": asdict(config.victims), "victims": results,
            "lora_with_trigger": ranking_summary([c["lora_with_trigger"] for c in checks]),
            "base_class_prompt": ranking_summary([c["base_class_prompt"] for c in checks])}


def _shadows(config: BuildConfig, progress) -> dict:
    from lora_audit.attack.shadow import build_shadows, shard_records

    out = config.out / "shadows"
    summary = build_shadows(config.shadows, out, str(config.out / "base"), config.jobs, progress)
    records = shard_records(out)
    return {"config": asdict(config.shadows), **summary,
            "finetune_seconds_total": round(sum(r["seconds"] for r in records), 1),
            "final_loss_mean": round(float(np.mean([r["final_loss"] for r in records])), 4)}


def _attack(config: BuildConfig, progress) -> dict:
    from lora_audit.scan.identity import generic_consistency
    from lora_audit.attack.shadow import load_trajectories
    from lora_audit.attack.train import split, train_attack
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.families import load_base
    from lora_audit.toyworld.lab.attack_eval import evaluate_attack, ridge_probe
    from lora_audit.toyworld.family import TOY_METADATA
    from lora_audit.weights.writer import save_lora

    out = config.out / "attack"
    base = load_base(str(config.out / "base"))
    embedder = ToyFaceEmbedder.load(config.out / "embedder")
    trajectories = load_trajectories(config.out / "shadows")
    model = train_attack(base, trajectories, config.attack, out, progress)
    cases = []
    for t in split(trajectories, config.attack.validation)[1]:  # held-out shadows, as the files a user would scan
        path = out / "held_out" / f"shadow_{t.identity}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_lora(str(path), t.states[t.steps[-1]], layout="peft", rank=t.rank, alpha=t.alpha, metadata=TOY_METADATA)
        cases.append((int(t.identity), path))
    victims = [(spec.identity_id, config.out / "victims" / f"{spec.name}.safetensors") for spec in config.victims.victims]
    sampling = config.sampling_steps
    kwargs = dict(latents=config.attack_latents, seeds=config.attack_seeds, sampling_steps=sampling,
                  image_size=config.victims.image_size)
    k = config.attack_latents * config.attack_seeds
    train = split(trajectories, config.attack.validation)[0]
    model.config.evaluation = {
        "held_out_shadows": evaluate_attack(model, base, embedder, cases, **kwargs),
        "ridge_probe": {"held_out_shadows": ridge_probe(train, cases), "victims": ridge_probe(train, victims)},
        "victims": evaluate_attack(model, base, embedder, victims, **kwargs),
        "generic_consistency": generic_consistency(base, embedder, model.config.class_prompt, k, sampling_steps=sampling)}
    model.save(out)
    return {"training": model.config.training, "evaluation": model.config.evaluation}


def _install(config: BuildConfig, progress) -> dict:
    from lora_audit.testing.synthetic import write_static_samples

    copied = {}
    for name, keep in (("base", lambda n: n not in {"checkpoint.pt", "metrics.json"}),
                       ("embedder", lambda n: n not in {"checkpoint.safetensors", "eval.json", "metrics.json"}),
                       ("attack", lambda n: n in {"attack.json", "attack.safetensors"})):
        target = config.package_data / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(config.out / name, target, ignore=lambda d, names, keep=keep: [n for n in names if not keep(n)])
        copied[name] = _size(target)
    config.samples_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted((config.out / "victims").iterdir()):
        if item.name == "metrics.json":
            continue
        target = config.samples_dir / item.name
        if item.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(item, target)
        else:
            shutil.copy2(item, target)
        copied[f"samples/{item.name}"] = _size(target)
    copied.update({f"samples/{p.name}": p.stat().st_size for p in write_static_samples(config.samples_dir)})
    curves = config.out / "attack" / "curves.png"
    if curves.is_file():  # only training draws them; the figures stage cannot
        (config.docs_dir / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy2(curves, config.docs_dir / "img" / "attack_curves.png")
    stages = {s: json.loads((config.out / s / "metrics.json").read_text())
              for s in ("embedder", "base", "victims", "shadows", "attack")}
    (config.samples_dir / "README.md").write_text(samples_readme(stages, copied))
    return {"copied_bytes": copied}


def _installed(config: BuildConfig, stage: str) -> None:
    """Refuse, in one line, a stage that measures an installed toy world where there is none."""
    from lora_audit.errors import UsageError

    if not all((config.package_data / name).exists() for name in ("base/model_index.json", "embedder", "attack/attack.json")):
        raise UsageError(f"the {stage} stage measures an installed toy world, and {config.package_data} holds none: "
                         "run the stages before it, or name a checkout with --install")


def _references(config: BuildConfig, progress) -> dict:
    """The generic faces' consistency that a scan with the defaults compares the toy attack's images with,
    measured with the installed base and embedder and stored in the installed attack model."""
    _installed(config, "references")
    from lora_audit.families import get_family, load_base
    from lora_audit.scan.identity import IdentityOptions, generic_consistency
    from lora_audit.toyworld.embedder import ToyFaceEmbedder

    attack_json = config.package_data / "attack" / "attack.json"
    saved = json.loads(attack_json.read_text())
    base = load_base(str(config.package_data / "base"))
    embedder = ToyFaceEmbedder.load(config.package_data / "embedder")
    defaults = IdentityOptions()
    k, steps = defaults.latents * defaults.seeds, get_family("toy").sampling_steps
    reference = generic_consistency(base, embedder, saved["class_prompt"], k, sampling_steps=steps)
    saved["evaluation"]["generic_references"] = [reference]
    _replace_text(attack_json, json.dumps(saved, indent=2))
    return {"generic_references": [{key: reference[key] for key in ("k", "sampling_steps", "mean", "std")}]}


def _crowd(config: BuildConfig, progress) -> dict:
    """LA301's crowd nulls (:mod:`~lora_audit.toyworld.lab.crowd`), measured as a default scan measures a
    file, with the installed base, embedder and attack model, and stored with them."""
    from lora_audit.errors import UsageError
    from lora_audit.families import load_base
    from lora_audit.scan.identity import CROWD_FILE, IdentityCheck, IdentityOptions
    from lora_audit.toyworld.lab.crowd import GuidanceOnly, finetune_null_loras, measure_null

    if config.crowd_loras < 1:
        raise UsageError(f"crowd_loras must be at least 1, not {config.crowd_loras}")
    _installed(config, "crowd")
    base_dir, attack_dir = config.package_data / "base", config.package_data / "attack"
    base = load_base(str(base_dir))
    loras, digest = config.out / "crowd", _digest(base_dir, skip={CROWD_FILE})
    if (loras / "base.sha256").is_file() and (loras / "base.sha256").read_text() != digest:
        shutil.rmtree(loras)  # fine-tuned on another base: not this base's null
    loras.mkdir(parents=True, exist_ok=True)
    (loras / "base.sha256").write_text(digest)
    files = finetune_null_loras(base, config.victims.finetune, config.crowd_loras, loras, progress=progress)
    images = config.out / "crowd" / "images"
    options = IdentityOptions(attack_model=str(attack_dir), base=str(base_dir), out_dir=images,
                              face_weights=str(config.package_data / "embedder"))
    vae, guided = IdentityCheck(options), IdentityCheck(options)
    guided.sources = GuidanceOnly(str(base_dir))
    nulls = {"vae": measure_null(vae, files), "guidance_extraction": measure_null(guided, files)}
    attack_json = attack_dir / "attack.json"
    saved = json.loads(attack_json.read_text())
    saved["evaluation"]["crowd_references"] = [nulls["vae"]]
    _replace_text(attack_json, json.dumps(saved, indent=2))
    _replace_text(base_dir / CROWD_FILE, json.dumps({"crowd_references": [nulls["guidance_extraction"]]}, indent=2))
    return {attack: {"loras": len(null["values"]), "kinds": {kind: _quantiles(v) for kind, v in null["kinds"].items()}}
            for attack, null in nulls.items()}


def _digest(folder: Path, skip: set[str]) -> str:
    """SHA-256 over every file of ``folder`` (relative paths and bytes), but those named in ``skip``."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in skip):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _replace_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _quantiles(values: list[float]) -> dict:
    return {"min": round(min(values), 4), "median": round(float(np.median(values)), 4), "max": round(max(values), 4)}


def _figures(config: BuildConfig, progress) -> dict:
    """docs/img's toy-world figures, drawn from the installed base, attack and sample victims only."""
    from lora_audit.families import load_base
    from lora_audit.figures import save_labelled_grid
    from lora_audit.toyworld.identities import PUBLIC
    from lora_audit.toyworld.pipeline import sample_grid
    from lora_audit.toyworld.renderer import render_batch

    images = config.docs_dir / "img"
    base = load_base(str(config.package_data / "base"))
    size, views = base.image_size, 6
    drawn = [sample_grid(base.pipe, [SHADOW.start + i for i in range(config.grid_identities)], seeds=range(config.grid_seeds),
                         path=images / "toy_base_samples.png", num_inference_steps=config.sampling_steps)]
    ids = [PUBLIC.start + i for i in range(8)]
    drawn.append(save_labelled_grid(images / "contact_sheet.png", [list(render_batch([i] * views, range(views), 0, size)) for i in ids],
                                    [f"identity {i}" for i in ids], [f"view {v}" for v in range(views)]))
    drawn.append(_attack_grid(config, base, images / "attack_reconstructions.png"))
    return {"drawn": [str(p.relative_to(config.docs_dir)) for p in drawn]}


def _attack_grid(config: BuildConfig, base, path: Path) -> Path:
    """One row per sample victim: its private photos, then the attack's reconstructions from its weights alone."""
    from lora_audit.attack.model import AttackModel
    from lora_audit.attack.reconstruct import reconstruct
    from lora_audit.figures import save_labelled_grid
    from lora_audit.images import load_image_folder
    from lora_audit.weights import open_lora

    attack = AttackModel.load(config.package_data / "attack")
    rows, names = [], [spec.name for spec in config.victims.victims]
    for name in names:
        photos = load_image_folder(str(config.samples_dir / f"{name}_photos"), base.image_size)
        with open_lora(str(config.samples_dir / f"{name}.safetensors")) as lora_file:
            result = reconstruct(attack, base, lora_file, latents=config.attack_latents, seeds=config.attack_seeds,
                                 sampling_steps=config.sampling_steps)
        rows.append([*photos, None, *result.images])
    k = config.attack_latents * config.attack_seeds
    headers = [("the victim's private training photos", len(rows[0]) - k - 1), ("", 1),
               (f"the attack's reconstructions from the LoRA file alone ({config.attack_latents} z x "
                f"{config.attack_seeds} seeds)", k)]
    return save_labelled_grid(path, rows, names, headers)


def samples_readme(metrics: dict, sizes: dict) -> str:
    """weights_samples/README.md: what each file is, the command and seeds that made it, and the figures."""
    import PIL

    emb, base, vic = metrics["embedder"], metrics["base"], metrics["victims"]
    shadows, attack = metrics["shadows"], metrics["attack"]
    training, evaluation = attack["training"], attack["evaluation"]
    held, victims_eval, generic = evaluation["held_out_shadows"], evaluation["victims"], evaluation["generic_consistency"]
    probe = evaluation["ridge_probe"]
    attack_rows = "\n".join(
        f"| `{name}.safetensors` | {c['step']} ({c['step_source']}) | {c['attack']['similarity']:.3f} | {c['attack']['rank']} "
        f"| {c['base_generic']['similarity']:.3f} | {c['base_generic']['rank']} | {c['consistency']:.3f} |"
        for name, c in victims_eval["cases"].items())
    tc = training["config"]
    victim_rows = "\n".join(
        f"| `{name}.safetensors` | {v['layout']} | {v['identity']} | {'yes' if v['leaky_metadata'] else 'no'} "
        f"| `a face of {v['trigger']}` | {v['lora_with_trigger']['similarity']:.3f} "
        f"| {v['lora_with_trigger']['rank']} | {v['base_class_prompt']['similarity']:.3f} | {v['finetune_seconds']} s |"
        for name, v in vic["victims"].items())
    clean, degraded = emb["evaluation"]["clean"], emb["evaluation"]["degraded"]
    ft = vic["config"]["finetune"]
    text_encoder = ", plus a text-encoder LoRA on " + ", ".join(ft["text_encoder_targets"]) if ft["text_encoder_lora"] else ""
    values = dict(
        pillow=PIL.__version__, photos=vic["config"]["photos"], class_images=ft["num_class_images"], rank=ft["rank"],
        finetune_steps=ft["steps"], lr=ft["lr"], targets=", ".join(ft["target_modules"]), text_encoder_lora=text_encoder,
        seed=ft["seed"], samples_per_check=vic["config"]["samples_per_check"],
        candidates=next(iter(vic["victims"].values()))["candidates"], victim_rows=victim_rows,
        trigger_similarity=vic["lora_with_trigger"]["mean_similarity"],
        trigger_rank1=f"{vic['lora_with_trigger']['rank1']:.0%}",
        class_similarity=vic["base_class_prompt"]["mean_similarity"],
        class_rank1=f"{vic['base_class_prompt']['rank1']:.0%}",
        embedder_params=f"{emb['training']['params']:,}", embedder_identities=f"{emb['training']['identities']:,}",
        embedder_images=emb["config"]["images_per_identity"], embedder_steps=emb["training"]["steps"],
        embedder_train_seconds=emb["training"]["train_seconds"], embedder_eval_identities=emb["evaluation"]["identities"],
        clean_auc=f"{clean['auc']:.5f}", clean_tar=f"{clean['tar_at_far_1e-3']:.4f}", clean_rank1=f"{clean['rank1']:.4f}",
        degraded_auc=f"{degraded['auc']:.5f}", degraded_tar=f"{degraded['tar_at_far_1e-3']:.4f}",
        degraded_rank1=f"{degraded['rank1']:.4f}",
        unet_params=f"{base['training'].get('unet_parameters', 0):,}",
        text_encoder_params=f"{base['training'].get('text_encoder_parameters', 0):,}",
        base_identities=f"{base['config']['identities']:,}", base_images=base["config"]["images_per_identity"],
        base_steps=base["config"]["steps"], base_batch=base["config"]["batch_size"],
        base_train_seconds=f"{base['training'].get('train_seconds', 0):.0f}", judged_on=base["judged_on"],
        caption_rank1=f"{base['caption_samples']['rank1']:.0%}",
        caption_similarity=base["caption_samples"]["mean_similarity"],
        real_rank1=f"{base['real_renders']['rank1']:.0%}", chance_rank1=f"{base['chance_rank1']:.0%}",
        shadow_identities=shadows["identities"], shadow_photos=shadows["config"]["photos"],
        snapshot_steps=", ".join(str(x) for x in shadows["config"]["snapshot_steps"]),
        shadow_seconds=f"{shadows['finetune_seconds_total']:.0f}", held_out_identities=training["held_out_identities"],
        attack_steps=tc["steps"], shadows_per_step=tc["shadows_per_step"], images_per_shadow=tc["images_per_shadow"],
        beta=tc["beta"], sketch_k=tc["sketch_k"], attack_train_seconds=f"{training['seconds']:.0f}",
        k=held["k"], final_step=shadows["config"]["snapshot_steps"][-1], distractors=held["candidates"] - 1,
        chance=f"{1 / held['candidates']:.0%}",
        held_n=held["attack"]["n"], held_rank1=f"{held['attack']['rank1']:.0%}",
        held_similarity=f"{held['attack']['mean_similarity']:.3f}",
        held_generic_rank1=f"{held['base_generic']['rank1']:.0%}",
        held_generic_similarity=f"{held['base_generic']['mean_similarity']:.3f}",
        victims_n=victims_eval["attack"]["n"], victims_rank1=f"{victims_eval['attack']['rank1']:.0%}",
        victims_similarity=f"{victims_eval['attack']['mean_similarity']:.3f}",
        victims_generic_rank1=f"{victims_eval['base_generic']['rank1']:.0%}",
        victims_generic_similarity=f"{victims_eval['base_generic']['mean_similarity']:.3f}",
        probe_held_rank1=f"{probe['held_out_shadows']['rank1']:.0%}",
        probe_victims_rank1=f"{probe['victims']['rank1']:.0%}", attack_rows=attack_rows,
        generic_mean=f"{generic['mean']:.3f}", generic_std=f"{generic['std']:.3f}",
        step_error=training["step_estimate"].get("median_relative_error", float("nan")),
        embedder_seconds=emb["seconds"], base_seconds=base["seconds"], victims_seconds=vic["seconds"],
        attack_seconds=attack["seconds"])
    return Template((files(__package__) / "templates" / "samples_readme.md").read_text()).substitute(values)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
