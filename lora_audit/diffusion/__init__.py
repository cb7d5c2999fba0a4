"""Base diffusion pipelines behind one interface, and DreamBooth-LoRA fine-tuning on them."""
