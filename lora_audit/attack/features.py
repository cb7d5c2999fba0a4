"""Fixed random sketches of each module's weight delta dW, the encoder's per-module input.

For dW = scale * B @ A (B [out, r], A [r, in], convs flattened to in*kh*kw) the feature is
``scale * (S_out^T B)(A S_in)`` flattened: k*k numbers per module (64 for k = 8). S_out [out, k] and
S_in [in, k] are Gaussian N(0, 1/k) matrices drawn from a seed derived from (seed, dimension), so a
dimension always gets the same matrix. The feature is a linear function of dW alone: every
factorisation of the same dW (B G^-1, G A) and every rank give the same k*k numbers, and the sketch
keeps dW's scale (its Frobenius norm is dW's up to random-projection error). dW itself is never
formed for lora, locon (Tucker included) and dora modules: the cost is O((out + in) * r * k).
LoHa and LoKr modules are sketched from their dW, one module at a time.

Memory for SD1.5 (from ``synthetic.module_shapes("sd15")``, k = 8, float64): its 350 targetable
modules (UNet and CLIP-L, convs included) have 16 distinct dimensions, so all sketch matrices together
hold 768,000 numbers, 6.1 MB (5.9 MiB); the paper's targets (UNet to_q/to_k/to_v/to_out.0, 128
modules) use 4 dimensions, 24,064 numbers, 188 KiB. The largest module's share, (out + in) * k, is
194,560 numbers (1.6 MB, a 1280 x 2560 x 3 x 3 conv); its dW alone would be 29.5M numbers (236 MB),
and the dW of all 350 modules 942M numbers (7.5 GB). The sketch figures grow linearly with k (the toy
attack's k = 16 doubles them); the dW figures do not depend on k.
"""

from __future__ import annotations

import numpy as np

from lora_audit.weights import LoraFile, LoraModule

FACTORED_KINDS = ("lora", "locon", "dora", "loda")  # LoDA: its first-order dW (weights/loda.py)


class ModuleSketcher:
    """Sketches modules with k x k random projections; matrices are cached per dimension."""

    def __init__(self, k: int = 8, seed: int = 0):
        self.k = k
        self.seed = seed
        self._matrices: dict[int, np.ndarray] = {}

    def matrix(self, dim: int) -> np.ndarray:
        """The [dim, k] sketch matrix of a dimension, N(0, 1/k), the same for every (seed, dim)."""
        if dim not in self._matrices:
            rng = np.random.default_rng([self.seed, dim])
            self._matrices[dim] = rng.normal(0.0, 1.0 / np.sqrt(self.k), (dim, self.k))
        return self._matrices[dim]

    def sketch_delta(self, dw: np.ndarray) -> np.ndarray:
        """Features [k*k] of an explicit dW shaped (out, in) or (out, in, kh, kw)."""
        dw = np.asarray(dw, dtype=np.float64).reshape(dw.shape[0], -1)  # [out, in]
        s_out, s_in = self.matrix(dw.shape[0]), self.matrix(dw.shape[1])  # [out, k], [in, k]
        return (s_out.T @ dw @ s_in).reshape(-1)  # [k, k] -> [k*k]

    def sketch_module(self, lora_file: LoraFile, module: LoraModule) -> np.ndarray:
        """Features [k*k] of one module: from its factors, or from dW for LoHa / LoKr."""
        if module.kind not in FACTORED_KINDS:
            return self.sketch_delta(lora_file.delta(module))
        read, keys, r = lora_file.file.read, module.keys, module.rank
        up = read(keys["up"]).reshape(module.shape[0], r).astype(np.float64)  # [out, r]
        down = read(keys["down"]).astype(np.float64)  # [r, in(, kh, kw)]; Tucker: [r, in, 1, 1]
        if "mid" in keys:  # Tucker core [r, r, kh, kw]: A = mid applied after the 1x1 down
            down = np.einsum("abhw,bi->aihw", read(keys["mid"]), down.reshape(r, -1))  # [r, in, kh, kw]
        return self.sketch_factors(up, down, module.scale)

    def sketch_factors(self, up: np.ndarray, down: np.ndarray, scale: float) -> np.ndarray:
        """Features [k*k] of dW = scale * up @ down from the factors up [out, r], down [r, in(, kh, kw)]."""
        up = np.asarray(up, dtype=np.float64)  # [out, r]
        down = np.asarray(down, dtype=np.float64).reshape(up.shape[1], -1)  # [r, in*kh*kw]
        s_out, s_in = self.matrix(up.shape[0]), self.matrix(down.shape[1])  # [out, k], [in, k]
        return (scale * (s_out.T @ up) @ (down @ s_in)).reshape(-1)  # [k, r] @ [r, k] -> [k*k]

    def sketch(self, lora_file: LoraFile) -> dict[str, np.ndarray]:
        """Features [k*k] of every module of ``lora_file``, by canonical module name."""
        return {m.name: self.sketch_module(lora_file, m) for m in lora_file.modules}
