"""DAPO's dynamic sampling (arXiv 2503.14476): a group whose rewards are all equal has
advantage 0 under any group baseline and teaches nothing, so it is dropped and more prompts
are sampled until the step holds `prompts` informative groups, or `max_rounds` rounds were
drawn. Every prompt drawn advances the data cursor, so a resumed run draws what comes next.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..sharding import rank_share
from ..types import Completion, Problem
from .guidance import gather_all


@dataclass
class Groups:
    """Sampled groups on this process: prompts, G completions each (in prompt order), their
    total rewards and each reward's raw scores."""

    problems: list[Problem]
    completions: list[Completion]
    rewards: list[float]
    raw: dict[str, list[float]] = field(default_factory=dict)
    timeouts: int = 0  # timed-out reward calls over every process

    def group(self, i: int, G: int) -> tuple:
        sl = slice(i * G, (i + 1) * G)
        return self.problems[i], self.completions[sl], self.rewards[sl], {k: v[sl] for k, v in self.raw.items()}

    def __add__(self, other: Groups) -> Groups:
        return Groups(self.problems + other.problems, self.completions + other.completions,
                      self.rewards + other.rewards, {k: v + other.raw[k] for k, v in self.raw.items()},
                      self.timeouts + other.timeouts)

    @classmethod
    def of(cls, groups: list[tuple]) -> Groups:
        return cls([g[0] for g in groups], [c for g in groups for c in g[1]], [r for g in groups for r in g[2]],
                   {k: [x for g in groups for x in g[3][k]] for k in (groups[0][3] if groups else {})})


def dynamic_batch(first: Groups, sample: Callable[[], Groups], cfg, accelerator
                  ) -> tuple[Groups, Groups, dict[str, float]]:
    """(the groups to train on, every group sampled, metrics). `first` is the step's first
    round, `sample()` draws another (cfg: the recipe: train.prompts_per_step, algo.num_generations,
    algo.dynamic_sampling_max_rounds) (every process calls it alike). Each round's
    informative groups are gathered from every process in rank order, so all processes
    agree on the kept list, trim it to a multiple of the process count and take equal
    shares. When fewer groups than processes were kept the first round is trained as it is,
    as without dynamic sampling (`dynamic/groups_kept` then counts its informative groups)."""
    W, prompts, group = accelerator.num_processes, cfg.train.prompts_per_step, cfg.algo.num_generations
    max_rounds = cfg.algo.dynamic_sampling_max_rounds
    seen, kept, rounds, groups, in_first = first, [], 0, first, 0
    while True:
        rounds += 1
        mine = [g for g in (groups.group(i, group) for i in range(len(groups.problems))) if max(g[2]) > min(g[2])]
        kept += gather_all(mine, W)
        in_first = in_first or len(kept)
        if len(kept) >= prompts or rounds >= max_rounds:
            break
        groups = sample()
        seen = seen + groups
    kept = kept[: min(len(kept), prompts) // W * W]
    metrics = {"dynamic/groups_sampled": rounds * prompts, "dynamic/groups_kept": len(kept) or in_first,
               "dynamic/rounds": rounds}
    return (Groups.of(rank_share(kept, accelerator)) if kept else first), seen, metrics
