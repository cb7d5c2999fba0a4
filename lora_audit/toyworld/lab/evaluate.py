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
  guidance_w<w>   training-free, the base and the LoRA only: model-guidance extraction at w under the
                  class prompt (:func:`lora_audit.attack.training_free.guidance_images`), one row per w
  metadata_trigger  training-free: the LoRA prompted with the trigger its metadata gives away, the
                  victim's LoRA written with the ss_* keys kohya writes by default (``ss_tag_frequency``)

Scores use the toy face embedder: the similarity of the K images to each candidate identity's
centre (mean embedding of 10 reference renders), candidates = all victims. Rank-1 = the true
identity scores highest; TAR at a FAR: the share of victims whose true-identity score reaches the
threshold that the given share of (victim, other candidate) scores reaches.

Each victim's scores are kept in ``out/victims/<id>.json`` (its example images in ``<id>.npz``): an
interrupted evaluation resumes where it stopped, and a record made under other settings is made again.
The training-free methods keep records of their own (``<id>.<method>.json`` and ``.npz``), so adding
one, or another w, leaves the others' records valid.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Callable

import numpy as np

METHODS = ("oracle", "latent_ceiling", "lora_class", "base", "vae_final_only", "vae")
METADATA_TRIGGER = "metadata_trigger"  # after the guidance_w<w> rows, the training-free methods
SHORT_LABELS = {"oracle": "oracle (true trigger)", "latent_ceiling": "latent ceiling",
                "lora_class": "LoRA + class prompt", "base": "base model", "vae_final_only": "VAE, final only",
                "vae": "VAE attack", METADATA_TRIGGER: "metadata trigger"}  # the methods' names in figures
LABELS = {"oracle": "oracle: LoRA + true trigger (upper bound)",
          "latent_ceiling": "the oracle's embeddings projected into the VAE's latent space",
          "lora_class": "LoRA + class prompt",
          "base": "base model alone (chance level)", "vae_final_only": "VAE, final weights only, no step embedding",
          "vae": "VAE attack (weights only)",
          METADATA_TRIGGER: "metadata trigger: LoRA + the trigger in kohya's default metadata (ss_tag_frequency of "
                            "a leaky kohya file), no attack model"}  # the methods' names in results.md


@dataclass
class EvaluationConfig:
    latents: int = 4
    seeds: int = 2
    sampling_steps: int = 25
    far: float = 0.05  # n victims x (n - 1) impostor scores resolve a FAR of 1 / (n (n - 1)) at best
    owner_far: float = 0.01  # the scan verdict's target FAR (its default, DEFAULT_OWNER_FAR)
    owner_photos: int = 5  # photos per owner and per impostor identity in the verdict row
    steps_curve: bool = False  # also attack each victim's snapshots: accuracy against the fine-tuning step r
    guidance_weights: tuple[float, ...] | None = None  # w of the guidance rows; None: the scan's (GUIDANCE_WEIGHT)


def evaluate(victims: Path, attack_dir: Path | None, ablation_dir: Path | None, base_path: str | None, out: Path,
             config: EvaluationConfig, progress: Callable[[int, int, dict], None] | None = None,
             device: str | None = None, seed_pairs: list[tuple[Path, Path]] = ()) -> dict:
    """Run every method on every victim; returns per-method summaries and per-victim scores [n, n].

    ``seed_pairs``: more (step-embedding, final-only) attack models, trained at other seeds than
    ``attack_dir`` and ``ablation_dir``: each one's VAE row is computed too, and ``result["seeds"]``
    gives both rows' rank-1 and mean similarity at every seed with their mean and spread."""
    from lora_audit.attack.model import AttackModel
    from lora_audit.attack.reconstruct import reconstruct
    from lora_audit.attack.shadow import load_trajectories
    from lora_audit.diffusion.finetune import INSTANCE_TEMPLATE
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.families import load_base
    from lora_audit.toyworld.assets import asset_path, toy_embedder_path
    from lora_audit.toyworld.family import TOY_METADATA
    from lora_audit.identity.metrics import rank_of, set_scores, wilson_interval
    from lora_audit.toyworld.lab.victims import identity_centres
    from lora_audit.weights import open_lora
    from lora_audit.weights.writer import kohya_training_metadata, save_lora

    from lora_audit.attack.training_free import GUIDANCE_WEIGHT, guidance_images, render_triggers
    from lora_audit.families import get_family
    from lora_audit.identity.scoring import score_leak
    from lora_audit.toyworld.photos import identity_photos
    from lora_audit.weights.triggers import metadata_triggers

    trajectories = load_trajectories(victims)
    base = load_base(base_path, device)
    embedder = ToyFaceEmbedder.load(toy_embedder_path(), device=base.device)
    attack = AttackModel.load(attack_dir or asset_path("attack")).to(base.device)
    ablation = AttackModel.load(ablation_dir).to(base.device) if ablation_dir else None
    ids = [int(t.identity) for t in trajectories]
    centres = identity_centres(embedder, ids, base.image_size)  # [n, D]
    k = config.latents * config.seeds
    gallery = get_family("toy").owner_null(embedder, base.image_size, config.owner_photos)
    # Everything a victim's record depends on (not the TAR's FAR, the curve or the training-free rows, which
    # are applied to the records or kept in their own): a record made under other settings is made again.
    settings = {name: value for name, value in asdict(config).items()
                if name not in ("far", "steps_curve", "guidance_weights")}
    key = {"victims": ids, "config": settings, "attack": str(attack_dir), "ablation": str(ablation_dir), "base": str(base_path)}
    (out / "loras").mkdir(parents=True, exist_ok=True)
    (out / "victims").mkdir(parents=True, exist_ok=True)

    def victim(n: int, t) -> dict:
        """One victim's record: each method's candidate scores [n], the verdicts, the attacks' seconds."""
        final = t.steps[-1]
        path = out / "loras" / f"victim_{t.identity}.safetensors"
        save_lora(str(path), t.states[final], rank=t.rank, alpha=t.alpha, metadata=TOY_METADATA)
        images, seconds = {}, {}
        with base.patched(t.deltas(final)):
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
            seconds[method] = time.perf_counter() - start
        verdicts = {}
        for whose, identity in (("own", ids[n]), ("other", ids[(n + 1) % len(ids)])):  # photos no LoRA saw
            photos = identity_photos(identity, config.owner_photos, base.image_size, first_view=100)
            verdicts[whose] = bool(score_leak(images["vae"], photos, embedder, gallery, far=config.owner_far).leaks)
        np.savez_compressed(out / "victims" / f"{t.identity}.npz", photo=t.images[0].astype(np.float32) / 255,
                            **{m: b[0] for m, b in images.items()})
        return {"key": key, "scores": {m: set_scores(embedder.embed(b), centres).tolist() for m, b in images.items()},
                "verdicts": verdicts, "seconds": seconds}

    def steps_curve(t) -> dict:
        """The VAE's candidate scores [n] of the victim's LoRA saved at each fine-tuning step r."""
        steps = {}
        for step in t.steps:
            snapshot = out / "loras" / f"victim_{t.identity}_step_{step}.safetensors"
            save_lora(str(snapshot), t.states[step], rank=t.rank, alpha=t.alpha, metadata=TOY_METADATA)
            with open_lora(str(snapshot)) as lora_file:
                batch = reconstruct(attack, base, lora_file, latents=config.latents, seeds=config.seeds,
                                    sampling_steps=config.sampling_steps).images
            steps[str(step)] = set_scores(embedder.embed(batch), centres).tolist()
        return {"key": key, "steps": steps}

    def training_free(n: int, t, method: str, stem: Path) -> dict:
        """One training-free method's record of a victim: its candidate scores [n] and seconds; its example
        image in ``<stem>.<method>.npz``."""
        final = t.steps[-1]
        start = time.perf_counter()
        if method == METADATA_TRIGGER:  # the victim's LoRA as a kohya file that keeps kohya's default ss_* keys
            path = out / "loras" / f"victim_{t.identity}_kohya.safetensors"
            metadata = kohya_training_metadata(trigger=t.trigger, class_word="person", num_images=len(t.images),
                                               steps=final, rank=t.rank, alpha=t.alpha, base_model_version="toy",
                                               output_name=f"victim_{t.identity}")
            metadata.pop("modelspec.trigger_phrase")  # kohya writes it only when asked to
            save_lora(str(path), t.states[final], rank=t.rank, alpha=t.alpha, metadata={**TOY_METADATA, **metadata})
            with open_lora(str(path)) as lora_file:
                images = render_triggers(base, lora_file.deltas(), metadata_triggers(lora_file.metadata), k,
                                         embedder, seed=ids[n], steps=config.sampling_steps).images
        else:
            images = guidance_images(base, t.deltas(final), k, guidance[method], prompt=attack.config.class_prompt,
                                     seed=ids[n], steps=config.sampling_steps)
        seconds = time.perf_counter() - start
        np.savez_compressed(stem.with_suffix(f".{method}.npz"), sample=images[0])
        return {"key": {**key, "method": method}, "scores": set_scores(embedder.embed(images), centres).tolist(),
                "seconds": seconds}

    def other_seed(t, model_dir: Path) -> dict:
        """The candidate scores [n] of the victim's reconstructions by another seed's attack model."""
        with open_lora(str(out / "loras" / f"victim_{t.identity}.safetensors")) as lora_file:
            batch = reconstruct(seed_models[model_dir], base, lora_file, latents=config.latents, seeds=config.seeds,
                                sampling_steps=config.sampling_steps).images
        return {"key": {**key, "model": str(model_dir)}, "scores": set_scores(embedder.embed(batch), centres).tolist()}

    def kept(path: Path, make: Callable[[], dict], *needed: Path, expected: dict | None = None) -> dict:
        """The record at ``path`` if it was made under ``expected`` (default ``key``; and ``needed`` files
        exist), else ``make()`` saved."""
        record = json.loads(path.read_text()) if path.is_file() else None
        if record is None or record.get("key") != (expected or key) or not all(p.is_file() for p in needed):
            record = make()
            path.write_text(json.dumps(record))
        return record

    weights = (GUIDANCE_WEIGHT,) if config.guidance_weights is None else config.guidance_weights
    guidance = {f"guidance_w{w:g}": float(w) for w in weights}  # method -> w
    extra = [*guidance, METADATA_TRIGGER]
    seed_models = {d: AttackModel.load(d).to(base.device) for pair in seed_pairs for d in pair}
    records, curves, free, by_model = [], [], {m: [] for m in extra}, {d: [] for d in seed_models}
    for n, t in enumerate(trajectories):
        stem = out / "victims" / str(t.identity)
        records.append(kept(stem.with_suffix(".json"), lambda: victim(n, t), stem.with_suffix(".npz")))
        if config.steps_curve:  # a record of its own: a curve can be added to a finished evaluation
            curves.append(kept(stem.with_suffix(".steps.json"), lambda: steps_curve(t)))
        for method in extra:  # records of their own too: the main records stay valid
            free[method].append(kept(stem.with_suffix(f".{method}.json"), lambda: training_free(n, t, method, stem),
                                     stem.with_suffix(f".{method}.npz"), expected={**key, "method": method}))
        for model_dir in seed_models:  # a record per model: adding a seed keeps the others
            tag = hashlib.sha1(str(model_dir).encode()).hexdigest()[:10]
            by_model[model_dir].append(kept(stem.with_suffix(f".model-{tag}.json"), lambda: other_seed(t, model_dir),
                                            out / "loras" / f"victim_{t.identity}.safetensors",
                                            expected={**key, "model": str(model_dir)}))
        if progress:
            progress(n + 1, len(trajectories), {"victim": t.identity})
    methods = [m for m in METHODS if m != "vae_final_only" or ablation]
    scores = {m: np.array([r["scores"][m] for r in records]) for m in methods}  # [n victims, n candidates]
    scores |= {m: np.array([r["scores"] for r in rs]) for m, rs in free.items()}
    seconds = {m: [r["seconds"][m] for r in records] for m in ("vae", "vae_final_only") if m in methods}
    verdicts = {w: [r["verdicts"][w] for r in records] for w in ("own", "other")}
    by_step = {int(step): [np.array(c["steps"][step]) for c in curves] for step in (curves[0]["steps"] if curves else ())}
    samples = {}
    for t in trajectories:
        with np.load(out / "victims" / f"{t.identity}.npz") as stored:
            samples[t.identity] = {name: stored[name] for name in ("photo", *methods)}
        for method in extra:
            with np.load(out / "victims" / f"{t.identity}.{method}.npz") as stored:
                samples[t.identity][method] = stored["sample"]
    summary = {m: _summary(s, config.far) for m, s in scores.items()}
    for method in ("vae", "vae_final_only"):
        if method in summary:
            model = attack if method == "vae" else ablation
            summary[method]["training_seconds"] = model.config.training.get("seconds")
            summary[method]["seconds_per_lora"] = round(float(np.mean(seconds[method])), 2)
    for method, rs in free.items():
        summary[method]["seconds_per_lora"] = round(float(np.mean([r["seconds"] for r in rs])), 2)
    own, other = (int(sum(verdicts[w])) for w in ("own", "other"))
    verdict = {"owner_far": config.owner_far, "photos": config.owner_photos, "impostors": len(gallery.centres),
               "n": len(ids), "tpr": round(own / len(ids), 3), "tpr_ci": [round(x, 3) for x in wilson_interval(own, len(ids))],
               "fpr": round(other / len(ids), 3), "fpr_ci": [round(x, 3) for x in wilson_interval(other, len(ids))]}
    steps = {}
    for step, rows in sorted(by_step.items()):
        matrix = np.stack(rows)  # [n victims, n candidates]
        hits = int(sum(rank_of(row, v) == 1 for v, row in enumerate(matrix)))
        steps[step] = {"rank1": round(hits / len(rows), 3), "rank1_ci": [round(x, 3) for x in wilson_interval(hits, len(rows))],
                       "mean_similarity": round(float(np.diag(matrix).mean()), 4), "n": len(rows)}
    manifest = victims / "manifest.json"
    made = json.loads(manifest.read_text()).get("config", {}) if manifest.is_file() else {}
    seeds = None
    if seed_pairs:
        pairs = [(attack_dir, ablation_dir), *seed_pairs]
        rows = {"vae": [summary["vae"]], "vae_final_only": [summary["vae_final_only"]]}
        for step_dir, final_dir in seed_pairs:
            for method, model_dir in (("vae", step_dir), ("vae_final_only", final_dir)):
                rows[method].append(_summary(np.array([r["scores"] for r in by_model[model_dir]]), config.far))
        seeds = {"pairs": [[str(a), str(b)] for a, b in pairs],
                 **{method: {stat: _spread([row[stat] for row in rs]) for stat in ("rank1", "mean_similarity")}
                    for method, rs in rows.items()}}
    return {"victims": ids, "victims_made": {"path": str(victims), "first_identity": made.get("first_identity", min(ids))},
            "k": k, "far": config.far, "summary": summary, "verdict": verdict, "steps": steps, "seeds": seeds,
            "scores": {m: s.round(4).tolist() for m, s in scores.items()}, "samples": samples,
            "attack": str(attack_dir or "shipped toy attack"), "ablation": str(ablation_dir) if ablation_dir else None}


def _spread(values: list[float]) -> dict:
    """Values at each training seed with their mean, standard deviation (n - 1) and range."""
    v = np.asarray(values, dtype=np.float64)
    return {"values": [round(float(x), 4) for x in v], "mean": round(float(v.mean()), 4),
            "sd": round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0, "min": round(float(v.min()), 4),
            "max": round(float(v.max()), 4)}


def _summary(scores: np.ndarray, far: float) -> dict:
    """Mean true-identity similarity, rank-1, mean rank and TAR at ``far`` from scores [victims, candidates]
    (:func:`lora_audit.identity.metrics.score_matrix_summary`)."""
    from lora_audit.identity.metrics import score_matrix_summary

    return score_matrix_summary(scores, far)


def run_evaluation(victims: Path, attack_dir: Path | None, ablation_dir: Path | None, base_path: str | None, out: Path,
                   docs: Path, config: EvaluationConfig, command: str,
                   progress: Callable[[int, int, dict], None] | None = None, device: str | None = None,
                   seed_pairs: list[tuple[Path, Path]] = ()) -> dict:
    """:func:`evaluate`, then ``out/results.json`` (without the samples) and :func:`write_results` into ``docs``.

    Returns the result with ``"results_path"``, the written results.md.
    """
    result = evaluate(victims, attack_dir, ablation_dir, base_path, out, config, progress, device, seed_pairs)
    (out / "results.json").write_text(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    return {**result, "results_path": write_results(result, command, docs)}


def write_results(result: dict, command: str, docs: Path) -> Path:
    """docs/results.md with the table, docs/img/results_grid.png and docs/img/results_plot.png."""
    images = docs / "img"
    images.mkdir(parents=True, exist_ok=True)
    _grid(result, images / "results_grid.png")
    _plot(result, images / "results_plot.png")
    if result.get("steps"):
        _steps_plot(result, images / "results_steps.png")
    path = docs / "results.md"
    path.write_text(results_markdown(result, command))
    return path


def results_markdown(result: dict, command: str) -> str:
    """The text of results.md: how it was made, the table of every method, and the VAE's ratios."""
    s, n = result["summary"], len(result["victims"])
    rows = "\n".join(
        f"| {_label(m)} | {v['mean_similarity']:.3f}{_interval(v.get('mean_similarity_ci'), '.3f')} "
        f"| {v['rank1']:.0%}{_interval(v.get('rank1_ci'), '.0%')} | {v['mean_rank']} "
        f"| {v['tar']:.0%}{_interval(v.get('tar_ci'), '.0%')} "
        f"| {v.get('training_seconds') or '-'} | {v.get('seconds_per_lora') or '-'} |"
        for m, v in s.items())
    verdict = result.get("verdict")
    verdict_text = "" if verdict is None else (
        f"The scan's owner verdict (`scan --references`, LA304 when at most {verdict['owner_far']:g} of "
        f"{verdict['impostors']} other identities' photo sets score as high as the owner's), on the VAE's "
        f"reconstructions of each victim, with {verdict['photos']} photos the LoRA never saw (views 100-"
        f"{99 + verdict['photos']}) of the victim, and of another victim: true-positive rate "
        f"{verdict['tpr']:.0%}{_interval(verdict['tpr_ci'], '.0%')}, false-positive rate "
        f"{verdict['fpr']:.0%}{_interval(verdict['fpr_ci'], '.0%')} (n = {verdict['n']}; 95% Wilson intervals).")
    step_rows = "\n".join(f"| {r} | {v['rank1']:.0%}{_interval(v['rank1_ci'], '.0%')} | {v['mean_similarity']:.3f} |"
                           for r, v in result.get("steps", {}).items())
    steps_text = "" if not step_rows else (
        "The VAE on each victim's LoRA saved at fine-tuning step r (r estimated from the weights, as a scan does):\n\n"
        "| step r | rank-1 | mean similarity |\n|---|---|---|\n" + step_rows)
    oracle = s["oracle"]["mean_similarity"]
    ratio = s["vae"]["mean_similarity"] / oracle if oracle > 0 else float("nan")
    reachable = s["latent_ceiling"]["mean_similarity"]
    ceiling = reachable / oracle if oracle > 0 else float("nan")
    of_ceiling = s["vae"]["mean_similarity"] / reachable if reachable > 0 else float("nan")
    made = result.get("victims_made") or {}
    first = made.get("first_identity", min(result["victims"]))
    inputs = [f"lora-audit shadow -o {made.get('path', 'VICTIMS')} -n {n} --first-identity {first} -j 2   # the victims"]
    if "vae_final_only" in s:
        inputs.append(f"lora-audit train-attack SHADOWS -o {result['ablation']} --final-only   # the ablation")
    steps_plot = "\n![the attack's rank-1 against the fine-tuning step r, 95% intervals](img/results_steps.png)" if step_rows else ""
    seeds = result.get("seeds")
    seeds_text = "" if not seeds else _seeds_markdown(seeds)
    template = Template((files(__package__) / "templates" / "results.md").read_text())
    return template.substitute(command=command, inputs="\n".join(inputs), first=first, steps_plot=steps_plot, n=n, k=result["k"], chance=f"{1 / n:.0%}", far=f"{result['far']:g}",
                               impostors=n * (n - 1), rows=rows, ratio=f"{ratio:.2f}", vae_rank1=f"{s['vae']['rank1']:.0%}",
                               ceiling=f"{ceiling:.2f}", of_ceiling=f"{of_ceiling:.2f}", verdict=verdict_text,
                               steps=steps_text, seeds=seeds_text)


def _seeds_markdown(seeds: dict) -> str:
    """The step embedding against the final-only ablation over training seeds: a row per model, mean and spread."""
    def cell(spread: dict, spec: str) -> str:
        values = ", ".join(format(v, spec) for v in spread["values"])
        return (f"{format(spread['mean'], spec)} (sd {format(spread['sd'], spec)}; "
                f"{format(spread['min'], spec)}-{format(spread['max'], spec)}; seeds: {values})")
    rows = "\n".join(f"| {_label(m)} | {cell(seeds[m]['rank1'], '.0%')} | {cell(seeds[m]['mean_similarity'], '.3f')} |"
                     for m in ("vae", "vae_final_only"))
    return (f"The step embedding against the final-only ablation, each trained at {len(seeds['pairs'])} seeds "
            "(`train-attack --seed S`, the same shadows; mean, standard deviation, range and every seed's value):\n\n"
            "| attack | rank-1 | mean similarity |\n|---|---|---|\n" + rows)


def _label(method: str, short: bool = False) -> str:
    """A method's name in results.md (``short``: in the figures); guidance_w<w> rows name their w."""
    if method.startswith("guidance_w"):
        w = method.removeprefix("guidance_w")
        return f"guidance w={w}" if short else (f"guidance extraction (w={w}): eps_base + w(eps_lora - eps_base) "
                                                "under the class prompt, no trigger, no attack model")
    return (SHORT_LABELS if short else LABELS)[method]


def _interval(bounds, spec: str) -> str:
    """" [low, high]" of a 95% interval, "" when there is none."""
    return "" if not bounds else f" [{bounds[0]:{spec}}, {bounds[1]:{spec}}]"


def _grid(result: dict, path: Path, rows: int = 6, scale: int = 3) -> None:
    """One row per victim (its id): a training photo, then one image of each method, headed by its name."""
    from lora_audit.figures import save_labelled_grid

    columns = ["photo", *result["summary"]]
    picked = list(result["samples"].items())[:rows]
    save_labelled_grid(path, [[s[c] for c in columns] for _, s in picked], [f"victim {v}" for v, _ in picked],
                       ["training photo", *(_label(m, short=True) for m in columns[1:])], scale=scale)


def _steps_plot(result: dict, path: Path) -> None:
    """The VAE's rank-1 (Wilson 95% interval) and mean similarity against the fine-tuning step r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(result["steps"], key=int)
    r = [int(x) for x in steps]
    rank1 = np.array([result["steps"][x]["rank1"] for x in steps])
    bounds = np.array([result["steps"][x]["rank1_ci"] for x in steps]).T  # [2, steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.errorbar(r, rank1, yerr=np.abs(bounds - rank1), marker="o", capsize=3)
    left.axhline(1 / len(result["victims"]), color="grey", linestyle="--", label="chance")
    left.set_ylabel("VAE attack rank-1 (95% interval)")
    left.set_ylim(-0.02, 1.02)
    left.legend()
    right.plot(r, [result["steps"][x]["mean_similarity"] for x in steps], marker="o", color="tab:orange")
    right.set_ylabel("mean similarity to the true identity")
    for axis in (left, right):
        axis.set_xlabel("fine-tuning step r of the attacked LoRA")
    fig.suptitle(f"the attack on each victim's LoRA saved at step r ({len(result['victims'])} victims)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(result["summary"])
    summary = result["summary"]
    names = [_label(m, short=True) for m in methods]

    def errors(key: str, value: str) -> np.ndarray:  # [2, M] distances from each bar to its interval's ends
        return np.array([[summary[m][value] - summary[m].get(key, [summary[m][value]] * 2)[0],
                          summary[m].get(key, [summary[m][value]] * 2)[1] - summary[m][value]] for m in methods]).T

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.bar(names, [summary[m]["rank1"] for m in methods], yerr=errors("rank1_ci", "rank1"), capsize=3)
    left.axhline(1 / len(result["victims"]), color="grey", linestyle="--", label="chance")
    left.set_ylabel("rank-1 (95% interval)")
    left.legend()
    right.bar(names, [summary[m]["mean_similarity"] for m in methods], color="tab:orange",
              yerr=errors("mean_similarity_ci", "mean_similarity"), capsize=3)
    right.set_ylabel("mean similarity to the true identity\n(95% interval)")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=35)
        plt.setp(axis.get_xticklabels(), ha="right", rotation_mode="anchor")
    fig.suptitle(f"{len(result['victims'])} held-out victims, {result['k']} images per method and victim", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
