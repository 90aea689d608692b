"""Reward functions written for TRL's GRPOTrainer, used unchanged in a recipe.

Why: many RLVR users already have reward functions in TRL's form, and TRL ships a set of
its own (`trl.rewards`: accuracy, think-format, cosine-scaled, repetition penalty, ...).
Rewriting them would be the bug source; calling them is not. So trl stays a dependency of
rlreason for this, and only this: the trainer, losses and rollouts are rlreason's own.

TRL calls a reward once per batch as `fn(prompts=[...], completions=[...], **columns)`, with
every dataset column as a keyword list, and reads back a list of floats (None: "this reward
does not apply to this sample", which TRL's nansum turns into 0). rlreason calls rewards
once per sample under a time limit (registry.RewardFunction), so the adapter here calls the
TRL function with a batch of one:

  prompts      [problem.prompt]
  completions  [[{"role": "assistant", "content": text}]] (`trl_completions: messages`, what
               TRL passes for conversational data and what its built-ins index), or [text]
  solution     [problem.solution or problem.answer] (TRL's math datasets' column)
  answer       [problem.answer]
  <key>        [problem.metadata[key]] for every metadata field (data.metadata_keys)

and maps None to 0.0. A function that needs `completion_ids` (token ids: TRL's
cosine-scaled, soft-overlong and repetition rewards) is refused when the recipe loads:
rlreason's rewards see the completion's text.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from rlreason.types import Problem

__all__ = ["TRL_PREFIX", "adapt_trl_reward", "resolve_trl_builtin"]

TRL_PREFIX = "trl:"


class TRLRewardError(ValueError):
    """A TRL reward cannot be used: the message says which and why."""


def resolve_trl_builtin(spec: str, kwargs: dict[str, Any]) -> tuple[Callable[..., Any], dict[str, Any]]:
    """`trl:NAME` -> (the function in `trl.rewards`, the kwargs left for each call). A factory
    (`get_*`, e.g. `trl:get_cosine_scaled_reward`) is called with the recipe's kwargs and the
    function it returns is used with none."""
    name = spec[len(TRL_PREFIX):]
    try:
        module = importlib.import_module("trl.rewards")
    except ImportError as e:
        raise TRLRewardError(f"reward {spec!r}: trl is not installed (`pip install trl`)") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        known = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise TRLRewardError(f"reward {spec!r}: trl.rewards has no function {name!r}; it has {known}")
    if name.startswith("get_"):
        try:
            return fn(**kwargs), {}
        except TypeError as e:
            raise TRLRewardError(f"reward {spec!r}: rewards[].kwargs do not fit {name}{inspect.signature(fn)} "
                                 f"({e})") from e
    return fn, kwargs


def _needs_token_ids(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("completion_ids")
    return p is not None and p.default is inspect.Parameter.empty


def adapt_trl_reward(fn: Callable[..., Any], name: str, completions: str = "messages") -> Callable[..., float]:
    """A per-sample `fn(completion, problem, **kwargs)` that calls TRL-style `fn` on a batch of one."""
    if completions not in ("messages", "text"):
        raise TRLRewardError(f"rewards[].trl_completions: {completions!r}; expected 'messages' or 'text'")
    if _needs_token_ids(fn):
        raise TRLRewardError(f"reward {name!r} needs completion_ids (token ids); rlreason's rewards are "
                             "called with the completion's text. Use a text-based reward, or "
                             "rollout.max_completion_length for overlong completions")

    def per_sample(completion: str, problem: Problem, **kwargs: Any) -> float:
        comp: Any = [{"role": "assistant", "content": completion}] if completions == "messages" else completion
        columns = {k: [v] for k, v in (problem.metadata or {}).items()}
        columns.update(solution=[problem.solution or problem.answer], answer=[problem.answer])
        out = fn(prompts=[problem.prompt], completions=[comp], **columns, **kwargs)
        if not isinstance(out, (list, tuple)) or len(out) != 1:
            raise TRLRewardError(f"reward {name!r}: a TRL reward returns one score per completion; for one "
                                 f"completion it returned {out!r}")
        return 0.0 if out[0] is None else out[0]

    per_sample.__name__ = getattr(fn, "__name__", name)
    return per_sample
