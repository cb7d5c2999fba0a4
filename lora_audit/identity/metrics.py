"""Identity metrics on face embeddings: cosines, identity centres, rankings, and one false-accept rule.

Pure numpy, shared by the scan's verdict (:mod:`lora_audit.identity.scoring`, :mod:`lora_audit.scan.identity`),
``lora-audit evaluate`` and the toy world's figures (embedder evaluation, attack evaluation, build).

Every similarity is a cosine: embeddings are L2-normalised here, whatever the embedder returns.

The FAR rule, used everywhere: a score ``s`` is accepted against a threshold ``t`` iff ``s >= t``;
the FAR at ``s`` is the share of impostor scores ``>= s`` (:func:`far_at`), and
:func:`threshold_at_far` is the lowest threshold whose FAR is at most the target, so that
``s >= threshold_at_far(impostors, far)``  <=>  ``far_at(impostors, s) <= far``.
"""

from __future__ import annotations

import numpy as np

DEFAULT_GALLERY_SIZE = 100  # identities per identification group in :func:`rank1`


def unit_rows(x: np.ndarray) -> np.ndarray:
    """[N, D] -> [N, D] float64 rows of norm 1 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # [N, 1]
    return x / np.where(norms > 0, norms, 1.0)


def consistency(embeddings: np.ndarray) -> float:
    """Mean pairwise cosine similarity of embeddings [K, D] (K >= 2), the diagonal excluded."""
    unit = unit_rows(embeddings)  # [K, D]
    k = len(unit)
    if k < 2:
        raise ValueError(f"consistency needs at least 2 embeddings, got {k}")
    gram = unit @ unit.T  # [K, K]
    return float((gram.sum() - np.trace(gram)) / (k * (k - 1)))


def centres(embeddings: np.ndarray, labels: np.ndarray, order: np.ndarray | list | None = None) -> np.ndarray:
    """Each identity's centre: the L2-normalised mean of its L2-normalised embeddings, [C, D].

    ``embeddings`` [N, D], ``labels`` [N]; row c is the centre of label ``order[c]`` (default: the
    sorted distinct labels). A label of ``order`` without embeddings is an error.
    """
    unit = unit_rows(embeddings)  # [N, D]
    labels = np.asarray(labels)
    if len(labels) != len(unit):
        raise ValueError(f"{len(unit)} embeddings but {len(labels)} labels")
    order = np.unique(labels) if order is None else np.asarray(order)  # [C]
    rows = []
    for label in order:
        members = labels == label  # [N]
        if not members.any():
            raise ValueError(f"no embedding of label {label}")
        rows.append(unit[members].mean(axis=0))  # [D]
    return unit_rows(np.stack(rows))  # [C, D]


def set_scores(image_embeddings: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Mean cosine of a set of images [K, D] to each centre [C, D]: the set's score per identity, [C]."""
    return (unit_rows(image_embeddings) @ unit_rows(centres).T).mean(axis=0)  # [K, C] -> [C]


def rank_of(scores: np.ndarray, true_index: int) -> int:
    """Rank of ``scores[true_index]`` among ``scores`` [C]: 1 + how many score strictly higher (1 = identified)."""
    scores = np.asarray(scores)  # [C]
    return int((scores > scores[true_index]).sum()) + 1


def ranking(scores: np.ndarray, true_index: int) -> dict:
    """One identification: the true identity's score, the best impostor's (-inf when alone) and the rank."""
    scores = np.asarray(scores, dtype=np.float64)  # [C]
    others = np.delete(scores, true_index)  # [C - 1]
    return {"similarity": float(scores[true_index]),
            "best_impostor": float(others.max()) if len(others) else -np.inf,
            "rank": rank_of(scores, true_index)}


def pair_scores(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of every unordered pair of ``embeddings`` [N, D] (each once): (genuine [G], impostor [P]).

    Genuine pairs share a label of ``labels`` [N], impostor pairs do not; both in row-major pair order.
    """
    labels = np.asarray(labels)
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    unit = unit_rows(embeddings)  # [N, D]
    sims = unit @ unit.T  # [N, N]
    i, j = np.triu_indices(len(labels), k=1)  # [N (N - 1) / 2] each
    same = labels[i] == labels[j]
    return sims[i[same], j[same]], sims[i[~same], j[~same]]


def _impostor_sample(impostors: np.ndarray) -> np.ndarray:
    """Impostor scores as a sorted float64 vector [P]; an empty sample is an error."""
    s = np.sort(np.asarray(impostors, dtype=np.float64).ravel())  # [P]
    if not len(s):
        raise ValueError("the impostor sample is empty")
    return s


def far_at(impostors: np.ndarray, score: float) -> float:
    """False accept rate at ``score``: the share of impostor scores [P] that are >= ``score``."""
    s = _impostor_sample(impostors)  # [P]
    return (len(s) - int(np.searchsorted(s, score, side="left"))) / len(s)


def threshold_at_far(impostors: np.ndarray, far: float) -> float:
    """The lowest threshold t whose FAR (share of impostor scores >= t) is at most ``far``.

    A score s is accepted iff s >= t, and ``s >= t  <=>  far_at(impostors, s) <= far``. With the n
    impostor scores sorted ascending s_0 .. s_{n-1} and ``allowed`` the most impostors the FAR lets
    through (the largest k with k / n <= far, i.e. floor(far * n) but robust to rounding: 0.29 * 100
    is 28.999... yet 29 / 100 == 0.29), t = nextafter(s_{n-allowed-1}, +inf), just above the highest
    impostor score that must be rejected (ties included), or -inf when ``allowed`` is n.
    Of all thresholds whose empirical FAR is <= ``far`` it accepts the most genuine scores (the
    highest TAR). A FAR under 1/n cannot be resolved: t is then just above the highest impostor score.
    """
    if not 0 <= far <= 1:
        raise ValueError(f"far must be in [0, 1], got {far}")
    s = _impostor_sample(impostors)  # [P]
    n = len(s)
    allowed = min(int(np.floor(far * n)), n)
    while allowed < n and (allowed + 1) / n <= far:  # far * n rounded down past an integer
        allowed += 1
    while allowed > 0 and allowed / n > far:  # far * n rounded up to an integer
        allowed -= 1
    if allowed == n:
        return -np.inf
    return float(np.nextafter(s[n - allowed - 1], np.inf))


def tar_at_far(genuine: np.ndarray, impostors: np.ndarray, far: float) -> float:
    """True accept rate: the share of genuine scores [G] >= :func:`threshold_at_far` of the impostors [P]."""
    threshold = threshold_at_far(impostors, far)
    return float(np.mean(np.asarray(genuine, dtype=np.float64) >= threshold))


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Probability that a genuine score [G] beats an impostor one [P] (ties count half): the ROC AUC."""
    genuine, impostor = np.asarray(genuine, dtype=np.float64), np.asarray(impostor, dtype=np.float64)
    scores = np.concatenate([genuine, impostor])  # [G + P]
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank of each distinct score, ties averaged
    rank_sum = mid_ranks[inverse[:len(genuine)]].sum()
    n_g, n_i = len(genuine), len(impostor)
    return float((rank_sum - n_g * (n_g + 1) / 2) / (n_g * n_i))


def rank1(embeddings: np.ndarray, labels: np.ndarray, image_index: np.ndarray,
          gallery_size: int = DEFAULT_GALLERY_SIZE) -> float:
    """Rank-1 identification rate, in groups of ``gallery_size`` identities (gallery: image 0 of each).

    ``embeddings`` [N, D], ``labels`` [N] identities, ``image_index`` [N] (0 = the gallery image);
    every other image is a probe, matched to the gallery image of highest cosine.
    """
    unit = unit_rows(embeddings)  # [N, D]
    labels, image_index = np.asarray(labels), np.asarray(image_index)
    ids = np.unique(labels)
    hits = total = 0
    for start in range(0, len(ids), gallery_size):
        group = np.isin(labels, ids[start:start + gallery_size])  # [N]
        gallery, probes = group & (image_index == 0), group & (image_index != 0)
        nearest = np.argmax(unit[probes] @ unit[gallery].T, axis=1)  # [probes]
        hits += int(np.sum(labels[gallery][nearest] == labels[probes]))
        total += int(probes.sum())
    return hits / total


def ranking_summary(rankings: list[dict]) -> dict:
    """Summary of identifications (dicts with "similarity", "rank" and optionally "best_impostor", as
    :func:`ranking` makes): mean_similarity, mean_best_impostor (when every ranking has one), rank1
    (share of rank 1), mean_rank and n."""
    if not rankings:
        raise ValueError("no rankings to summarise")
    ranks = np.array([r["rank"] for r in rankings])  # [n]
    summary = {"mean_similarity": round(float(np.mean([r["similarity"] for r in rankings])), 4)}
    if all("best_impostor" in r for r in rankings):
        summary["mean_best_impostor"] = round(float(np.mean([r["best_impostor"] for r in rankings])), 4)
    summary.update({"rank1": round(float(np.mean(ranks == 1)), 3), "mean_rank": round(float(ranks.mean()), 2),
                    "n": len(rankings)})
    return summary


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (95% for z = 1.96); sound at 0 and n."""
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_interval(values: np.ndarray, resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` [N] (``level`` coverage, a fixed seed)."""
    values = np.asarray(values, dtype=np.float64)  # [N]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(len(values), size=(resamples, len(values)))].mean(axis=1)  # [resamples]
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def score_matrix_summary(scores: np.ndarray, far: float) -> dict:
    """:func:`ranking_summary` of scores [victims, candidates] (victim v's true identity: candidate v),
    plus "tar" (share of victims whose true score reaches the threshold at ``far``) and that
    "threshold", both from the off-diagonal scores as impostors [V (C - 1)], and 95% intervals:
    Wilson for the proportions (rank-1, TAR: the TAR's with the threshold held fixed), a bootstrap
    over victims for the mean similarity."""
    scores = np.asarray(scores, dtype=np.float64)  # [V, C]
    genuine = np.diag(scores)  # [V]
    impostors = scores[~np.eye(*scores.shape, dtype=bool)]  # [V (C - 1)]
    threshold = threshold_at_far(impostors, far)
    rankings = [ranking(row, v) for v, row in enumerate(scores)]
    hits, accepted, n = sum(r["rank"] == 1 for r in rankings), int(np.sum(genuine >= threshold)), len(genuine)
    return {**ranking_summary(rankings),
            "tar": round(accepted / n, 3), "threshold": round(float(threshold), 4),
            "rank1_ci": [round(x, 3) for x in wilson_interval(hits, n)],
            "tar_ci": [round(x, 3) for x in wilson_interval(accepted, n)],
            "mean_similarity_ci": [round(x, 4) for x in bootstrap_interval(genuine)]}
