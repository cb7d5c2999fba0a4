"""lora-audit: privacy-risk auditing of shared LoRA weights of text-to-image diffusion models."""

__version__ = "0.1.0"
