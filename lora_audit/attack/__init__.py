"""The weight-to-image attack (described in docs/attack.md): a VAE encoder from LoRA weight deltas to a
prompt-embedding latent, decoded by the LoRA-patched diffusion model; and the training-free attacks
that need only the base (``training_free``: the metadata trigger, model-guidance extraction)."""
