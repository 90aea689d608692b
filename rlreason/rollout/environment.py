"""The environment contract: what a multi-turn rollout talks to.

A rollout with an environment is a conversation. The model writes a turn; the environment
reads it and answers with an observation (a tool's output, a game's next state) or ends
the episode; the model writes the next turn after the observation; and so on until the
environment ends it, the model ends its turn with EOS, or a limit is hit. Only the model's
tokens are trained on; everything the environment inserts is context (rollout/episodes.py
keeps the two apart token by token).

An environment is a class, one instance per episode, constructed with the run's tokenizer
and the recipe's `env.kwargs`:

    class Countdown:
        stop = ("</move>",)                    # strings that end a model turn (optional)

        def __init__(self, tokenizer, **kwargs): ...
        def reset(self, problem) -> None: ...  # the problem the episode starts from
        def step(self, turn: str) -> StepResult:
            # `turn`: the text of the model's latest turn
            return StepResult(observation="<state>...</state>")     # or done=True

Registered by name in registry.ENVIRONMENTS (`env.name: tools`) or named by path
(`env.name: my_module:Countdown`). The episode's reward is the recipe's rewards over the
whole transcript (model turns and observations, decoded) plus the sum of the rewards the
environment returned along the way, if any.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..registry import ENVIRONMENTS
from ..types import Problem


@dataclass
class StepResult:
    """The environment's answer to one model turn.

    observation: text inserted after the turn as context, exactly as the model will see it
      (the environment formats it: a chat template's tool message, or plain tags); None or
      "" inserts nothing.
    done: the episode ends after this turn.
    reward: added to the episode's reward (summed over steps); None adds nothing.
    info: counters summed over the episode and logged (`tool_calls`, `tool_errors`, ...).
    """

    observation: str | None = None
    done: bool = False
    reward: float | None = None
    info: dict[str, float] = field(default_factory=dict)


class Environment(Protocol):
    stop: tuple[str, ...]

    def reset(self, problem: Problem) -> None: ...

    def step(self, turn: str) -> StepResult: ...


EnvFactory = Callable[[], Environment]


def env_factory(cfg: Any, tokenizer: Any) -> EnvFactory | None:
    """A function making one environment per episode from the recipe's `env` section
    (`cfg`: EnvConfig), or None when the recipe has no environment."""
    if cfg is None or cfg.name is None:
        return None
    cls = ENVIRONMENTS.get(cfg.name)
    kwargs = dict(cfg.kwargs)

    def make() -> Environment:
        try:
            env = cls(tokenizer, **kwargs)
        except TypeError as e:
            raise ValueError(f"env.kwargs do not fit environment {cfg.name!r}: {e}") from e
        for attr in ("reset", "step"):
            if not callable(getattr(env, attr, None)):
                raise ValueError(f"env.name {cfg.name!r}: an environment needs a {attr}() method")
        return env

    make()  # a bad name or bad kwargs fail here, before any rollout
    return make
