"""Which base model a LoRA was trained for: from metadata when it says, else from tensor shapes."""

from __future__ import annotations

from lora_audit.weights.modules import LoraModule

FAMILIES = ("sd1", "sd2", "sdxl", "flux", "toy", "unknown")

# (metadata key, value prefix, family), checked in order.
_METADATA_HINTS = [
    ("lora_audit.base_model", "toy", "toy"),
    ("ss_base_model_version", "sd_v1", "sd1"),
    ("ss_base_model_version", "sd_v2", "sd2"),
    ("ss_base_model_version", "sdxl", "sdxl"),
    ("ss_base_model_version", "flux", "flux"),
    ("modelspec.architecture", "lora-audit-toy", "toy"),
    ("modelspec.architecture", "stable-diffusion-v1", "sd1"),
    ("modelspec.architecture", "stable-diffusion-v2", "sd2"),
    ("modelspec.architecture", "stable-diffusion-xl", "sdxl"),
    ("modelspec.architecture", "flux", "flux"),
]
_CROSS_ATTENTION_DIMS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def detect_base_model(metadata: dict[str, str], modules: list[LoraModule]) -> tuple[str, str]:
    """(family, evidence): metadata hints first, then the shapes of characteristic modules."""
    for key, prefix, family in _METADATA_HINTS:
        value = metadata.get(key, "")
        if value.lower().startswith(prefix):
            return family, f"metadata {key}={value!r}"
    names = {m.name: m for m in modules if len(m.shape) >= 2}
    # Flux first: its T5 encoder is a second text encoder too (lora_te2_).
    if any(n.startswith(("transformer.double_blocks.", "transformer.single_blocks.",
                         "transformer.single_transformer_blocks.")) for n in names):
        return "flux", "Flux double/single transformer blocks are adapted"
    if any(n.startswith("text_encoder_2.") for n in names):
        return "sdxl", "a second text encoder (text_encoder_2 / lora_te2_) is adapted"
    for name, module in names.items():
        if name.startswith("unet.") and name.endswith((".attn2.to_k", ".attn2.to_v")):
            dim = module.shape[1]
            if dim in _CROSS_ATTENTION_DIMS:
                return _CROSS_ATTENTION_DIMS[dim], f"cross-attention key input dim {dim} ({name})"
            return "unknown", f"cross-attention key input dim {dim} matches no known family ({name})"
    for name, module in names.items():
        if name.startswith("text_encoder.") and name.endswith(".q_proj"):
            width = module.shape[1]
            if width == 1024:
                return "sd2", f"text-encoder width 1024 ({name})"
            if width == 768:
                return "sd1", f"text-encoder width 768 and no second text encoder ({name})"
    return "unknown", "no metadata hint and no characteristic module shape"
