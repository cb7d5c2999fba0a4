"""The evaluation harness: clients of held-out identities x batch sizes x (noise, timestep) known or
not x methods, then defences; one result file per run, so an interrupted evaluation resumes.

Each client holds ``photos_per_client`` photos of one identity and shares one update of a batch of
``batch`` of them. Per run: PSNR and SSIM of each reconstruction against its matched private photo,
the identity rank of each reconstruction among the evaluated identities (cosine of its toy-embedder
embedding to each identity's centre of reference views, views no client trains on), and the cost.
Summaries: means with 95% bootstrap intervals (PSNR, SSIM) and Wilson intervals (rank-1) over images.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from lora_audit.federated.client import ClientConfig, client_update
from lora_audit.federated.defences import Defence
from lora_audit.federated.invert import InversionConfig, run_inversion, server_view
from lora_audit.federated.quality import grid, image_scores, save_png
from lora_audit.identity.metrics import bootstrap_interval, centres, rank_of, unit_rows, wilson_interval
from lora_audit.weights.update_file import update_facts


@dataclass
class GridConfig:
    identities: list[int]
    batches: tuple[int, ...] = (1, 4)
    conditions: tuple[str, ...] = ("known", "unknown")
    methods: tuple[str, ...] = ("gidm", "ig", "dlg")  # gidm is GIDM+ where noise and timestep are unknown
    iterations: int = 200
    generator_steps: int = 2
    photos_per_client: int = 4
    clip_norm: float = 1.0  # defences: the per-example clipping norm C
    noise_multipliers: tuple[float, ...] = ()  # defence curve: sigma values
    keep: tuple[float, ...] = ()  # defence curve: sparsification shares kept
    defence_method: str = "gidm"  # the strongest setting: GIDM with noise and timestep known, batch 1
    defence_batch: int = 1
    layers: tuple[str, ...] = ()  # parameter-name prefixes the server matches (empty: all)
    shard: tuple[int, int] = (0, 1)  # run only runs i with i % n == shard[0]


@dataclass(frozen=True)
class Run:
    batch: int
    condition: str  # known | unknown
    method: str  # gidm | gidm+ | ig | dlg
    identity: int
    defence: Defence = field(default_factory=Defence)

    @property
    def cell(self) -> str:
        d = self.defence
        if d.clip_norm is not None:
            return f"defence/clip{d.clip_norm:g}-noise{d.noise_multiplier:g}"
        if d.keep is not None:
            return f"defence/keep{d.keep:g}"
        return f"b{self.batch}-{self.condition}-{self.method}"


def plan(config: GridConfig) -> list[Run]:
    """Every run, identity by identity (a partial evaluation has the same clients in every cell); the
    defence runs after the whole grid."""
    runs, defended = [], []
    defences = [Defence(config.clip_norm, s) for s in config.noise_multipliers] + [Defence(keep=k) for k in config.keep]
    for identity in config.identities:
        for batch in config.batches:
            for condition in config.conditions:
                for method in config.methods:
                    name = "gidm+" if method == "gidm" and condition == "unknown" else method
                    runs.append(Run(batch, condition, name, identity))
        for defence in defences:
            defended.append(Run(config.defence_batch, "known", config.defence_method, identity, defence))
    runs += defended
    return [r for i, r in enumerate(runs) if i % config.shard[1] == config.shard[0]]


def run_one(base, run: Run, config: GridConfig, photos: np.ndarray, gallery: np.ndarray, embedder, out: Path) -> dict:
    """One client update of ``photos`` [N, H, W, 3] inverted by ``run.method``; ``gallery`` [C, D]: the
    identities' reference centres, row ``config.identities.index(run.identity)`` the client's own."""
    client = ClientConfig(batch_size=run.batch, seed=run.identity, defence=run.defence)
    start = time.perf_counter()
    update = client_update(base, photos, client)
    facts = update_facts("client", update.metadata, {k: tuple(v.shape) for k, v in update.tensors.items()})
    private = photos[update.secrets["index"].numpy()]  # [B, H, W, 3]
    known = {"eps": update.secrets["eps"][0], "t": update.secrets["t"][0]} if run.condition == "known" else None
    inversion = InversionConfig(method=run.method, iterations=config.iterations, generator_steps=config.generator_steps,
                                seed=run.identity, layers=config.layers)
    with server_view(base, update.tensors, update.metadata, facts, layers=config.layers) as view:
        result = run_inversion(view, inversion, known=known, out=out / "checkpoints" / run.cell / str(run.identity))
    images = result.images.numpy()
    scores = image_scores(images, private)
    sims = unit_rows(embedder.embed(images)) @ unit_rows(gallery).T  # [B, C]
    true = config.identities.index(run.identity)
    record = {"run": {**asdict(run), "cell": run.cell}, "iterations": result.iterations,
              "seconds": round(time.perf_counter() - start, 2), "inversion_seconds": round(result.seconds, 2),
              "psnr": [s["psnr"] for s in scores], "ssim": [s["ssim"] for s in scores],
              "rank": [rank_of(row, true) for row in sims], "similarity": [round(float(row[true]), 4) for row in sims],
              "t_true": [int(x) for x in update.secrets["t"][0]], "t_estimate": result.t_estimate,
              "defence": update.defence_report}
    directory = out / "runs" / run.cell
    directory.mkdir(parents=True, exist_ok=True)
    matched = private[[s["photo"] for s in scores]]
    save_png(grid([matched, images]), directory / f"{run.identity}.png", scale=3)
    np.save(directory / f"{run.identity}.npy", np.stack([matched, images]))
    (directory / f"{run.identity}.json").write_text(json.dumps(record) + "\n")
    return record


def evaluate_grid(base, config: GridConfig, photos: Callable[[int, int], np.ndarray],
                  references: Callable[[int], np.ndarray], embedder, out: Path,
                  progress: Callable[[str, int, int, dict], None] | None = None) -> dict:
    """Run every run of ``plan(config)`` not done yet into ``out``, then :func:`summarise`.

    ``photos(identity, n)``: the client's n photos [n, H, W, 3]; ``references(identity)``: views of
    that identity no client trains on (the identity gallery)."""
    out.mkdir(parents=True, exist_ok=True)
    runs = plan(config)
    ids = config.identities
    embeddings = np.concatenate([embedder.embed(references(i)) for i in ids])
    labels = np.concatenate([[i] * len(references(i)) for i in ids])
    gallery = centres(embeddings, labels, order=ids)  # [C, D]
    for k, run in enumerate(runs):
        path = out / "runs" / run.cell / f"{run.identity}.json"
        if not path.is_file():
            record = run_one(base, run, config, photos(run.identity, config.photos_per_client), gallery, embedder, out)
            if progress:
                progress("runs", k + 1, len(runs), {"cell": run.cell, "psnr": float(np.mean(record["psnr"]))})
        elif progress:
            progress("runs", k + 1, len(runs), {"cell": run.cell})
    return summarise(out)


def summarise(out: Path) -> dict:
    """Per cell of ``out/runs``: runs, images, mean PSNR / SSIM with 95% bootstrap intervals, rank-1 with
    its Wilson interval, mean similarity, cost; written to ``summary.json``."""
    cells = {}
    for directory in sorted((out / "runs").glob("**/")):
        records = [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]
        if not records:
            continue
        psnr = np.concatenate([r["psnr"] for r in records])
        ssim = np.concatenate([r["ssim"] for r in records])
        ranks = np.concatenate([r["rank"] for r in records])
        hits = int((ranks == 1).sum())
        cell = {"clients": len(records), "images": len(psnr),
                "psnr": round(float(psnr.mean()), 2), "psnr_ci": [round(x, 2) for x in bootstrap_interval(psnr)],
                "ssim": round(float(ssim.mean()), 3), "ssim_ci": [round(x, 3) for x in bootstrap_interval(ssim)],
                "rank1": round(hits / len(ranks), 3), "rank1_ci": [round(x, 3) for x in wilson_interval(hits, len(ranks))],
                "similarity": round(float(np.mean([s for r in records for s in r["similarity"]])), 3),
                "iterations": int(np.mean([r["iterations"] for r in records])),
                "seconds_per_client": round(float(np.mean([r["seconds"] for r in records])), 1),
                "seconds_per_iteration": round(float(np.mean([r["inversion_seconds"] / max(1, r["iterations"])
                                                              for r in records])), 3)}
        t_err = [abs(e - t) for r in records if r.get("t_estimate") for e, t in zip(r["t_estimate"], r["t_true"])]
        if t_err:
            cell["t_abs_error"] = round(float(np.mean(t_err)), 1)
        defence = next((r["defence"] for r in records if r.get("defence")), None)
        if defence:
            cell["defence"] = defence
        cells[directory.relative_to(out / "runs").as_posix()] = cell
    summary = {"cells": cells}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


METHOD_NAMES = {"gidm": "GIDM", "gidm+": "GIDM+", "ig": "Inverting Gradients", "dlg": "DLG"}


def cell_label(cell: str) -> str:
    """A readable name of a grid cell: ``b1-unknown-gidm+`` -> ``GIDM+ (noise, t unknown)``."""
    parts = cell.split("-", 2)
    if len(parts) != 3 or parts[2] not in METHOD_NAMES:
        return cell
    return f"{METHOD_NAMES[parts[2]]} (noise, t {parts[1]})"


def figure(out: Path, cells: list[str], identities: list[int], path: Path, image: int = 0) -> Path:
    """A PNG with one row per identity: its private photo, then each cell's reconstruction of it
    (image ``image`` of the batch), from the runs' saved arrays, headed by the method; cells without
    the run are left white."""
    from lora_audit.figures import save_labelled_grid

    rows, labels = [], []
    for identity in identities:
        photo, recons = None, []
        for cell in cells:
            saved = out / "runs" / cell / f"{identity}.npy"
            if saved.is_file():
                pair = np.load(saved)  # [2, B, H, W, 3]: matched private photos, reconstructions
                photo = pair[0][image] if photo is None else photo
                recons.append(pair[1][image])
            else:
                recons.append(None)
        if photo is not None:
            rows.append([photo, *recons])
            labels.append(f"identity {identity}")
    return save_labelled_grid(path, rows, labels, ["private photo", *(cell_label(c) for c in cells)], scale=3)
