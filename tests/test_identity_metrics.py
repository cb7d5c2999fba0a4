"""Identity metrics on hand-made embeddings and scores: cosines, centres, rankings, the one FAR rule."""

from __future__ import annotations

import numpy as np
import pytest

from lora_audit.identity.metrics import (
    bootstrap_interval,
    centres,
    consistency,
    far_at,
    pair_scores,
    rank1,
    rank_of,
    ranking,
    ranking_summary,
    roc_auc,
    score_matrix_summary,
    set_scores,
    tar_at_far,
    threshold_at_far,
    unit_rows,
    wilson_interval,
)

UP = np.inf
DISTINCT = np.array([0.3, 0.1, 0.5, 0.2, 0.4])  # n = 5, unsorted on purpose
TIED = np.array([0.5, 0.1, 0.9, 0.5, 0.5])


def _above(x: float) -> float:
    return float(np.nextafter(x, UP))


@pytest.mark.parametrize("impostors, far, expected", [
    (DISTINCT, 0.0, _above(0.5)),  # nobody may reach it: just above the highest
    (DISTINCT, 0.2, _above(0.4)),  # 1/n: only 0.5 may reach it
    (DISTINCT, 0.3, _above(0.4)),  # between grid points: still one
    (DISTINCT, float(np.nextafter(0.4, 0)), _above(0.4)),  # just under 2/5: still one, not two
    (DISTINCT, 0.4, _above(0.3)),
    (DISTINCT, 0.8, _above(0.1)),
    (DISTINCT, 1.0, -np.inf),  # everything may: accept everything
    (TIED, 0.0, _above(0.9)),
    (TIED, 0.2, _above(0.5)),  # 1/n: only 0.9
    (TIED, 0.4, _above(0.5)),  # two allowed, but the three ties at 0.5 go together: still just 0.9
    (TIED, 0.7, _above(0.5)),  # three allowed (between grid points 0.6 and 0.8)
    (TIED, 0.8, _above(0.1)),  # four allowed: everything above 0.1
    (TIED, 1.0, -np.inf),
    (np.full(4, 0.3), 0.5, _above(0.3)),  # all tied: two allowed, none can be let through alone
    (np.full(4, 0.3), 1.0, -np.inf),
])
def test_threshold_at_far_on_constructed_samples(impostors, far, expected):
    threshold = threshold_at_far(impostors, far)
    assert threshold == expected
    assert far_at(impostors, threshold) <= far
    if threshold > -np.inf:  # the lowest such threshold: one float lower lets too many through
        assert far_at(impostors, np.nextafter(threshold, -UP)) > far


def test_far_at_counts_scores_at_or_above():
    assert far_at(TIED, 0.5) == 0.8 and far_at(TIED, _above(0.5)) == 0.2 and far_at(TIED, 0.9) == 0.2
    assert far_at(TIED, -1) == 1.0 and far_at(TIED, 2) == 0.0 and far_at(TIED, 0.1) == 1.0
    hundred = np.linspace(0, 1, 100)
    assert far_at(hundred, threshold_at_far(hundred, 0.29)) == 0.29  # 0.29 * 100 is 28.999...: 29 allowed


def test_threshold_at_far_rejects_bad_input():
    for far in (-0.1, 1.1):
        with pytest.raises(ValueError, match="far"):
            threshold_at_far(DISTINCT, far)
    with pytest.raises(ValueError, match="empty"):
        threshold_at_far(np.empty(0), 0.1)
    with pytest.raises(ValueError, match="empty"):
        far_at([], 0.1)


def test_accepting_at_the_threshold_is_the_same_as_the_far_being_met_on_random_samples():
    rng = np.random.default_rng(0)
    for case in range(200):
        n = int(rng.integers(1, 60))
        if case % 2:  # coarse grid: many ties
            impostors = rng.integers(0, 6, size=n) / 5
        else:
            impostors = rng.normal(size=n)
        k = int(rng.integers(0, n + 1))
        far = float(rng.choice([rng.uniform(), k / n, np.nextafter(k / n, 0), np.nextafter(k / n, 1), 0.0, 1.0]))
        far = min(max(far, 0.0), 1.0)
        threshold = threshold_at_far(impostors, far)
        probes = np.concatenate([impostors, np.nextafter(impostors, UP), np.nextafter(impostors, -UP),
                                 rng.normal(size=20), [threshold, -1e9, 1e9]])
        for s in probes:
            assert (s >= threshold) == (far_at(impostors, s) <= far), (case, n, far, s)
        if threshold > -np.inf:
            assert far_at(impostors, np.nextafter(threshold, -UP)) > far  # nothing lower meets the FAR
            assert np.nextafter(threshold, -UP) in impostors  # just above an impostor score
        else:
            assert far == 1.0  # only a FAR of 1 lets every impostor through


def test_tar_at_far_by_hand():
    impostors = np.arange(1, 11) / 10  # 0.1 .. 1.0
    genuine = np.array([0.95, 0.9, 0.85, 0.8, 0.5])
    # FAR 0.2: two impostors (0.9, 1.0) may reach the threshold, 0.8 may not: accept > 0.8.
    assert tar_at_far(genuine, impostors, 0.2) == 3 / 5
    assert tar_at_far(genuine, impostors, 0.25) == 3 / 5  # between grid points
    assert tar_at_far(genuine, impostors, 0.3) == 4 / 5  # 0.8 now accepted
    assert tar_at_far(genuine, impostors, 0.0) == 0.0  # above 1.0
    assert tar_at_far(np.array([1.0, 0.99]), impostors, 0.1) == 1.0  # one impostor allowed: above 0.9
    assert tar_at_far(np.array([1.0, 0.9]), impostors, 0.1) == 1 / 2  # 0.9 ties an impostor rejected
    assert tar_at_far(genuine, impostors, 1.0) == 1.0


def test_roc_auc_against_a_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        genuine = rng.integers(0, 6, size=int(rng.integers(1, 30))) / 5
        impostor = rng.integers(0, 6, size=int(rng.integers(1, 30))) / 5
        wins = (genuine[:, None] > impostor[None, :]).sum() + 0.5 * (genuine[:, None] == impostor[None, :]).sum()
        assert roc_auc(genuine, impostor) == pytest.approx(wins / (len(genuine) * len(impostor)), abs=1e-12)
    assert roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.85])) == 0.75
    assert roc_auc(np.array([0.5]), np.array([0.5])) == 0.5


def test_unit_rows_and_consistency_on_hand_made_vectors():
    assert np.allclose(unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]])), [[0.6, 0.8], [0.0, 0.0]])
    # cosines: (0,1) 0, (0,2) 1, (1,2) 0 -> mean 1/3; the lengths do not matter.
    assert consistency(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])) == pytest.approx(1 / 3)
    assert consistency(np.array([[2.0, 0.0], [0.0, 3.0], [5.0, 0.0]])) == pytest.approx(1 / 3)
    assert consistency(np.tile([[0.6, 0.8]], (4, 1))) == pytest.approx(1.0)
    assert consistency(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        consistency(np.array([[1.0, 0.0]]))


def test_centres_set_scores_rank_of_and_ranking():
    embeddings = np.array([[1.0, 0.0], [0.0, 5.0], [0.0, 2.0]])  # label 7: two directions; label 9: up
    got = centres(embeddings, np.array([7, 7, 9]))
    assert np.allclose(got, [[2 ** -0.5, 2 ** -0.5], [0.0, 1.0]])
    assert np.allclose(centres(embeddings, np.array([7, 7, 9]), order=[9, 7]), got[::-1])
    with pytest.raises(ValueError, match="label 3"):
        centres(embeddings, np.array([7, 7, 9]), order=[3])
    images = np.array([[1.0, 0.0], [0.0, 2.0]])
    scores = set_scores(images, np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))  # [3]
    assert np.allclose(scores, [0.5, 0.5, 2 ** -0.5])
    assert rank_of(scores, 2) == 1 and rank_of(scores, 0) == 2 and rank_of(scores, 1) == 2  # ties share a rank
    assert rank_of(np.array([0.5, 0.5]), 1) == 1
    assert ranking(np.array([0.2, 0.7, 0.4]), 0) == {"similarity": 0.2, "best_impostor": 0.7, "rank": 3}
    assert ranking(np.array([0.2]), 0)["best_impostor"] == -np.inf


def test_pair_scores_each_unordered_pair_once():
    embeddings = np.array([[2.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    genuine, impostor = pair_scores(embeddings, np.array([0, 0, 1, 2]))
    assert genuine == pytest.approx([1.0])  # (0, 1)
    assert impostor == pytest.approx([2 ** -0.5, 0, 2 ** -0.5, 0, 2 ** -0.5])  # (0,2) (0,3) (1,2) (1,3) (2,3)
    with pytest.raises(ValueError, match="labels"):
        pair_scores(embeddings, np.array([0, 1]))


def test_rank1_identification_in_groups():
    labels, image_index = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    embeddings = np.array([[1.0, 0.0], [0.1, 1.0], [0.0, 1.0], [0.0, 1.0]])  # identity 0's probe looks like 1
    assert rank1(embeddings, labels, image_index) == 0.5
    assert rank1(embeddings, labels, image_index, gallery_size=1) == 1.0  # alone in its gallery


def test_ranking_summary_on_a_hand_made_list():
    rankings = [{"similarity": 0.5, "best_impostor": 0.2, "rank": 1},
                {"similarity": 0.1, "best_impostor": 0.3, "rank": 3},
                {"similarity": 0.3, "best_impostor": 0.3, "rank": 1}]
    assert ranking_summary(rankings) == {"mean_similarity": 0.3, "mean_best_impostor": 0.2667, "rank1": 0.667,
                                         "mean_rank": 1.67, "n": 3}
    without = ranking_summary([{"similarity": r["similarity"], "rank": r["rank"]} for r in rankings])
    assert without == {"mean_similarity": 0.3, "rank1": 0.667, "mean_rank": 1.67, "n": 3}
    with pytest.raises(ValueError):
        ranking_summary([])


def test_score_matrix_summary_by_hand():
    scores = np.array([[0.9, 0.1, 0.2],
                       [0.3, 0.4, 0.5],   # victim 1: candidate 2 scores higher, rank 2
                       [0.0, 0.1, 0.6]])
    # impostors 0.1 0.2 0.3 0.5 0.0 0.1; FAR 1/6: only 0.5 may reach the threshold -> just above 0.3
    s = score_matrix_summary(scores, far=1 / 6)
    intervals = {k: s.pop(k) for k in ("rank1_ci", "tar_ci", "mean_similarity_ci")}
    assert s == {"mean_similarity": round((0.9 + 0.4 + 0.6) / 3, 4), "mean_best_impostor": round((0.2 + 0.5 + 0.1) / 3, 4),
                 "rank1": 0.667, "mean_rank": 1.33, "n": 3, "tar": 1.0, "threshold": 0.3}
    assert intervals["rank1_ci"] == [round(x, 3) for x in wilson_interval(2, 3)]
    assert intervals["tar_ci"] == [round(x, 3) for x in wilson_interval(3, 3)]
    assert 0.4 <= intervals["mean_similarity_ci"][0] < 0.6333 < intervals["mean_similarity_ci"][1] <= 0.9
    assert score_matrix_summary(scores, far=0.0)["tar"] == round(2 / 3, 3)  # above 0.5: 0.4 is rejected
    assert score_matrix_summary(scores, far=1.0)["threshold"] == -np.inf


def test_wilson_interval_against_a_published_value_and_the_edges():
    low, high = wilson_interval(19, 20)  # p = 0.95, n = 20: (0.7639, 0.9911) (Newcombe 1998's method 3)
    assert low == pytest.approx(0.7639, abs=1e-4) and high == pytest.approx(0.9911, abs=1e-4)
    assert wilson_interval(0, 50)[0] == 0 and 0 < wilson_interval(0, 50)[1] < 0.08
    assert wilson_interval(50, 50)[1] == 1 and 0.92 < wilson_interval(50, 50)[0] < 1
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(3)
    small, large = rng.normal(0.4, 0.1, 20), rng.normal(0.4, 0.1, 500)
    for values in (small, large):
        low, high = bootstrap_interval(values)
        assert low < values.mean() < high
    assert np.diff(bootstrap_interval(large)) < np.diff(bootstrap_interval(small)) / 3  # ~ 1 / sqrt(n)
    assert bootstrap_interval(small) == bootstrap_interval(small)  # a fixed seed
    assert bootstrap_interval(np.full(10, 0.3)) == (pytest.approx(0.3), pytest.approx(0.3))
