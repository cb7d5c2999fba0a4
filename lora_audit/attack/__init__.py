"""The weight-to-image attack (DESIGN.md §2): a VAE encoder from LoRA weight deltas to a prompt-embedding
latent, decoded by the LoRA-patched diffusion model."""
