"""Multi-turn rollouts: episodes of model turns and environment observations, token exact.

Each episode keeps three lists in step: the token ids after the prompt, their log-probs and
a mask (1: the model sampled it, 0: the environment inserted it). A model turn's tokens are
appended exactly as the engine sampled them; an observation is tokenised on its own and
appended (the transcript is never decoded and re-tokenised, which could merge tokens across
the boundary and train on tokens the model never produced). The next turn is sampled with
the whole episode so far as its prompt, so any engine serves it unchanged (vLLM's prefix
cache reuses the shared prefix; the hf engine recomputes it).

An episode ends when the model ends a turn with EOS or a stop token, when the environment
says so (`done`), or at a limit: `max_turns` model turns, or `max_total_tokens` tokens after
the prompt (model and observation tokens together). Ended by a limit it is `truncated`
(finish_reason "length"), which `algo.mask_truncated_completions` can leave out of the loss.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..types import Completion, Problem, SamplingParams
from .environment import EnvFactory, Environment

INFO_KEYS = ("turns", "tool_calls", "tool_errors", "truncated", "env_reward")


@dataclass
class _Episode:
    problem: Problem
    prompt: list[int]
    env: Environment
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    info: dict[str, float] = field(default_factory=lambda: dict.fromkeys(INFO_KEYS, 0.0))
    finish: str | None = None  # set when the episode ends
    version: int | None = None  # the oldest policy version among its turns (asynchronous rollouts)

    def add(self, ids: list[int], logprobs: list[float] | None, model: bool) -> None:
        self.tokens += ids
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.mask += [int(model)] * len(ids)

    def end(self, reason: str, truncated: bool = False) -> None:
        self.finish = reason
        self.info["truncated"] = float(truncated)

    def completion(self) -> Completion:
        return Completion(prompt_token_ids=self.prompt, token_ids=self.tokens, logprobs=self.logprobs,
                          finish_reason=self.finish or "length", loss_mask=self.mask, info=dict(self.info),
                          policy_version=self.version)


def _stop_ids(engine: Any, tokenizer: Any, sampling: SamplingParams) -> set[int]:
    ids = set(getattr(engine, "eos_ids", None) or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids | set(sampling.stop_token_ids)


def run_episodes(engine: Any, tokenizer: Any, make_env: EnvFactory, problems: list[Problem],
                 prompts: list[list[int]], n: int, sampling: SamplingParams, *, max_turns: int,
                 max_total_tokens: int) -> list[list[Completion]]:
    """`n` episodes per problem, grouped per problem like `engine.generate`'s output.
    `sampling.max_tokens` bounds each model turn; the episode limits bound the whole."""
    episodes = [_Episode(p, list(ids), make_env()) for p, ids in zip(problems, prompts) for _ in range(n)]
    for e in episodes:
        e.env.reset(e.problem)
    env_stops = tuple(getattr(episodes[0].env, "stop", ())) if episodes else ()
    stops = tuple(dict.fromkeys((*sampling.stop, *env_stops)))  # a turn also ends at a tool call
    final = _stop_ids(engine, tokenizer, sampling)
    calls = 0  # generate calls so far: with a seed, each gets its own, derived from it
    while True:
        active = [e for e in episodes if e.finish is None]
        if not active:
            break
        by_budget: dict[int, list[_Episode]] = defaultdict(list)
        for e in active:
            by_budget[min(sampling.max_tokens, max_total_tokens - len(e.tokens))].append(e)
        for budget, group in sorted(by_budget.items()):
            seed = None if sampling.seed is None else sampling.seed + 7_919 * calls
            calls += 1
            sp = dataclasses.replace(sampling, max_tokens=budget, stop=stops, seed=seed,
                                     min_tokens=min(sampling.min_tokens, budget))
            outs = engine.generate([e.prompt + e.tokens for e in group], 1, sp)
            for e, (c,) in zip(group, outs):
                _advance(e, c, tokenizer, final, env_stops, max_turns, max_total_tokens)
    return [[e.completion() for e in episodes[i * n : (i + 1) * n]] for i in range(len(problems))]


def _advance(e: _Episode, c: Completion, tokenizer: Any, final: set[int], env_stops: tuple[str, ...],
             max_turns: int, max_total_tokens: int) -> None:
    """Append one model turn, let the environment answer, end the episode or insert the observation."""
    e.add(list(c.token_ids), list(c.logprobs), model=True)
    e.info["turns"] += 1
    if c.policy_version is not None:
        e.version = c.policy_version if e.version is None else min(e.version, c.policy_version)
    text = tokenizer.decode(c.token_ids, skip_special_tokens=True)
    result = e.env.step(text)
    for k, v in result.info.items():
        e.info[k] = e.info.get(k, 0.0) + float(v)
    if result.reward is not None:
        e.info["env_reward"] += float(result.reward)
    # the model ended its turn itself: an EOS we know of, or any stop that was not the
    # environment's (an engine's own EOS ids, e.g. vLLM's from generation_config, or a
    # recipe stop string)
    ended_by_model = c.finish_reason == "stop" and bool(c.token_ids) and (
        c.token_ids[-1] in final or not any(s in text for s in env_stops))
    if ended_by_model or result.done:
        e.end("length" if c.finish_reason == "length" else "stop")
        return
    if e.info["turns"] >= max_turns:
        e.end("length", truncated=True)  # the model asked for more (a call) than the turns allow
        return
    obs = tokenizer(result.observation, add_special_tokens=False)["input_ids"] if result.observation else []
    if len(e.tokens) + len(obs) >= max_total_tokens:
        e.end("length", truncated=True)  # no room for the observation and another turn
        return
    e.add(obs, None, model=False)


def episode_generator(engine: Any, tokenizer: Any, make_env: EnvFactory | None, *, max_turns: int,
                      max_total_tokens: int) -> Callable[[list[Problem], list[list[int]], int, SamplingParams],
                                                         list[list[Completion]]]:
    """`generate(problems, prompts, n, sampling)`: episodes with an environment, else the
    engine's single completions; what the trainer and the evaluation call."""
    if make_env is None:
        return lambda problems, prompts, n, sampling: engine.generate(prompts, n, sampling)
    return lambda problems, prompts, n, sampling: run_episodes(
        engine, tokenizer, make_env, problems, prompts, n, sampling, max_turns=max_turns,
        max_total_tokens=max_total_tokens)


def episode_metrics(completions: list[Completion]) -> dict[str, float]:
    """Means over episodes: env/turns, env/tool_calls, env/tool_errors, env/truncated (the
    fraction ended by a limit), and any counter an environment reported; {} without episodes."""
    infos = [c.info for c in completions if c.info is not None]
    if not infos:
        return {}
    keys = dict.fromkeys(k for i in infos for k in i)
    return {f"env/{k}": sum(i.get(k, 0.0) for i in infos) / len(infos) for k in keys}


def with_env_rewards(totals: list[float], raw: dict[str, list[float]],
                     completions: list[Completion]) -> tuple[list[float], dict[str, list[float]]]:
    """The recipe's reward totals plus what the environment returned along each episode
    (logged as rewards/env when any episode got one)."""
    env = [(c.info or {}).get("env_reward", 0.0) for c in completions]
    if not any(env):
        return list(totals), raw
    return [t + r for t, r in zip(totals, env)], {**raw, "env": env}
