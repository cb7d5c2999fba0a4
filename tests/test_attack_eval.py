"""The toy attack's evaluation helpers on constructed cases."""

import numpy as np

from lora_audit.attack.shadow import Trajectory
from lora_audit.toyworld.identities import DISTRACTORS
from lora_audit.toyworld.lab.attack_eval import ridge_probe
from lora_audit.toyworld.renderer import attributes, identity
from lora_audit.toyworld.family import TOY_METADATA
from lora_audit.weights.writer import save_lora

NAME = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def _state(identity_id: int, mix: np.ndarray, down: np.ndarray, noise: float, rng) -> dict:
    up = (mix @ attributes(identity(identity_id))).reshape(16, 2)  # dW = up @ down: linear in the attributes
    up = up + noise * rng.normal(size=up.shape)
    return {f"{NAME}.lora_A.weight": down.astype(np.float32), f"{NAME}.lora_B.weight": up.astype(np.float32)}


def test_the_probe_identifies_identities_whose_weights_encode_them_linearly(tmp_path):
    rng = np.random.default_rng(0)
    mix, down = rng.normal(size=(32, 47)), rng.normal(size=(2, 16))
    train = [Trajectory(str(i), np.zeros((1, 4, 4, 3), np.uint8), {5: _state(i, mix, down, 0.0, rng)}, 2, 2.0, "w")
             for i in range(200_000, 200_060)]
    cases = []
    for i in range(300_000, 300_005):
        path = tmp_path / f"{i}.safetensors"
        save_lora(str(path), _state(i, mix, down, 0.0, rng), rank=2, alpha=2, metadata=TOY_METADATA)
        cases.append((i, path))
    linear = ridge_probe(train, cases)
    assert linear["rank1"] == 1.0 and linear["n"] == 5
    noise_only = [Trajectory(t.identity, t.images, {5: _state(int(t.identity), 0 * mix, down, 1.0, rng)}, 2, 2.0, "w")
                  for t in train]
    assert ridge_probe(noise_only, cases)["mean_rank"] > 2  # no signal: about chance (mean rank ~10 of 20)
    assert len(DISTRACTORS) == 19 and not set(DISTRACTORS) & {i for i, _ in cases}
