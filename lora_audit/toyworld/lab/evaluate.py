"""``lora-audit evaluate``: the weight-to-image attack against baselines on held-out toy identities.

Victims are trajectories of PRIVATE identities (``lora-audit shadow --first-identity 300000``): no
model was trained on them. For each victim's final LoRA, every method draws K images:

  oracle          the LoRA prompted with its true trigger (the paper's "org", an upper bound)
  latent_ceiling  the z of the VAE's latent space (z = offset + c @ basis) nearest (least squares) to
                  the oracle's prompt embeddings, decoded by the LoRA: how much of the oracle that
                  latent space can express at all (the --attack-model's space, not the ablation's)
  lora_class      the LoRA prompted with the class prompt only
  base            the base model alone with the class prompt (chance level)
  vae_final_only  the VAE trained on final weights only, without the step embedding (ablation)
  vae             the VAE attack: the LoRA file alone

Scores use the toy face embedder: the similarity of the K images to each candidate identity's
centre (mean embedding of 10 reference renders), candidates = all victims. Rank-1 = the true
identity scores highest; TAR at a FAR: the share of victims whose true-identity score reaches the
threshold that the given share of (victim, other candidate) scores reaches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

METHODS = ("oracle", "latent_ceiling", "lora_class", "base", "vae_final_only", "vae")


@dataclass
class EvaluationConfig:
    latents: int = 4
    seeds: int = 2
    sampling_steps: int = 25
    far: float = 0.05  # n victims x (n - 1) impostor scores resolve a FAR of 1 / (n (n - 1)) at best


def evaluate(victims: Path, attack_dir: Path | None, ablation_dir: Path | None, base_path: str | None, out: Path,
             config: EvaluationConfig, progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Run every method on every victim; returns per-method summaries and per-victim scores [n, n]."""
    from lora_audit.attack.model import AttackModel
    from lora_audit.attack.reconstruct import reconstruct
    from lora_audit.attack.shadow import load_trajectories
    from lora_audit.diffusion.finetune import INSTANCE_TEMPLATE
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.diffusion.base import load_base
    from lora_audit.toyworld.assets import asset_path, toy_embedder_path
    from lora_audit.toyworld.lab.victims import TOY_METADATA, identity_centres
    from lora_audit.weights import open_lora
    from lora_audit.weights.writer import save_lora

    trajectories = load_trajectories(victims)
    base = load_base(base_path)
    embedder = ToyFaceEmbedder.load(toy_embedder_path(), device=base.device)
    attack = AttackModel.load(attack_dir or asset_path("attack")).to(base.device)
    ablation = AttackModel.load(ablation_dir).to(base.device) if ablation_dir else None
    ids = [int(t.identity) for t in trajectories]
    centres = identity_centres(embedder, ids, base.image_size)  # [n, D]
    k = config.latents * config.seeds
    scores = {m: np.zeros((len(ids), len(ids))) for m in METHODS if m != "vae_final_only" or ablation}
    samples, seconds = {}, {"vae": [], "vae_final_only": []}
    (out / "loras").mkdir(parents=True, exist_ok=True)
    for n, t in enumerate(trajectories):
        final = t.steps[-1]
        path = out / "loras" / f"victim_{t.identity}.safetensors"
        save_lora(str(path), t.states[final], rank=t.rank, alpha=t.alpha, metadata=TOY_METADATA)
        images = {}
        deltas = t.deltas(final)
        with base.patched(deltas):
            for method, prompt in (("oracle", INSTANCE_TEMPLATE.format(t.trigger)), ("lora_class", attack.config.class_prompt)):
                embeds = base.encode_prompt([prompt]).detach().expand(k, -1, -1)
                images[method] = base.generate(embeds, seed=ids[n], steps=config.sampling_steps)
                if method == "oracle":
                    projected = attack.to_latent(attack.from_latent(embeds[:1])).expand(k, -1, -1)
                    images["latent_ceiling"] = base.generate(projected, seed=ids[n], steps=config.sampling_steps)
        embeds = base.encode_prompt([attack.config.class_prompt]).detach().expand(k, -1, -1)
        images["base"] = base.generate(embeds, seed=ids[n], steps=config.sampling_steps)
        for method, model in (("vae", attack), ("vae_final_only", ablation)):
            if model is None:
                continue
            start = time.perf_counter()
            with open_lora(str(path)) as lora_file:
                images[method] = reconstruct(model, base, lora_file, latents=config.latents, seeds=config.seeds,
                                             sampling_steps=config.sampling_steps).images
            seconds[method].append(time.perf_counter() - start)
        for method, batch in images.items():
            scores[method][n] = (embedder.embed(batch) @ centres.T).mean(axis=0)  # [n candidates]
        samples[t.identity] = {"photo": t.images[0].astype(np.float32) / 255, **{m: b[0] for m, b in images.items()}}
        if progress:
            progress(n + 1, len(trajectories), {"victim": t.identity})
    summary = {m: _summary(s, config.far) for m, s in scores.items()}
    for method in ("vae", "vae_final_only"):
        if method in summary:
            model = attack if method == "vae" else ablation
            summary[method]["training_seconds"] = model.config.training.get("seconds")
            summary[method]["seconds_per_lora"] = round(float(np.mean(seconds[method])), 2)
    return {"victims": ids, "k": k, "far": config.far, "summary": summary,
            "scores": {m: s.round(4).tolist() for m, s in scores.items()}, "samples": samples,
            "attack": str(attack_dir or "shipped toy attack"), "ablation": str(ablation_dir) if ablation_dir else None}


def _summary(scores: np.ndarray, far: float) -> dict:
    """Mean true-identity similarity, rank-1 and TAR at ``far`` from scores [victims, candidates]."""
    genuine = np.diag(scores)  # [n]
    impostors = np.sort(scores[~np.eye(len(scores), dtype=bool)])  # [n (n - 1)]
    allowed = int(far * len(impostors))
    threshold = impostors[-allowed - 1] if allowed < len(impostors) else -np.inf  # at most ``allowed`` above it
    ranks = (scores > genuine[:, None]).sum(axis=1) + 1  # [n]
    return {"mean_similarity": round(float(genuine.mean()), 4), "rank1": round(float((ranks == 1).mean()), 3),
            "mean_rank": round(float(ranks.mean()), 2), "tar": round(float((genuine > threshold).mean()), 3),
            "threshold": round(float(threshold), 4)}


def write_results(result: dict, command: str, docs: Path) -> Path:
    """docs/results.md with the table, docs/img/results_grid.png and docs/img/results_plot.png."""
    images = docs / "img"
    images.mkdir(parents=True, exist_ok=True)
    _grid(result, images / "results_grid.png")
    _plot(result, images / "results_plot.png")
    s, n = result["summary"], len(result["victims"])
    labels = {"oracle": "oracle: LoRA + true trigger (upper bound)",
              "latent_ceiling": "the oracle's embeddings projected into the VAE's latent space",
              "lora_class": "LoRA + class prompt",
              "base": "base model alone (chance level)", "vae_final_only": "VAE, final weights only, no step embedding",
              "vae": "VAE attack (weights only)"}
    rows = "\n".join(
        f"| {labels[m]} | {v['mean_similarity']:.3f} | {v['rank1']:.0%} | {v['mean_rank']} | {v['tar']:.0%} "
        f"| {v.get('training_seconds') or '-'} | {v.get('seconds_per_lora') or '-'} |"
        for m, v in s.items())
    oracle = s["oracle"]["mean_similarity"]
    ratio = s["vae"]["mean_similarity"] / oracle if oracle > 0 else float("nan")
    reachable = s["latent_ceiling"]["mean_similarity"]
    ceiling = reachable / oracle if oracle > 0 else float("nan")
    of_ceiling = s["vae"]["mean_similarity"] / reachable if reachable > 0 else float("nan")
    text = f"""# Results: the attack against baselines on held-out identities

Generated by:

```bash
{command}
```

The inputs are made by (from a finished `lora-audit toy build`):

```bash
lora-audit shadow -o build/eval/private -n 20 --first-identity 300000 -j 2 --base build/toy/base   # the victims
lora-audit train-attack build/toy/shadows -o build/toy/attack_final_only --final-only --base build/toy/base  # the ablation
```

{n} PRIVATE toy identities that no model was trained on, each fine-tuned with the victims' recipe
(`lora-audit shadow --first-identity 300000`); K = {result['k']} images per method and victim, scored by
the toy face embedder against the {n} victims' identities (chance rank-1 {1 / n:.0%}). TAR at FAR
{result['far']:g}: the share of victims whose own-identity score reaches the threshold that a
{result['far']:g} share of the {n * (n - 1)} (victim, other identity) scores reaches.

| method | mean similarity | rank-1 | mean rank | TAR @ FAR {result['far']:g} | training s | seconds per LoRA |
|---|---|---|---|---|---|---|
{rows}

VAE similarity / oracle similarity: {ratio:.2f} (target >= 0.9); VAE rank-1 {s['vae']['rank1']:.0%} (target >= 60%).
The latent ceiling keeps {ceiling:.2f} of the oracle's similarity, so the rest of the gap is the encoder's:
the VAE reaches {of_ceiling:.2f} of what its latent space can express.

![examples](img/results_grid.png)

Rows: victims; columns: a training photo, then one image of each method (in the table's order).

![summary](img/results_plot.png)
"""
    path = docs / "results.md"
    path.write_text(text)
    return path


def _grid(result: dict, path: Path, rows: int = 6, scale: int = 3) -> None:
    from PIL import Image

    columns = ["photo", *[m for m in METHODS if m in result["summary"]]]
    picked = list(result["samples"].values())[:rows]
    grid = np.concatenate([np.concatenate([s[c] for c in columns], axis=1) for s in picked], axis=0)
    image = Image.fromarray((np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8))
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(result["summary"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.bar(methods, [result["summary"][m]["rank1"] for m in methods])
    left.axhline(1 / len(result["victims"]), color="grey", linestyle="--", label="chance")
    left.set_ylabel("rank-1")
    left.legend()
    right.bar(methods, [result["summary"][m]["mean_similarity"] for m in methods], color="tab:orange")
    right.set_ylabel("mean similarity to the true identity")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
