"""``invert-gradients`` as a library call: an update file in, reconstructions and a report out.

DIR gets ``reconstruction_<i>.png`` per image of the batch, ``grid.png`` (the reconstructions; with
references, each matched photo above its reconstruction), ``report.json`` (method, cost, estimated t
and, with references, per-image PSNR, SSIM and identity similarity) and ``checkpoint.pt`` while it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from lora_audit.errors import InputError


def read_secrets(path: str) -> dict:
    """The client's noise and timesteps of its first step, as ``fl-client --save-secrets`` wrote them."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        secrets = load_file(path)
    except (SafetensorError, OSError, FileNotFoundError) as e:
        raise InputError("secrets", path, f"is not a readable secrets file ({type(e).__name__})") from None
    if not {"eps", "t"} <= set(secrets):
        raise InputError("secrets", path, "holds no eps and t (fl-client --save-secrets writes them)")
    return {"eps": secrets["eps"][0], "t": secrets["t"][0]}


def invert_update(update_path: str, out: Path, config, base=None, references: np.ndarray | None = None,
                  embedder=None, known: dict | None = None,
                  progress: Callable[[str, int, int, dict], None] | None = None) -> dict:
    """Invert the update at ``update_path`` into ``out``; returns the report written as report.json."""
    from lora_audit.federated.invert import run_inversion, server_view
    from lora_audit.federated.quality import grid, identity_similarity, image_scores, save_png
    from lora_audit.weights.update_file import read_update

    tensors, metadata, facts = read_update(update_path)
    if known is not None and len(known["t"]) != facts.batch_size:
        raise InputError("secrets", None, f"are of a batch of {len(known['t'])}, the update of {facts.batch_size}")
    out.mkdir(parents=True, exist_ok=True)
    with server_view(base, tensors, metadata, facts, layers=config.layers) as view:
        result = run_inversion(view, config, known=known, out=out, progress=progress)
    images = result.images.numpy()  # [B, H, W, 3]
    for i, image in enumerate(images):
        save_png(image, out / f"reconstruction_{i}.png")
    report = {"update": str(update_path), "method": config.method, "what": facts.what,
              "batch_size": facts.batch_size, "noise_and_timestep": "known" if known is not None and
              config.method != "gidm+" else "estimated", "iterations": result.iterations,
              "seconds": round(result.seconds, 1), "seconds_per_iteration": round(result.seconds / max(1, result.iterations), 4),
              "gradient_distance": result.distance, "t_estimate": result.t_estimate, "images": []}
    rows = [images]
    if references is not None:
        scores = image_scores(images, references)
        sims = identity_similarity(embedder, images, references) if embedder is not None else [None] * len(images)
        report["images"] = [{**s, "identity_similarity": sim} for s, sim in zip(scores, sims)]
        report["mean_psnr"] = round(float(np.mean([s["psnr"] for s in scores])), 3)
        report["mean_ssim"] = round(float(np.mean([s["ssim"] for s in scores])), 4)
        rows = [references[[s["photo"] for s in scores]], images]
    save_png(grid(rows), out / "grid.png", scale=4)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
