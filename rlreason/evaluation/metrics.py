"""Benchmark metrics from per-sample correctness and answer votes: pass@k, maj@k, by group.

pass@k uses the unbiased estimator of Chen et al. 2021 (Codex paper): with n samples of
which c are correct, pass@k = 1 - C(n-c, k) / C(n, k), the probability that a random
k-subset holds a correct sample. Averaging "any of the first k correct" instead is
biased and noisy; the estimator uses all n samples for every k. pass@1 is the mean
per-sample accuracy.

maj@k is majority voting (self-consistency) over the FIRST k samples' final answers.
Samples vote with an answer-cluster id (equivalent answers share one, see
`rlreason.evaluation.grading`); samples with no readable answer abstain. The cluster with the most
votes wins, ties go to the cluster that occurs first, and the problem counts as solved
if the first sample of the winning cluster is correct. No votes at all is a miss.

Which k: every k from 1 to n when n <= 8, else the powers of two below n plus n itself
(n=64 -> 1, 2, 4, 8, 16, 32, 64), so a summary stays readable at large n.

Everything here is pure: lists in, numbers out, no grading and no I/O.
"""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["aggregate", "default_ks", "group_metrics", "maj_at_k", "majority_vote", "pass_at_k"]

ALL_K_UP_TO = 8


def default_ks(n: int) -> list[int]:
    """The k values reported for n samples per problem (see the module docstring)."""
    if n < 1:
        raise ValueError(f"n must be >= 1 samples per problem, got {n}")
    if n <= ALL_K_UP_TO:
        return list(range(1, n + 1))
    ks = []
    k = 1
    while k < n:
        ks.append(k)
        k *= 2
    return [*ks, n]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which equals the ratio of binomials
    without forming huge integers.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_vote(votes: Sequence[int | None], k: int) -> int | None:
    """Index of the winning sample among the first k, or None when all of them abstain.

    votes[i] is sample i's answer-cluster id (None: no answer). The winner is the cluster
    with the most votes (ties: the cluster seen first); its first sample is returned.
    """
    counts: dict[int, int] = {}
    first: dict[int, int] = {}
    for i, v in enumerate(votes[:k]):
        if v is None:
            continue
        counts[v] = counts.get(v, 0) + 1
        first.setdefault(v, i)
    if not counts:
        return None
    best = max(counts.values())
    winner = min((c for c, m in counts.items() if m == best), key=first.__getitem__)
    return first[winner]


def maj_at_k(votes: Sequence[int | None], correct: Sequence[bool], k: int) -> bool:
    """Whether majority voting over the first k samples picks a correct answer."""
    if not 1 <= k <= len(votes):
        raise ValueError(f"maj_at_k: need 1 <= k <= {len(votes)} samples, got k={k}")
    winner = majority_vote(votes, k)
    return winner is not None and bool(correct[winner])


def aggregate(
    correct: Sequence[Sequence[bool]],
    votes: Sequence[Sequence[int | None]],
    ks: Sequence[int],
) -> dict[str, float]:
    """Mean pass@k and maj@k over problems: {"pass@1": ..., "pass@2": ..., "maj@1": ...}.

    correct[p][i] / votes[p][i]: sample i of problem p. Every problem needs >= max(ks)
    samples. No problems -> {} (nothing to average).
    """
    if len(correct) != len(votes):
        raise ValueError(f"aggregate: {len(correct)} problems of correctness but {len(votes)} of votes")
    if not correct:
        return {}
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"pass@{k}"] = sum(pass_at_k(len(c), sum(map(bool, c)), k) for c in correct) / len(correct)
    for k in ks:
        metrics[f"maj@{k}"] = sum(maj_at_k(v, c, k) for c, v in zip(correct, votes)) / len(correct)
    return metrics


def _sort_key(value: str) -> tuple[int, float, str]:
    """Numeric values in numeric order (MATH levels 1..5), then the rest alphabetically."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def group_metrics(
    groups: Sequence[dict[str, str]],
    correct: Sequence[Sequence[bool]],
    votes: Sequence[Sequence[int | None]],
    ks: Sequence[int],
    group_by: Sequence[str],
) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics per value of each grouping field: {field: {value: {"n_problems": .., "pass@1": ..}}}.

    groups[p] maps each field name to problem p's value (as a string). Fields or values a
    problem lacks are skipped for that problem.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for field in group_by:
        members: dict[str, list[int]] = {}
        for p, g in enumerate(groups):
            if field in g:
                members.setdefault(g[field], []).append(p)
        out[field] = {
            value: {"n_problems": len(idx),
                    **aggregate([correct[i] for i in idx], [votes[i] for i in idx], ks)}
            for value, idx in sorted(members.items(), key=lambda kv: _sort_key(kv[0]))
        }
    return out
