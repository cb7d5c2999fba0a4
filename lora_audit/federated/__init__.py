"""Federated fine-tuning in the audit: a client's shared update, and what a curious server recovers from it.

``client.py`` computes the update a client shares (the diffusion loss on its private photos at its
own noise and timestep), ``objective.py`` the gradient it induces and the distances a server matches,
``gidm.py`` and ``baselines.py`` the inversions (GIDM / GIDM+, Inverting Gradients, DLG),
``invert.py`` runs one with checkpoints, ``quality.py`` scores reconstructions, ``defences.py``
clips, noises and sparsifies updates, ``evaluate.py`` is the harness. The file format lives in
:mod:`lora_audit.weights.update_file` (the scan reads it).
"""
