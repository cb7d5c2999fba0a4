"""The toy face world: procedural identities and their photos, the toy base pipeline and face embedder,
and its family (``family.py``); its build and evaluation harness is :mod:`lora_audit.toyworld.lab`."""
