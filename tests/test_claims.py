"""Claims: paired differences over seeds, bootstrap intervals, verdicts that follow from them."""
from __future__ import annotations

import random

import pytest

from rlreason.evaluation.claims import bootstrap_ci, paired_claim, verdict


def test_verdict_follows_the_interval():
    assert verdict((0.01, 0.2)) == "reproduced"
    assert verdict((-0.3, -0.02)) == "not reproduced"
    assert verdict((-0.1, 0.1)) == "inconclusive"
    assert verdict((0.0, 0.1)) == "inconclusive"  # touching 0 is not above it


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_seeds():
    rng = random.Random(1)
    few = [0.1 + rng.gauss(0, 0.1) for _ in range(8)]
    many = [0.1 + rng.gauss(0, 0.1) for _ in range(200)]
    lo, hi = bootstrap_ci(few)
    assert lo < sum(few) / len(few) < hi
    lo2, hi2 = bootstrap_ci(many)
    assert hi2 - lo2 < (hi - lo) / 2  # ~1/sqrt(n): 200 seeds give a much narrower interval
    assert lo2 < 0.1 < hi2  # and it covers the true mean
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)  # no spread, no width
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_ci([0.3])


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = random.Random(7)
    hits = 0
    for trial in range(200):
        xs = [rng.gauss(0.05, 0.1) for _ in range(12)]
        lo, hi = bootstrap_ci(xs, resamples=2000, seed=trial)
        hits += lo <= 0.05 <= hi
    assert 0.85 <= hits / 200 <= 0.99  # percentile bootstrap undercovers a little at n=12


def test_paired_claim_pairs_by_seed_and_names_missing_arms():
    by_seed = {s: {"pope": 0.5 + 0.01 * s, "plain": 0.3 + 0.01 * s} for s in range(8)}
    by_seed[8] = {"pope": 0.9}  # the control never ran on seed 8
    c = paired_claim("POPE beats plain GRPO on the hard set", "eval/accuracy", "pope", "plain", by_seed)
    assert c["n_seeds"] == 8 and c["seeds_missing_an_arm"] == ["8"]
    assert c["diff_mean"] == pytest.approx(0.2)
    assert c["ci95"] == pytest.approx([0.2, 0.2])  # the same difference on every seed
    assert c["verdict"] == "reproduced" and c["arms"] == ["pope", "plain"]
    # pairing matters: large seed-to-seed spread, small consistent effect -> still reproduced
    noisy = {s: {"a": v + 0.02, "b": v} for s, v in enumerate([0.1, 0.9, 0.4, 0.7, 0.2, 0.6, 0.3, 0.8])}
    assert paired_claim("a > b", "m", "a", "b", noisy)["verdict"] == "reproduced"
    with pytest.raises(ValueError, match="need at least 2"):
        paired_claim("x", "m", "a", "b", {0: {"a": 1.0, "b": 0.0}})
