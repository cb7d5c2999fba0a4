"""Shadow trajectories: the attack's training data.

The attacker fine-tunes LoRAs with the victims' recipe on identities of their own and keeps, for
each, the LoRA at several fine-tuning steps r (a trajectory) with the identity's training images.
One trajectory gives several (dW at r, r, images) training pairs for the step-conditioned encoder.

On disk: one safetensors shard per identity, ``shadow-00017.safetensors``, written atomically, so an
interrupted run resumes at the first missing shard. A shard holds ``images`` (uint8 [N, H, W, 3]) and
``step<r>.<key>`` (the PEFT-layout LoRA factors at step r), with the identity, trigger, rank and alpha
in its metadata. ``manifest.json`` records the recipe, so a resumed run cannot mix two recipes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from lora_audit.diffusion.finetune import FinetuneConfig
from lora_audit.errors import InputError, MissingInputError, UsageError
from lora_audit.families import DEFAULT_FAMILY, Family, family_of_base, get_family

SHARD = "shadow-{:05d}.safetensors"
MANIFEST = "manifest.json"
Progress = Callable[[int, int, dict], None]  # (done, total, metrics)


@dataclass
class ShadowConfig:
    """Which identities, how many photos each, and the fine-tuning recipe (the victims' by default)."""

    identities: int = 80
    first_identity: int | None = None  # built-in identities: None = the base family's first shadow identity
    photos: int = 5
    image_size: int = 32
    snapshot_steps: tuple[int, ...] = (50, 100, 200, 300, 400, 500)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    images_dir: str | None = None  # real-world shadows: one sub-folder of photos per identity

    def __post_init__(self):
        late = [s for s in self.snapshot_steps if not 0 < s <= self.finetune.steps]
        if late:
            raise UsageError(f"snapshot steps {late} are outside 1..{self.finetune.steps} (the fine-tuning steps)")


@dataclass
class Trajectory:
    """One shadow identity: its training images and its LoRA factors at each snapshot step."""

    identity: str
    images: np.ndarray  # uint8 [N, H, W, 3]
    states: dict[int, dict[str, np.ndarray]]  # step -> PEFT-layout factors (``unet.<module>.lora_A.weight``)
    rank: int
    alpha: float
    trigger: str

    @property
    def steps(self) -> list[int]:
        return sorted(self.states)

    def factors(self, step: int) -> Iterator[tuple[str, np.ndarray, np.ndarray, float]]:
        """(canonical module name, up B [out, r], down A [r, in], scale) of every module at ``step``."""
        state = self.states[step]
        for key in sorted(state):
            if key.endswith(".lora_A.weight"):
                name = key[: -len(".lora_A.weight")]
                yield name, state[f"{name}.lora_B.weight"], state[key], self.alpha / self.rank

    def deltas(self, step: int) -> dict[str, np.ndarray]:
        """dW = scale * B @ A per module at ``step``, by canonical module name."""
        return {name: scale * up @ down for name, up, down, scale in self.factors(step)}


def base_family(base_path: str | None) -> Family:
    """The family of the base the shadows are fine-tuned on (None: the default family's shipped base)."""
    return get_family(DEFAULT_FAMILY) if base_path is None else family_of_base(base_path)


def with_identities(config: ShadowConfig, family: Family) -> ShadowConfig:
    """``config`` with ``first_identity`` resolved for ``family``'s built-in identities (photo folders need none)."""
    if config.images_dir is not None or config.first_identity is not None:
        return config
    start = family.shadow_start()
    if start is None:
        raise MissingInputError("images", None, f"needed: the {family.name} base has no built-in identities "
                         "(give one sub-folder of photos per shadow identity)")
    return replace(config, first_identity=start)


def identity_sources(config: ShadowConfig) -> list[str]:
    """The shadow identities by name: built-in identity ids, or the sub-folders of ``images_dir``."""
    if config.images_dir is None:
        return [str(config.first_identity + i) for i in range(config.identities)]
    root = Path(config.images_dir)
    if not root.is_dir():
        raise InputError("images", root, "is not a directory (expected one sub-folder of photos per identity)")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise InputError("images", root, "has no sub-folders (one per shadow identity)")
    return names[: config.identities]


def identity_images(config: ShadowConfig, name: str, family: Family) -> np.ndarray:
    """Training photos of one shadow identity: [N, H, W, 3] float32 in [0, 1]."""
    if config.images_dir is None:
        return family.identity_photos(int(name), config.photos, config.image_size)
    from lora_audit.images import load_image_folder

    return load_image_folder(str(Path(config.images_dir) / name), config.image_size)[: config.photos]


def build_shadows(config: ShadowConfig, out: Path, base_path: str | None = None, jobs: int = 1,
                  progress: Progress | None = None, device: str | None = None) -> dict:
    """Fine-tune every missing shadow shard under ``out`` (``jobs`` processes, models on ``device``);
    returns a summary."""
    config = with_identities(config, base_family(base_path))
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, config, base_path)
    names = identity_sources(config)
    for i, name in enumerate(names):
        shard = out / SHARD.format(i)
        if shard.is_file() and (held := _record(shard)["identity"]) != name:
            raise InputError("out", out, f"{shard.name} holds identity {held}, not {name}: the identities changed; "
                             "use a new directory")
    todo = [i for i in range(len(names)) if not (out / SHARD.format(i)).is_file()]
    if todo:
        class_images = _class_images(out, config, base_path, device)
        work = [(config, base_path, device, out, i, names[i], class_images) for i in todo]
        if jobs == 1:
            _report(map(_finetune_shadow, work), len(names) - len(todo), len(names), progress)
        else:
            with multiprocessing.get_context("spawn").Pool(jobs, initializer=_worker_setup) as pool:
                _report(pool.imap_unordered(_finetune_shadow, work), len(names) - len(todo), len(names), progress)
    return {"identities": len(names), "trained_now": len(todo), "out": str(out)}


def _report(records, done: int, total: int, progress: Progress | None) -> None:
    for record in records:
        done += 1
        if progress:
            progress(done, total, {"identity": record["identity"], "loss": record["final_loss"]})


def load_trajectories(directory: Path) -> list[Trajectory]:
    """Every shard under ``directory``, in shard order."""
    from safetensors import safe_open

    shards = sorted(Path(directory).glob("shadow-*.safetensors"))
    if not shards:
        raise UsageError(f"{directory} holds no shadow shards (make them with `lora-audit shadow`)")
    trajectories = []
    for shard in shards:
        with safe_open(str(shard), framework="numpy") as f:
            meta = json.loads(f.metadata()["lora_audit.shadow"])
            states: dict[int, dict[str, np.ndarray]] = {}
            for key in f.keys():
                if key.startswith("step"):
                    step, _, name = key.partition(".")
                    states.setdefault(int(step[4:]), {})[name] = f.get_tensor(key)
            trajectories.append(Trajectory(meta["identity"], f.get_tensor("images"), states, meta["rank"],
                                           meta["alpha"], meta["trigger"]))
    return trajectories


def shard_records(directory: Path) -> list[dict]:
    """The metadata record (identity, trigger, rank, alpha, seed, seconds, final loss) of every shard."""
    return [_record(shard) for shard in sorted(Path(directory).glob("shadow-*.safetensors"))]


def _record(shard: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(shard), framework="numpy") as f:
        return json.loads(f.metadata()["lora_audit.shadow"])


def _check_manifest(out: Path, config: ShadowConfig, base_path: str | None) -> None:
    recipe = {k: v for k, v in asdict(config).items() if k != "identities"}  # more identities may be added later
    defaults = FinetuneConfig()  # the defences' fields, when unused, stay out: older manifests still match
    for key in ("adapter", "loda_activation", "dp"):
        if recipe["finetune"][key] == getattr(defaults, key):
            del recipe["finetune"][key]
    manifest = {"config": recipe, "base": base_path or "toy"}
    path = out / MANIFEST
    wanted = json.loads(json.dumps(manifest))  # tuples -> lists, as they come back from disk
    if path.is_file():
        if json.loads(path.read_text()) != wanted:
            raise InputError("out", out, f"holds shadows of another recipe or base ({MANIFEST}); use a new directory")
    else:
        tmp = out / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, path)


def _class_images(out: Path, config: ShadowConfig, base_path: str | None, device: str | None) -> np.ndarray | None:
    """The prior-preservation images, generated once per run directory and shared by every shadow."""
    ft = config.finetune
    if ft.prior_loss_weight <= 0:
        return None
    path = out / "class_images.npy"
    if not path.is_file():
        from lora_audit.diffusion.finetune import generate_class_images
        from lora_audit.families import load_base

        images = generate_class_images(load_base(base_path, device), ft.class_prompt, ft.num_class_images,
                                       guidance_scale=ft.class_guidance_scale, steps=ft.class_sampling_steps,
                                       seed=ft.seed)
        tmp = out / ".class_images.tmp.npy"
        np.save(tmp, images)
        os.replace(tmp, path)
    return np.load(path)


def _worker_setup() -> None:
    """One torch thread per worker process (workers share the cores) and no library loading bars."""
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging

    torch.set_num_threads(1)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


_BASES: dict = {}  # per-process cache: a worker loads the base model once


def _finetune_shadow(work) -> dict:
    """Fine-tune one shadow identity and write its shard (worker side)."""
    import safetensors.numpy

    from lora_audit.diffusion.finetune import finetune_lora
    from lora_audit.families import load_base

    config, base_path, device, out, index, name, class_images = work
    if base_path not in _BASES:
        _BASES[base_path] = load_base(base_path, device)
    images = identity_images(config, name, get_family(_BASES[base_path].family))
    ft = config.finetune
    seed = ft.seed + (int(name) if name.isdigit() else index)
    recipe = FinetuneConfig(**{**ft.__dict__, "seed": seed, "snapshot_steps": tuple(config.snapshot_steps)})
    result = finetune_lora(_BASES[base_path], images, recipe, class_images=class_images)
    tensors = {"images": (images * 255 + 0.5).astype(np.uint8)}
    for step in config.snapshot_steps:
        tensors.update({f"step{step}.{k}": v.numpy() for k, v in result.snapshots[step].items()})
    record = {"identity": name, "trigger": result.trigger, "rank": ft.rank,
              "alpha": ft.alpha if ft.alpha is not None else ft.rank, "seed": seed,
              "seconds": round(result.seconds, 2), "final_loss": result.losses[-1]}
    tmp = out / f".{SHARD.format(index)}.{os.getpid()}.tmp"
    safetensors.numpy.save_file(tensors, str(tmp), metadata={"lora_audit.shadow": json.dumps(record)})
    os.replace(tmp, out / SHARD.format(index))
    return record
