"""Writing LoRA files in diffusers/PEFT or kohya layout, optionally with kohya-style training metadata."""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np
import safetensors.numpy

LAYOUTS = ("peft", "kohya")
_KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_",
                 "transformer": "lora_unet_"}


def save_lora(path: str, state_dict: Mapping[str, object], *, layout: str = "peft", rank: int, alpha: float,
              metadata: Mapping[str, str] | None = None, dtype: str = "float32") -> None:
    """Write a diffusers/PEFT-layout state dict (``unet.<module>.lora_A.weight``) as ``layout``.

    PEFT files carry rank and alpha in ``lora_adapter_metadata`` like diffusers writes them;
    kohya files carry them as ``.alpha`` tensors.
    """
    arrays = {k: _numpy(v, dtype) for k, v in state_dict.items()}
    meta = {"format": "pt", **(metadata or {})}
    if layout == "peft":
        components = sorted({k.split(".", 1)[0] for k in arrays})
        config = {}
        for c in components:
            config.update({f"{c}.r": rank, f"{c}.lora_alpha": alpha, f"{c}.use_rslora": False})
        meta["lora_adapter_metadata"] = json.dumps(config, sort_keys=True)
    elif layout == "kohya":
        arrays = to_kohya(arrays, alpha)
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    safetensors.numpy.save_file(arrays, path, metadata=meta)


def to_kohya(arrays: Mapping[str, np.ndarray], alpha: float) -> dict[str, np.ndarray]:
    """``unet.a.b.lora_A.weight`` -> ``lora_unet_a_b.lora_down.weight`` (+ ``.alpha``), SD1-style names."""
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        module, _, role = key.rpartition(".lora_")
        component, _, path = module.partition(".")
        name = _KOHYA_PREFIX[component] + path.replace(".", "_")
        out[f"{name}.lora_down.weight" if role.startswith("A") else f"{name}.lora_up.weight"] = value
        out[f"{name}.alpha"] = np.asarray(alpha, dtype=np.float32)
    return out


def kohya_training_metadata(*, trigger: str, class_word: str, num_images: int, steps: int, rank: int,
                            alpha: float, base_model_version: str, output_name: str, repeats: int = 10) -> dict[str, str]:
    """The leaky ``ss_*`` keys kohya sd-scripts writes by default (captions, folders, steps)."""
    folder = f"{repeats}_{trigger} {class_word}"
    return {
        "ss_output_name": output_name,
        "ss_base_model_version": base_model_version,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_steps": str(steps),
        "ss_max_train_steps": str(steps),
        "ss_num_train_images": str(num_images * repeats),
        "ss_tag_frequency": json.dumps({folder: {f"{trigger} {class_word}": num_images}}),
        "ss_dataset_dirs": json.dumps({folder: {"n_repeats": repeats, "img_count": num_images}}),
        "ss_training_comment": f"{trigger} {class_word}, {num_images} photos",
        "modelspec.title": output_name,
        "modelspec.trigger_phrase": f"a face of {trigger}",
    }


def _numpy(value: object, dtype: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value, dtype=np.float32).astype(dtype))
