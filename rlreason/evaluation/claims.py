"""Claims with their uncertainty: a paired difference between two arms over seeds, its 95%
bootstrap confidence interval, and the verdict the interval supports.

Why paired: each seed gives both arms the same warm start, data order and evaluation set,
so seed-to-seed variation (which on a tiny model dwarfs most method effects) cancels in
the per-seed difference. Why a percentile bootstrap over seeds: with 8-16 seeds and
bounded, often skewed accuracies, a t-interval's normality is a guess; resampling the
observed differences assumes only that seeds are independent draws.

The verdict follows from the interval and nothing else: `reproduced` when it lies above 0
(the treatment is better), `not reproduced` when it lies below 0, `inconclusive` when it
contains 0. `inconclusive` is a result, not a failure: it says the experiment could not
tell the arms apart at its size.

Everything here is pure: numbers in, numbers out, no I/O.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

__all__ = ["bootstrap_ci", "paired_claim", "verdict"]

MIN_SEEDS = 2


def bootstrap_ci(values: Sequence[float], *, level: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement)."""
    xs = [float(v) for v in values]
    if len(xs) < MIN_SEEDS:
        raise ValueError(f"bootstrap_ci: need at least {MIN_SEEDS} values, got {len(xs)}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    rng = random.Random(seed)
    n = len(xs)
    means = sorted(sum(rng.choices(xs, k=n)) / n for _ in range(resamples))
    lo_i = int((1 - level) / 2 * resamples)
    hi_i = min(resamples - 1, int((1 + level) / 2 * resamples))
    return means[lo_i], means[hi_i]


def verdict(ci: tuple[float, float]) -> str:
    """What an interval of (treatment - control) supports."""
    lo, hi = ci
    if lo > 0:
        return "reproduced"
    if hi < 0:
        return "not reproduced"
    return "inconclusive"


def paired_claim(claim: str, metric: str, treatment: str, control: str,
                 by_seed: dict[Any, dict[str, float]], **ci_kwargs: Any) -> dict[str, Any]:
    """One entry of a results file's `claims` list. `by_seed[seed][arm]` is the metric of
    `arm` on that seed; only seeds where both arms ran count (the others are named)."""
    paired = {s: arms for s, arms in by_seed.items() if treatment in arms and control in arms}
    if len(paired) < MIN_SEEDS:
        raise ValueError(f"claim {claim!r}: {len(paired)} seeds hold both {treatment!r} and {control!r}; "
                         f"need at least {MIN_SEEDS}")
    diffs = [paired[s][treatment] - paired[s][control] for s in sorted(paired, key=str)]
    ci = bootstrap_ci(diffs, **ci_kwargs)
    return {
        "claim": claim, "metric": metric, "arms": [treatment, control], "n_seeds": len(diffs),
        "diff_mean": sum(diffs) / len(diffs), "diff_by_seed": diffs, "ci95": list(ci),
        "verdict": verdict(ci),
        "seeds_missing_an_arm": sorted(str(s) for s in by_seed if s not in paired),
    }
