"""Guided exploration (POPE): oracle-solution prefixes as hints on problems never solved.

On a problem where no sample of the policy is correct, every GRPO group has reward 0 and
nothing is learned. POPE (Qu, Setlur et al. 2026, arXiv 2601.18779) rolls such problems out
conditioned on a prefix of an oracle solution, given as prompt context and never trained
on, and trains on guided and unguided versions side by side, so the behaviour learned
with the hint transfers to the bare problem.

Here:
  * hardness is measured: a problem is hard when none of `probe_k` samples is correct;
    verdicts go to `<output_dir>/hardness.json` and can be reused (`hardness_file`);
  * the hint is the shortest rung of a ladder of prefix lengths (fractions of the oracle
    solution in tokens, steps or sentences) under which a few samples reach a reward;
    every rung is sampled, a ladder of one rung too; when no rung works, the longest is
    used (the paper leaves this open); `prefix_mode: fixed` takes `fixed_fraction` unprobed;
  * the hint form (`style`): `instruct`, as in the paper, states the problem and the
    partial solution in the user turn and asks the model to study it and continue;
    `prefill` appends the hint to the prompt as the start of the answer (a base model's
    natural continuation; for a chat template the assistant turn begins with it); `auto`
    (default) is instruct for chat-template prompts, prefill for plain ones. Either way
    the hint's tokens are prompt tokens and carry no loss;
  * a batch (`batch: twins`, default, the paper's) holds prompts_per_step // 2 hard
    problems from the guided pool, each as a guided prompt followed by its unguided twin
    (the bare problem), separate groups, 1:1; the pool is cycled when smaller, and once it
    is empty the batch comes from the training stream. `batch: mixed` (ablation: easy and
    hard mixed) holds `guided_ratio` guided prompts and the rest from the whole training
    set;
  * a hard problem whose unguided group earns a reward leaves the guided pool; under
    several processes the step's outcomes are gathered first (every rank keeps the same
    pool), and probing splits the problems over the ranks and gathers the rewards (every
    rank reaches the same verdicts).
"""
from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object

from ..data.templates import resolve_template
from ..types import Problem


def solution_prefix(solution: str, fraction: float, unit: str, tokenizer=None) -> str:
    """The first `fraction` of an oracle solution, cut at a token, step or sentence."""
    if fraction <= 0:
        return ""
    if unit == "tokens":
        ids = tokenizer(solution, add_special_tokens=False)["input_ids"]
        n = max(1, round(len(ids) * fraction))
        return tokenizer.decode(ids[:n])
    if unit == "steps":
        parts = solution.splitlines(keepends=True)
    elif unit == "sentences":
        parts = re.split(r"(?<=[.!?])\s+", solution)
        parts = [p + " " for p in parts[:-1]] + parts[-1:]
    else:
        raise ValueError(f"guidance.prefix_unit: {unit!r}; expected tokens, steps or sentences")
    n = max(1, round(len(parts) * fraction))
    return "".join(parts[:n])


@dataclasses.dataclass
class Guide:
    """The hard pool, each hard problem's hint, and what has been solved since."""

    cfg: Any  # GuidanceConfig
    hints: dict[str, str] = dataclasses.field(default_factory=dict)  # hard problem id -> hint
    pool: list[str] = dataclasses.field(default_factory=list)  # ids still guided
    solved: list[str] = dataclasses.field(default_factory=list)  # solved unguided since start
    cursor: int = 0
    seed: int = 0

    # ------------------------------------------------------------ batches
    def batch(self, problems_by_id: dict[str, Problem], stream, n: int) -> list[Problem]:
        """A step's `n` prompts (the global batch: every process draws the same and keeps
        its share). twins: guided prompt then its unguided twin, pair after pair (a pair
        stays on one rank when the per-rank share is even), the odd slot and an empty
        pool filled from `stream`; mixed: round(guided_ratio * n) guided, the rest from
        `stream`."""
        if self.cfg.batch == "mixed":
            guided = self.take(problems_by_id, round(self.cfg.guided_ratio * n))
            return guided + stream.take(n - len(guided))
        out: list[Problem] = []
        for g in self.take(problems_by_id, n // 2):
            out += [g, problems_by_id[g.id]]
        return out + stream.take(n - len(out))

    def take(self, problems_by_id: dict[str, Problem], k: int) -> list[Problem]:
        """k guided problems, cycling through the pool in a seeded order."""
        if not self.pool or k == 0:
            return []
        out = []
        order = sorted(self.pool)
        random.Random(f"{self.seed}-{self.cursor // max(len(order), 1)}").shuffle(order)
        for _ in range(k):
            pid = order[self.cursor % len(order)]
            self.cursor += 1
            out.append(guided_problem(problems_by_id[pid], self.hints[pid], self.cfg))
        return out

    def refresh(self, problems: list[Problem], rewards: list[float], group: int,
                gather: Callable[[list], list] | None = None) -> list[tuple[str, bool, list[float]]]:
        """Drop from the pool the hard problems whose unguided group earned a reward.

        `gather` (several processes) concatenates every process's facts in rank order, so
        each rank applies the whole step's outcomes and keeps the same pool. Returns the
        (gathered) facts: (problem id, guided, the group's rewards) per prompt."""
        facts = [(p.id, bool(p.metadata.get("guided")), list(rewards[i * group : (i + 1) * group]))
                 for i, p in enumerate(problems)]
        if gather is not None:
            facts = gather(facts)
        if not self.cfg.refresh:
            return facts
        pool = set(self.pool)
        for pid, guided, r in facts:
            if guided or pid not in pool:
                continue
            if max(r) > 0:
                pool.discard(pid)
                self.solved.append(pid)
        self.pool = [pid for pid in self.pool if pid in pool]
        return facts

    def step_metrics(self, problems: list[Problem], rewards: list[float], group: int,
                     num_processes: int) -> dict[str, Any]:
        """Refresh the pool from the whole step's outcomes (gathered over processes, so every
        rank keeps the same pool) and return the step's guidance counters, global too."""
        facts = self.refresh(problems, rewards, group, gather=lambda xs: gather_all(xs, num_processes))
        g = [x for _, guided, r in facts if guided for x in r]
        u = [x for _, guided, r in facts if not guided for x in r]
        return {"guided/frac_prompts": len(g) / (len(g) + len(u)),  # 0: the pool is empty
                "guided/reward": sum(g) / len(g) if g else None,
                "guided/unguided_reward": sum(u) / len(u) if u else None,
                "guided/pool": len(self.pool),
                "guided/solved_unguided": len(self.solved)}

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "solved": self.solved, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool, self.solved, self.cursor = state["pool"], state["solved"], state["cursor"]


def gather_all(items: list, num_processes: int) -> list:
    """Every process's `items`, concatenated in rank order (the same list on every rank)."""
    if num_processes == 1:
        return items
    return gather_object(items)


def resolve_style(style: str, template: str, tokenizer) -> str:
    """`auto` -> `instruct` where prompts go through a chat template (data.template chat,
    or auto with a tokenizer that has one), else `prefill`; other styles unchanged."""
    if style != "auto":
        return style
    return "instruct" if resolve_template(tokenizer, template) == "chat" else "prefill"


def guided_problem(p: Problem, hint: str, cfg) -> Problem:
    """The guided variant of `p`: same id and answer, the hint recorded in metadata."""
    if cfg.style == "auto":
        raise ValueError("guidance.style=auto must be resolved first (resolve_style)")
    meta = {**p.metadata, "guided": True, "hint": hint}
    if cfg.style == "instruct":
        prompt = cfg.instruct_template.replace("{prompt}", p.question).replace("{hint}", hint)
        meta["hint_in_prompt"] = True
        return dataclasses.replace(p, prompt=prompt, messages=None, metadata=meta)
    return dataclasses.replace(p, metadata=meta)


def encode_guided(p: Problem, encode: Callable[[Problem], list[int]], tokenizer) -> list[int]:
    """Prompt token ids of a (possibly guided) problem: with `prefill`, the hint's tokens
    follow the prompt, as the beginning of the answer the model continues."""
    ids = encode(p)
    hint = p.metadata.get("hint") if p.metadata.get("guided") else None
    if hint and not p.metadata.get("hint_in_prompt"):
        ids = ids + tokenizer(hint, add_special_tokens=False)["input_ids"]
    return ids


def scored_text(p: Problem, completion: str) -> str:
    """What the reward reads: the hint counts as part of the answer (it must be right)."""
    if p.metadata.get("guided"):
        return p.metadata["hint"] + completion
    return completion


# ---------------------------------------------------------------- probing


def probe(problems: list[Problem], sample: Callable[[list[Problem], int], list[list[float]]],
          cfg, tokenizer) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Hardness verdicts for every problem, and the hint of each hard one.

    sample(problems, k) -> rewards, k per problem, of the current policy (guided problems
    scored with their hint). A problem is hard when all `probe_k` rewards are 0; its hint
    is the shortest ladder rung under which one of `probe_samples` samples is correct
    (`hint_works` false when none is: the longest rung; fixed mode: `fixed_fraction`,
    not sampled, `hint_works` null). Under several processes `sample` returns the same
    rewards on every rank (see setup_guidance), so every rank calls it as often.
    """
    verdicts: dict[str, dict[str, Any]] = {}
    rewards = sample(problems, cfg.probe_k)
    hard = []
    for p, r in zip(problems, rewards):
        n_ok = sum(1 for x in r if x > 0)
        verdicts[p.id] = {"hard": n_ok == 0, "correct": n_ok, "k": cfg.probe_k}
        if n_ok == 0:
            if not p.solution:
                raise ValueError(f"guidance: hard problem {p.id!r} has no oracle solution "
                                 f"(set data.solution_key or use an answer_extractor that keeps it)")
            hard.append(p)
    hints: dict[str, str] = {}
    fixed = cfg.prefix_mode == "fixed"
    rungs = [cfg.fixed_fraction] if fixed else sorted(cfg.ladder)
    pending = hard
    for frac in rungs:
        if not pending:
            break
        variants = [guided_problem(p, solution_prefix(p.solution, frac, cfg.prefix_unit, tokenizer),
                                   cfg) for p in pending]
        if fixed:  # no search: the hint is not sampled, whether it works is not known
            for p, v in zip(pending, variants):
                hints[p.id] = v.metadata["hint"]
                verdicts[p.id].update(hint_fraction=frac, hint_works=None)
            return verdicts, hints
        rs = sample(variants, cfg.probe_samples)  # every rung, a ladder of one too
        left = []
        for p, v, r in zip(pending, variants, rs):
            hints[p.id] = v.metadata["hint"]  # the longest tried so far if none works
            verdicts[p.id]["hint_fraction"] = frac
            if max(r) > 0:
                verdicts[p.id]["hint_works"] = True
            else:
                left.append(p)
        pending = left
    for p in pending:
        verdicts[p.id]["hint_works"] = False
    return verdicts, hints


def write_verdicts(path: Path, verdicts: dict[str, dict[str, Any]], hints: dict[str, str]) -> None:
    data = {pid: {**v, **({"hint": hints[pid]} if pid in hints else {})} for pid, v in verdicts.items()}
    path.write_text(json.dumps(data, indent=1))


def read_verdicts(path: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"guidance.hardness_file: {p} not found (written by an earlier "
                                f"run as <output_dir>/hardness.json)")
    data = json.loads(p.read_text())
    return data, {pid: v["hint"] for pid, v in data.items() if v.get("hard") and "hint" in v}


def build_guide(cfg, problems: list[Problem], *, template: str, tokenizer, saved: Path, resume: bool,
                sample: Callable[[list[Problem], int], list[list[float]]], is_main: bool, seed: int,
                log: Callable[[str], None]) -> Guide:
    """The run's Guide: hardness verdicts read from `guidance.hardness_file` (or, on resume,
    the run's own `saved` file), else probed now with `sample` (every rank calls it alike)
    and written to `saved` by the main process."""
    g = cfg.model_copy(update={"style": resolve_style(cfg.style, template, tokenizer)})
    ids = {p.id for p in problems}
    source = g.hardness_file or (str(saved) if resume and saved.is_file() else None)
    if source:
        verdicts, hints = read_verdicts(source)
    else:
        verdicts, hints = probe(problems[: g.probe_limit], sample, g, tokenizer)
        if is_main:
            write_verdicts(saved, verdicts, hints)
    hints = {pid: h for pid, h in hints.items() if pid in ids}
    works = sum(1 for pid in hints if verdicts[pid].get("hint_works"))
    tried = "fixed-length hints, not probed" if g.prefix_mode == "fixed" else \
        f"a hint reaches a reward on {works} of them"
    log(f"guidance: {len(hints)} of {len(verdicts)} probed problems are hard "
        f"(0/{g.probe_k} correct); {tried}; hint style {g.style}, batch {g.batch}")
    return Guide(g, hints=hints, pool=sorted(hints), seed=seed)
