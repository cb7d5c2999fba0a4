"""The defences measured: utility and leak of DP-SGD and LoDA fine-tunes on held-out toy identities.

For each identity and each setting (adapter x epsilon, "none" = no DP) one fine-tune is run on the
identity's 5 photos, and its adapter file is judged three ways:

- **utility** (what the owner keeps): the adapter prompted with its trigger (the oracle; LoDA
  non-linear as trained), its identity similarity and rank-1 among the evaluated identities, and
  the kernel inception distance (KID) of those images to real renders in the toy embedder's
  feature space;
- **leak** (what an attacker gets from the weights alone): the weight-to-image VAE's reconstructions,
  their similarity and rank-1, and the owner verdict (LA304 at the scan's FAR) on them;
- **cost**: seconds per step and the process' peak resident memory (``ru_maxrss``) after each fine-tune.

Every run is one JSON file under ``out/<setting>/``: an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from lora_audit.diffusion.finetune import finetune_lora, generate_class_images
from lora_audit.diffusion.lora_output import save_finetune
from lora_audit.errors import InputError
from lora_audit.families import get_family
from lora_audit.identity import metrics
from lora_audit.toyworld.family import TOY_METADATA
from lora_audit.toyworld.lab.defence_config import DEFENCE_IDENTITIES, DefenceConfig, Setting
from lora_audit.toyworld.photos import REFERENCE_INDICES, identity_photos, reference_views

Progress = Callable[[int, int, dict], None]


class _Lab:
    """What every run shares, loaded once: base, class images, embedder, attack, verdict null, centres."""

    def __init__(self, config: DefenceConfig, identity_ids: list[int], sources, device: str | None):
        from lora_audit.attack.reconstruct import load_attack
        from lora_audit.families import load_base

        self.base = load_base(None, device)
        self.family = get_family("toy")
        self.class_images = generate_class_images(self.base, config.finetune.class_prompt, config.finetune.num_class_images,
                                                  guidance_scale=config.finetune.class_guidance_scale,
                                                  steps=config.finetune.class_sampling_steps, seed=config.finetune.seed)
        self.embedder = self.family.face_embedder(device)
        plan = sources.plan("toy").require()
        self.attack, _ = load_attack(plan, device)
        self.attack_model = str(plan.attack_dir)
        self.null = self.family.owner_null(self.embedder, config.image_size, config.photos)
        refs = self.embedder.embed(reference_views(identity_ids, config.image_size))  # [C * V, D]
        self.centres = metrics.centres(refs, np.repeat(np.arange(len(identity_ids)), len(REFERENCE_INDICES)))  # [C, D]


def run_defences(out: Path, config: DefenceConfig, *, attack_model: str | None = None, device: str | None = None,
                 progress: Progress | None = None, run: bool = True) -> dict:
    """Run (or resume) every (setting, identity) and return the summary table (also ``out/defences.json``).

    ``attack_model``: the attacker (default: the shipped toy attack; an adaptive one is trained on
    shadows fine-tuned with the defence). ``run=False`` only summarises the runs already on disk:
    each setting over the identities done so far (its ``identities`` says how many; settings with
    fewer than two are left out).
    """
    from lora_audit.attack.resolve import AttackSources

    sources = AttackSources(attack_model)  # checked before any work
    identity_ids = list(DEFENCE_IDENTITIES[:config.identities])
    if run:
        _check_manifest(out, config, attack_model)
    todo = [(s, i) for s in config.settings() for i in identity_ids if not _run_path(out, s, i).is_file()] if run else []
    lab = _Lab(config, identity_ids, sources, device) if todo else None
    total, done = len(config.settings()) * len(identity_ids), len(config.settings()) * len(identity_ids) - len(todo)
    for setting, identity in todo:
        record = _run_one(lab, config, setting, identity, identity_ids, out)
        done += 1
        if progress is not None:
            progress(done, total, {"setting": setting.name, "oracle_rank": record["oracle"]["rank"],
                                   "attack_rank": record["attack"]["rank"]})
    runs = {s: [json.loads(_run_path(out, s, i).read_text()) for i in identity_ids if _run_path(out, s, i).is_file()]
            for s in config.settings()}
    embedder = lab.embedder if lab is not None else get_family("toy").face_embedder(device)
    real = embedder.embed(reference_views(identity_ids, config.image_size))  # [C * V, D]: the KID's real renders
    summary = {"config": _config_dict(config, identity_ids),
               "settings": [summarise(s, runs[s], real, len(identity_ids)) for s in config.settings() if len(runs[s]) >= 2]}
    if summary["settings"]:
        (out / "defences.json").write_text(json.dumps(summary, indent=1))
    return summary


def _check_manifest(out: Path, config: DefenceConfig, attack_model: str | None) -> None:
    """Runs under ``out`` are resumed only with the recipe and attacker they were made with."""
    recipe = {k: v for k, v in asdict(config).items() if k not in ("identities", "epsilons", "adapters")}
    wanted = json.loads(json.dumps({"recipe": recipe, "attack_model": attack_model}))
    path = out / "manifest.json"
    if path.is_file():
        if json.loads(path.read_text()) != wanted:
            raise InputError("out", out, "holds runs of another recipe or attack model (manifest.json); use a new directory")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=1))


def _run_path(out: Path, setting: Setting, identity: int) -> Path:
    return out / setting.name / f"{identity}.json"


def _run_one(lab: _Lab, config: DefenceConfig, setting: Setting, identity: int, identity_ids: list[int],
             out: Path) -> dict:
    """Fine-tune one identity with one setting, write its adapter file, and judge it."""
    from lora_audit.attack.reconstruct import reconstruct
    from lora_audit.identity.scoring import score_leak
    from lora_audit.weights import open_lora

    photos = identity_photos(identity, config.photos, config.image_size)
    recipe = config.recipe(setting, seed=identity)
    start = time.perf_counter()
    result = finetune_lora(lab.base, photos, recipe, class_images=lab.class_images)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; the process' peak so far
    folder = out / setting.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{identity}.safetensors"
    save_finetune(result, path, metadata=dict(TOY_METADATA), family="toy", num_images=len(photos))
    oracle = oracle_images(lab.base, result, config.samples, config.sampling_steps)
    with open_lora(str(path)) as lora:
        recon = reconstruct(lab.attack, lab.base, lora, latents=config.latents, seeds=config.seeds,
                            sampling_steps=config.sampling_steps).images
    verdict = score_leak(recon, photos, lab.embedder, lab.null, far=config.owner_far)
    index = identity_ids.index(identity)
    oracle_features = lab.embedder.embed(oracle)
    record = {"identity": identity, "setting": setting.name, "seconds": round(seconds, 2),
              "seconds_per_step": seconds / recipe.steps, "steps": recipe.steps,
              "peak_rss_mb": round(peak_mb, 1),
              "privacy": None if result.privacy is None else asdict(result.privacy),
              "oracle": metrics.ranking(metrics.set_scores(oracle_features, lab.centres), index),
              "attack": metrics.ranking(metrics.set_scores(lab.embedder.embed(recon), lab.centres), index),
              "verdict": {"leaks": bool(verdict.leaks), "far": verdict.far, "similarity": verdict.similarity},
              "oracle_features": np.round(oracle_features, 5).tolist(), "attack_model": lab.attack_model}
    tmp = _run_path(out, setting, identity).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, _run_path(out, setting, identity))
    return record


def oracle_images(base, result, samples: int, sampling_steps: int, seed: int = 0) -> np.ndarray:
    """The adapter prompted with its trigger, [samples, H, W, 3]: LoRA through its exact dW, LoDA
    non-linear as trained (its first-order dW is only what the scan reads)."""
    from lora_audit.diffusion.loda import loda_applied

    config = result.config
    if config.adapter == "loda":
        alpha = config.alpha if config.alpha is not None else config.rank
        applied = loda_applied(base.components(), result.final, rank=config.rank, alpha=alpha, activation=config.loda_activation)
    else:
        applied = base.patched(result.deltas())
    with applied:
        trigger = base.encode_prompt([result.instance_prompt]).detach().expand(samples, -1, -1)
        return base.generate(trigger, seed=seed, steps=sampling_steps)


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """Kernel inception distance: the unbiased MMD^2 of features x [n, D] and y [m, D] under the cubic
    polynomial kernel (x.y / D + 1)^3 (Binkowski et al. 2018), here in the toy embedder's feature space."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def summarise(setting: Setting, runs: list[dict], reference_features: np.ndarray, candidates: int) -> dict:
    """One table row: means with 95% intervals over identities (bootstrap; Wilson for rates)."""
    def rate(hits: int) -> dict:
        return {"rate": hits / len(runs), "interval": metrics.wilson_interval(hits, len(runs))}

    def mean(values: list[float]) -> dict:
        values = np.asarray(values, dtype=np.float64)
        return {"mean": float(values.mean()), "interval": metrics.bootstrap_interval(values)}

    features = np.concatenate([np.asarray(r["oracle_features"]) for r in runs])  # [C * K, D]
    per_identity = len(features) // len(runs)
    rng = np.random.default_rng(0)
    kids = []  # KID over identities resampled with replacement: its interval
    for _ in range(200):
        pick = rng.integers(len(runs), size=len(runs))
        x = np.concatenate([features[i * per_identity:(i + 1) * per_identity] for i in pick])
        kids.append(kid(x, reference_features))
    privacy = [r["privacy"] for r in runs if r["privacy"]]
    return {
        "setting": setting.name, "adapter": setting.adapter, "target_epsilon": setting.epsilon,
        "epsilon_spent": max(p["epsilon"] for p in privacy) if privacy else None,
        "noise_multiplier": privacy[0]["noise_multiplier"] if privacy else None,
        "identities": len(runs), "chance_rank1": 1 / candidates,
        "oracle_similarity": mean([r["oracle"]["similarity"] for r in runs]),
        "oracle_rank1": rate(sum(r["oracle"]["rank"] == 1 for r in runs)),
        "kid": {"mean": kid(features, reference_features), "interval": tuple(float(q) for q in np.percentile(kids, [2.5, 97.5]))},
        "attack_similarity": mean([r["attack"]["similarity"] for r in runs]),
        "attack_rank1": rate(sum(r["attack"]["rank"] == 1 for r in runs)),
        "verdict_tpr": rate(sum(r["verdict"]["leaks"] for r in runs)),
        "seconds_per_step": mean([r["seconds_per_step"] for r in runs]),
        "steps": runs[0]["steps"], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "attack_model": runs[0]["attack_model"],
    }


def _cell(entry: dict, percent: bool = False) -> str:
    value, (low, high) = (entry["rate"], entry["interval"]) if "rate" in entry else (entry["mean"], entry["interval"])
    return f"{value:.0%} [{low:.0%}, {high:.0%}]" if percent else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def defences_markdown(summary: dict) -> str:
    """The measured table: one row per setting, 95% intervals in brackets."""
    rows = ["| adapter | epsilon (spent) | sigma | steps | oracle similarity | oracle rank-1 | KID | attack similarity "
            "| attack rank-1 | verdict TPR | s/step | peak RSS MB |", "|" + "---|" * 12]
    for r in summary["settings"]:
        eps = "no DP" if r["target_epsilon"] is None else f"{r['target_epsilon']:g} ({r['epsilon_spent']:.2f})"
        sigma = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3g}"
        rows.append(f"| {r['adapter']} | {eps} | {sigma} | {r['steps']} | {_cell(r['oracle_similarity'])} | "
                    f"{_cell(r['oracle_rank1'], True)} | {_cell(r['kid'])} | {_cell(r['attack_similarity'])} | "
                    f"{_cell(r['attack_rank1'], True)} | {_cell(r['verdict_tpr'], True)} | "
                    f"{r['seconds_per_step']['mean']:.3f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(rows) + "\n"


ADAPTER_NAMES = {"lora": "LoRA", "loda": "LoDA"}  # in figures


def plot_leak_against_utility(summary: dict, path: Path) -> Path:
    """Utility (oracle rank-1) and leak (attack rank-1) against epsilon, one series per adapter, "no DP" last,
    with 95% error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = summary["settings"]
    epsilons = sorted({r["target_epsilon"] for r in settings}, key=lambda e: float("inf") if e is None else e)
    ticks = ["no DP" if e is None else f"{e:g}" for e in epsilons]
    adapters = sorted({r["adapter"] for r in settings})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for axis, key, title in ((axes[0], "oracle_rank1", "utility: trigger-prompted rank-1 (oracle)"),
                             (axes[1], "attack_rank1", "leak: weight-to-image attack rank-1")):
        for j, adapter in enumerate(adapters):
            rows = sorted((r for r in settings if r["adapter"] == adapter), key=lambda r: epsilons.index(r["target_epsilon"]))
            x = np.array([epsilons.index(r["target_epsilon"]) for r in rows]) + 0.12 * (j - (len(adapters) - 1) / 2)
            y = np.array([r[key]["rate"] for r in rows])
            error = np.abs(np.array([r[key]["interval"] for r in rows]).T - y)
            axis.errorbar(x, y, yerr=error, marker="o", linestyle="none", capsize=3, label=ADAPTER_NAMES.get(adapter, adapter))
        axis.axhline(settings[0]["chance_rank1"], color="grey", linestyle=":", label="chance")
        axis.set_xticks(range(len(epsilons)), ticks)
        axis.set_xlabel("DP-SGD target epsilon per training image")
        axis.set_title(title, fontsize=10)
        axis.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("rank-1 (95% interval)")
    axes[0].legend(fontsize=8, loc="center left")
    counts = sorted({r["identities"] for r in settings})
    fig.suptitle(f"{'-'.join(map(str, (counts[0], counts[-1]) if len(counts) > 1 else counts))} held-out toy "
                 "identities per point", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _config_dict(config: DefenceConfig, identity_ids: list[int]) -> dict:
    return {"identities": [identity_ids[0], identity_ids[-1]], "photos": config.photos,
            "steps": config.steps, "sample_rate": config.dp.sample_rate,
            "max_grad_norm": config.dp.max_grad_norm, "delta": config.dp.delta, "accountant": config.dp.accountant,
            "rank": config.finetune.rank, "samples": config.samples, "latents": config.latents,
            "owner_far": config.owner_far}
