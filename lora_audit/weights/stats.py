"""Weight statistics of a LoRA file: counts, ranks, dtypes, per-module dW norms and effective rank.

Norms and singular values come from the factors; dW is never formed beyond a bounded size, which a
tiny file can make enormous (a LoKr of two 150x150 factors has a 22500x22500 dW):

- LoRA / LoCon / DoRA, dW = U @ D (U [out, r], D [r, in]): sigma^2 = eig(U^T U @ D D^T), r x r, when
  r <= min(out, in), else the dense product, which is then no larger than a factor.
- Tucker (``lora_mid``): D = mid x down is not formed; its Gram D D^T is contracted in r-space.
- LoKr, dW = kron(W1, W2): ||dW|| = ||W1|| ||W2|| and the singular values are all the products
  sigma_i(W1) * sigma_j(W2).
- LoHa, dW = (A1 @ B1) * (A2 @ B2) = P @ Q with P [out, r1*r2] (row-wise Kronecker product of A1, A2)
  and Q [r1*r2, in] (column-wise Khatri-Rao product of B1, B2), so rank(dW) <= r1*r2 and
  ||dW||^2 = sum((P^T P) * (Q Q^T)): the (r1 r2) x (r1 r2) Gram eigenproblem when r1*r2 is small
  (P and Q built a block at a time); else dW in column blocks of bounded size: exact singular values
  when dW has at most 1M entries, else a randomized sketch of 128 columns (exact when rank(dW) <= 128,
  else the top 128 singular values: a lower estimate of the effective rank; the norm stays exact).

Everything is computed on dW / scale in float64; the scale is applied to the results.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Callable

import numpy as np

from lora_audit.results import ModuleStats, WeightStats
from lora_audit.weights.lora_file import LoraFile
from lora_audit.weights.modules import LoraModule, has_float_tensors

_GRAM_MAX_RANK = 512  # LoHa: r1*r2 above this is not worth an (r1 r2) x (r1 r2) eigenproblem
_DENSE_MAX_ELEMENTS = 1_000_000  # LoHa: a dW this small is formed (8 MB) for its exact singular values
_BLOCK_ELEMENTS = 1_000_000  # LoHa: entries of dW formed at a time (norms and sketches of a large dW)
_SKETCH_SIZE = 128  # LoHa: columns of the randomized sketch of a large dW (exact when its rank is <= this)
_EIGEN_BATCH_ELEMENTS = 1 << 14  # r x r problems solved per call: up to 64 of them, at most 128 KB a stack
# (larger stacks are fresh memory for every temporary, whose page faults doubled the time of 264 rank-32 modules)
_MAX_WORK = 2e11  # LoHa: multiply-adds past which (only a crafted file: Flux's largest layer needs ~1e10)
# the norm and effective rank are left unknown (NaN) rather than computed for minutes

Spectrum = tuple[float, "np.ndarray | None"]  # (sum of squares of dW / scale, its singular values or None)


def weight_stats(lora: LoraFile, per_module: bool = True) -> WeightStats:
    """Counts over the file and, with ``per_module``, each module's dW norm and effective rank."""
    measurable = [m for m in lora.modules if per_module and has_float_tensors(m, lora.tensors)]
    with np.errstate(over="ignore", invalid="ignore"):  # absurd alphas give inf/NaN norms, not warnings
        spectra = _spectra(lora, measurable)
        modules = [_module_stats(m, *spectra[m.name]) for m in measurable]
    return WeightStats(
        layout=lora.layout,
        base_model=lora.base_model,
        base_model_evidence=lora.base_model_evidence,
        module_count=len(lora.modules),
        tensor_count=len(lora.tensors),
        parameter_count=sum(t.numel for t in lora.tensors.values()),
        dtypes=dict(Counter(t.dtype for t in lora.tensors.values())),
        ranks={str(k): v for k, v in sorted(Counter(m.rank for m in lora.modules).items())},
        alphas={_fmt(k): v for k, v in sorted(Counter(m.alpha for m in lora.modules).items())},
        kinds=dict(Counter(m.kind for m in lora.modules)),
        modules=modules,
    )


def module_stats(lora: LoraFile, module: LoraModule) -> ModuleStats:
    """dW norm and effective rank of one module."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _module_stats(module, *_spectra(lora, [module])[module.name])


def _module_stats(module: LoraModule, squares: float, singular: np.ndarray | None) -> ModuleStats:
    """Scale the spectrum of dW / scale: an alpha so large that sigma^2 overflows gives an inf norm."""
    scale2 = np.float64(module.scale) ** 2
    norm = float(np.sqrt(scale2 * np.maximum(squares, 0.0)))  # rounding can take 0 to -1e-30
    eff = effective_rank(singular) if singular is not None and np.isfinite(scale2) else float("nan")
    return ModuleStats(module.name, module.kind, module.rank, module.alpha, module.scale,
                       list(module.shape), norm, eff)


def effective_rank(singular_values: np.ndarray) -> float:
    """exp(Shannon entropy of the normalised singular values); 0 for a zero matrix."""
    s = np.abs(np.asarray(singular_values, dtype=np.float64))
    total = s.sum()
    if not np.isfinite(total) or total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


# --------------------------------------------------------------------------- per-kind spectra


def _spectra(lora: LoraFile, modules: list[LoraModule]) -> dict[str, Spectrum]:
    """Spectrum of every module; r x r eigenproblems of LoRA / LoCon modules of one rank are solved in batches."""
    out: dict[str, Spectrum] = {}
    pending: dict[int, list[tuple[str, float, np.ndarray]]] = {}  # rank -> (name, squares, its Grams)
    arena = _arena()
    read = lambda key: arena.read(lora, key)  # noqa: E731
    for m in modules:
        arena.reset()  # the factors of one module at a time: nothing read for the last one is kept
        if m.kind == "loha":
            out[m.name] = _loha_spectrum(m, read)
        elif m.kind == "lokr":
            out[m.name] = _lokr_spectrum(m, read)
        else:
            up = read(m.keys["up"]).reshape(m.shape[0], m.rank)  # [out, r]
            if "mid" in m.keys:
                result = _tucker_spectrum(up, read(m.keys["mid"]), read(m.keys["down"]))
            else:
                result = _lowrank_spectrum(up, read(m.keys["down"]).reshape(m.rank, -1))
            if isinstance(result[1], _Pending):
                pending.setdefault(m.rank, []).append((m.name, result[0], result[1]))
            else:
                out[m.name] = result
    for rank, items in pending.items():
        size = max(1, min(64, _EIGEN_BATCH_ELEMENTS // rank**2))
        for batch in (items[i : i + size] for i in range(0, len(items), size)):
            gram_u, gram_v = (np.stack([p.grams[i] for _, _, p in batch]) for i in (0, 1))  # [M, r, r] each
            for (name, squares, _), values in zip(batch, _product_singular_values(gram_u, gram_v)):
                out[name] = (squares, values)
    return out


class _Arena:
    """Reused float64 memory for the factors of one module at a time (fresh memory costs a page fault
    per page, which made converting the factors cost more than the statistics of them)."""

    LARGEST = 1 << 24  # elements (128 MB): a larger factor gets its own array; the arena never grows past it

    def __init__(self):
        self.buffer, self.used = np.empty(1 << 20), 0

    def reset(self) -> None:
        """Hand out the memory again: the views given so far are no longer read."""
        self.used = 0

    def read(self, lora: LoraFile, key: str) -> np.ndarray:
        """The tensor ``key`` as float64, in the arena (a view valid until the arena is reset)."""
        numel = lora.tensors[key].numel
        if numel > self.LARGEST:
            return np.asarray(lora.file.read(key), dtype=np.float64)
        if self.used + numel > self.buffer.size:  # views already handed out keep the old buffer alive
            self.buffer, self.used = np.empty(max(numel, min(2 * self.buffer.size, self.LARGEST))), 0
        out = self.buffer[self.used : self.used + numel]
        self.used += numel
        return lora.file.read_into(key, out)


_local = threading.local()


def _arena() -> _Arena:
    if not hasattr(_local, "arena"):
        _local.arena = _Arena()
    return _local.arena


class _Pending:
    """The Grams (U^T U, D D^T) of a dW = U @ D whose singular values are left for one batched call."""

    def __init__(self, gram_u: np.ndarray, gram_v: np.ndarray):
        self.grams = (gram_u, gram_v)


def _product_singular_values(gram_u: np.ndarray, gram_v: np.ndarray) -> list[np.ndarray | None]:
    """Singular values, descending, of each dW = U @ D from its Grams [M, r, r]: sigma^2 = eig(U^T U D D^T)
    = eig(L^T D D^T L) with U^T U = L L^T (Cholesky), a symmetric problem (half the time of eigvals);
    eigvals of the product when some U^T U is singular (an all-zero up factor). None for a module whose
    product overflows (factors near 1e100): its effective rank is unknown, the others' are not."""
    product = gram_u @ gram_v  # [M, r, r]
    finite = np.isfinite(product).all(axis=(1, 2))  # [M]
    result: list[np.ndarray | None] = [None] * len(product)
    if finite.any():
        gram_u, gram_v, product = gram_u[finite], gram_v[finite], product[finite]
        try:
            lower = np.linalg.cholesky(gram_u)  # [m, r, r]
            symmetric = np.swapaxes(lower, 1, 2) @ gram_v @ lower
            if not np.isfinite(symmetric).all():
                raise np.linalg.LinAlgError("overflow")
            values = np.linalg.eigvalsh(symmetric)
        except np.linalg.LinAlgError:
            values = np.linalg.eigvals(product).real
        for i, v in zip(np.flatnonzero(finite), np.sort(np.sqrt(np.clip(values, 0, None)), axis=1)[:, ::-1]):
            result[i] = v
    return result


def _lowrank_spectrum(u: np.ndarray, v: np.ndarray | None, gram_v: np.ndarray | None = None,
                      v_of: Callable[[], np.ndarray] | None = None, n: int | None = None):
    """Spectrum of u @ v, u [m, r], v [r, n]: eig(u^T u @ v v^T) (r x r) when r <= min(m, n), else
    the dense product (then no larger than u or v) or, with v not formed (``v=None``; ``gram_v`` = v v^T,
    ``v_of`` forms v, ``n`` its width), the m x m Gram u gram_v u^T when m <= n.

    The r x r product comes back as a :class:`_Pending` for the caller to batch (:func:`_resolve`).
    """
    m, r = u.shape
    n = v.shape[1] if v is not None else n
    if r <= min(m, n):
        return _gram_spectrum(u.T @ u, v @ v.T if gram_v is None else gram_v)  # [r, r] each
    if v is None and m <= n:
        gram = u @ gram_v @ u.T  # [m, m] = dW dW^T
        return float(np.trace(gram)), _eigh_singular(gram)
    dense = u @ (v if v is not None else v_of())  # [m, n], m * n < r * max(m, n)
    return float(np.sum(dense * dense)), _svd(dense)


def _gram_spectrum(gram_u: np.ndarray, gram_v: np.ndarray):
    """||dW||^2 = trace(gram_u gram_v) and the pending eigenproblem of dW = u @ v from its Grams."""
    squares = float(np.sum(gram_u * gram_v))  # both symmetric
    if not (np.isfinite(gram_u).all() and np.isfinite(gram_v).all()):
        return squares, None
    return squares, _Pending(gram_u, gram_v)


def _resolve(spectrum) -> Spectrum:
    squares, s = spectrum
    if isinstance(s, _Pending):
        s = _product_singular_values(*(g[None] for g in s.grams))[0]
    return squares, s


def _tucker_spectrum(up: np.ndarray, mid: np.ndarray, down: np.ndarray):
    """dW = up @ D, D[a, (i, k)] = sum_b mid[a, b, k] down[b, i]; up [out, r], mid [r, r, kh, kw],
    down [r, in(, 1, 1)]. D D^T is contracted in r-space; D is formed only when in*kh*kw < r."""
    r = mid.shape[0]
    mid = mid.reshape(r, r, -1)  # [r, r, K]
    down = down.reshape(r, -1)  # [r, in]
    n = down.shape[1] * mid.shape[2]
    gram_v = np.einsum("abk,bc,dck->ad", mid, down @ down.T, mid, optimize=True)  # [r, r] = D D^T
    v_of = lambda: np.einsum("abk,bi->aik", mid, down).reshape(r, n)  # noqa: E731  [r, in*K]
    return _lowrank_spectrum(up, None, gram_v, v_of, n)


def _lokr_spectrum(m: LoraModule, read) -> Spectrum:
    """dW = kron(W1, W2): ||dW||^2 = ||W1||^2 ||W2||^2 and sigma(dW) = {sigma_i(W1) * sigma_j(W2)}."""
    (sq1, s1), (sq2, s2) = (_resolve(_lokr_factor_spectrum(m.keys, i, read)) for i in "12")
    squares = sq1 * sq2
    if s1 is None or s2 is None:
        return squares, None
    return squares, np.outer(s1, s2).ravel()  # [n1 * n2]


def _lokr_factor_spectrum(keys: dict[str, str], i: str, read):
    """W1 [a, b] or W2 [c, d(, kh, kw)] (flattened to 2-D): whole, a low-rank product or Tucker."""
    if f"lokr_w{i}" in keys:
        w = read(keys[f"lokr_w{i}"])
        w = w.reshape(w.shape[0], -1)  # [c, d*kh*kw]
        return float(np.sum(w * w)), _svd(w)
    a, b = read(keys[f"lokr_w{i}_a"]), read(keys[f"lokr_w{i}_b"])
    if i == "2" and "lokr_t2" in keys:  # t2 [r, r, kh, kw], a [r, out], b [r, in]
        return _tucker_spectrum(a.T, read(keys["lokr_t2"]), b)
    return _lowrank_spectrum(a, b.reshape(b.shape[0], -1))  # a [out, r], b [r, in(*kh*kw)]


def _loha_spectrum(m: LoraModule, read) -> Spectrum:
    """dW = (A1 @ B1) * (A2 @ B2), flattened to [out, n]. A_i [out, r_i]; B_i [r_i, n], given by
    column blocks (Tucker: B_i[a, (i, k)] = sum_b t_i[a, b, k] w_b[b, i], formed a block at a time)."""
    k = m.keys
    tucker = "hada_t1" in k
    a = [read(k[f"hada_w{i}_a"]) for i in "12"]
    b = [read(k[f"hada_w{i}_b"]) for i in "12"]
    if tucker:  # w_a [r, out], w_b [r, in], t [r, r, kh, kw]
        a = [x.T for x in a]  # [out, r]
        t = [read(k[f"hada_t{i}"]) for i in "12"]
        t = [x.reshape(x.shape[0], x.shape[1], -1) for x in t]  # [r, r, K]
        units, per_unit = b[0].shape[1], t[0].shape[2]

        def block(i: int, lo: int, hi: int) -> np.ndarray:  # [r_i, (hi - lo) * K]
            return np.einsum("abk,bn->ank", t[i], b[i][:, lo:hi]).reshape(t[i].shape[0], -1)
    else:
        b = [x.reshape(x.shape[0], -1) for x in b]  # [r_i, in*kh*kw]
        units, per_unit = b[0].shape[1], 1

        def block(i: int, lo: int, hi: int) -> np.ndarray:
            return b[i][:, lo:hi]
    out, n = a[0].shape[0], units * per_unit
    rank = a[0].shape[1] * a[1].shape[1]  # rank(dW) <= r1 * r2
    step = max(1, _BLOCK_ELEMENTS // max(out * per_unit, rank * per_unit, 1))  # units per block
    blocks = lambda: ((lo, min(lo + step, units)) for lo in range(0, units, step))  # noqa: E731
    if not all(np.isfinite(x).all() for x in (*a, *b, *(t if tucker else ()))):
        return float("nan"), None
    gram_path = rank <= min(_GRAM_MAX_RANK, out, n)
    work = (out + n) * rank**2 if gram_path else out * n * (a[0].shape[1] + a[1].shape[1] + 2 * _SKETCH_SIZE)
    if work > _MAX_WORK:
        return float("nan"), None
    if gram_path:
        gram_p = _face_split_gram(a[0], a[1])  # [R, R] = P^T P
        gram_q = np.zeros((rank, rank))  # Q Q^T, Q[(i, j), col] = B1[i, col] B2[j, col]
        for lo, hi in blocks():
            q = (block(0, lo, hi)[:, None, :] * block(1, lo, hi)[None, :, :]).reshape(rank, -1)
            gram_q += q @ q.T
        return _resolve(_gram_spectrum(gram_p, gram_q))
    dense_block = lambda lo, hi: (a[0] @ block(0, lo, hi)) * (a[1] @ block(1, lo, hi))  # noqa: E731  [out, cols]
    if out * n <= _DENSE_MAX_ELEMENTS:  # small: the exact spectrum of the formed dW
        dense = np.concatenate([dense_block(lo, hi) for lo, hi in blocks()], axis=1)  # [out, n]
        return float(np.sum(dense * dense)), _eigh_singular(dense @ dense.T if out <= n else dense.T @ dense)
    # Large dW and a large rank bound: a randomized range finder (Halko et al. 2011) over column blocks,
    # exact when rank(dW) <= size, else the top singular values only (a lower estimate of the effective rank).
    size = min(_SKETCH_SIZE, rank, out, n)
    rng = np.random.default_rng(0)
    squares, y = 0.0, np.zeros((out, size))  # y = dW @ omega [out, size]
    for lo, hi in blocks():
        d = dense_block(lo, hi)
        squares += float(np.sum(d * d))
        y += d @ rng.standard_normal((d.shape[1], size))
    if not np.isfinite(y).all():
        return squares, None
    basis = np.linalg.qr(y)[0]  # [out, size]
    sketch = np.concatenate([basis.T @ dense_block(lo, hi) for lo, hi in blocks()], axis=1)  # [size, n]
    return squares, _svd(sketch)


def _face_split_gram(a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """P^T P for P [out, r1*r2], P[o, (i, j)] = a1[o, i] a2[o, j], a block of rows at a time."""
    r = a1.shape[1] * a2.shape[1]
    gram = np.zeros((r, r))
    step = max(1, _BLOCK_ELEMENTS // r)
    for lo in range(0, a1.shape[0], step):
        p = (a1[lo : lo + step, :, None] * a2[lo : lo + step, None, :]).reshape(-1, r)  # [rows, R]
        gram += p.T @ p
    return gram


def _svd(x: np.ndarray) -> np.ndarray | None:
    return np.linalg.svd(x, compute_uv=False) if np.isfinite(x).all() else None


def _eigh_singular(gram: np.ndarray) -> np.ndarray | None:
    """Singular values of X from its (symmetric) Gram X X^T or X^T X."""
    if not np.isfinite(gram).all():
        return None
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None))[::-1]


def _fmt(x: float) -> str:
    return f"{x:g}"
