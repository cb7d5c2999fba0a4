"""The toy face world: procedural identities, and builders of the toy base model, embedder and samples."""
