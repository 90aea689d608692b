"""Named extension points whose implementations live above the config layer.

The config validates `rollout.backend` and `sft.loss` when a recipe loads, before anything
heavy, but the implementations sit in higher layers (a vLLM engine, the SFT loop) that the
config may not import. So a registry here knows each built-in by name and by the
`module:attribute` that implements it, and imports it only when it is used: the pattern of
Python entry points. A name of the form `module:attribute` is a user's own implementation
(imported by plugins.py, the same rule as rewards and losses) and is registered on first use.

    from rlreason.registry import BACKENDS
    BACKENDS.register("mine", "my_package.engine:make")   # or: rollout.backend: my_package.engine:make
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from .plugins import import_user_module, resolve_attribute


def import_callable(path: str, field: str) -> Any:
    """The callable at `module:attribute` (sys.path, then the working directory: plugins.py);
    a failure names the recipe `field`."""
    module, _, attr = path.partition(":")
    try:
        obj = resolve_attribute(import_user_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{field} {path!r}: cannot import it ({e})") from e
    if not callable(obj):
        raise ValueError(f"{field} {path!r}: {type(obj).__name__} is not callable")
    return obj


def check_name(name: str, names: list[str], *, what: str, field: str, add: Callable[[str, Any], Any],
               how: str) -> str:
    """The one rule for a registry-backed recipe field: a registered `name` passes; a
    `module:attribute` is imported and handed to `add(name, obj)`; anything else raises with
    the registered names, the nearest ones, and `how` to add one."""
    if name in names:
        return name
    if ":" in name:
        add(name, import_callable(name, field))
        return name
    near = difflib.get_close_matches(name, names, n=2, cutoff=0.5)
    raise ValueError(f"{name!r} is not a registered {what} ({', '.join(names)})"
                     + (f"; did you mean {' or '.join(near)}?" if near else "") + f"; {how}")


class Registry:
    """Names -> implementations, resolved lazily; errors name the recipe field."""

    def __init__(self, field: str, what: str, builtins: dict[str, str],
                 how: str = "name yours 'module:attribute' or add it with rlreason.registry") -> None:
        self.field, self.what, self.how = field, what, how
        self._paths: dict[str, str] = dict(builtins)  # name -> "module:attribute", not imported yet
        self._objects: dict[str, Any] = {}

    def register(self, name: str, impl: str | Callable[..., Any]) -> None:
        """Add `name`: an object, or a `module:attribute` path imported on first use."""
        if isinstance(impl, str):
            self._paths[name] = impl
            self._objects.pop(name, None)
        else:
            self._objects[name] = impl

    def register_unique(self, name: str, obj: Callable[..., Any]) -> None:
        """Register `obj` as `name` unless another implementation holds the name (a built-in
        path counts before it is imported); the same one again (a module reload) is fine."""
        def where(o: Any) -> str:
            return f"{getattr(o, '__module__', None)}:{getattr(o, '__qualname__', repr(o))}"

        held = where(self._objects[name]) if name in self._objects else self._paths.get(name)
        if held is not None and held != where(obj):
            raise ValueError(f"{self.what} {name!r} is already registered to {held}")
        self._objects[name] = obj

    def names(self) -> list[str]:
        return list(dict.fromkeys([*self._paths, *self._objects]))

    def check(self, name: str) -> str:
        """`name` if registered; a `module:attribute` is imported now and registered under
        itself; anything else raises with the registered names and the nearest ones."""
        return check_name(name, self.names(), what=self.what, field=self.field, add=self._objects.__setitem__,
                          how=self.how)

    def get(self, name: str) -> Any:
        """The implementation, imported on first use."""
        self.check(name)
        if name not in self._objects:
            self._objects[name] = import_callable(self._paths[name], self.field)
        return self._objects[name]


#: rollout backends: `factory(cfg: RolloutConfig, ctx: rollout.engine.EngineContext) -> RolloutEngine`
BACKENDS = Registry("rollout.backend", "rollout backend", {
    "hf": "rlreason.rollout.hf:from_config",
    "vllm": "rlreason.rollout.vllm:from_config",
    "server": "rlreason.rollout.remote:from_config",
})

#: rewards: `fn(completion, problem, **kwargs) -> float`, or a group reward (`fn.scope = "group"`);
#: built-ins register themselves with rewards.register_reward when their module is imported
REWARDS = Registry("rewards[].name", "reward", {
    "math": "rlreason.rewards.math:math_reward",
    "exact_match": "rlreason.rewards.basic:exact_match_reward",
    "format": "rlreason.rewards.basic:format_reward",
    "overlong": "rlreason.rewards.overlong:overlong_reward",
    "majority_vote": "rlreason.rewards.label_free:majority_vote_reward",
    "urpa": "rlreason.rewards.label_free:urpa_reward",
    "reasoning_gym": "rlreason.rewards.reasoning_gym:reasoning_gym_reward",
}, how="name yours 'module:function' or register it with @rlreason.rewards.register_reward")

#: SFT losses: `loss(logits [N,V], targets [N], cfg: SFTConfig, generator) -> (loss, metrics)`
SFT_LOSSES = Registry("sft.loss", "SFT loss", {
    "sft": "rlreason.algos.otr:sft_loss_from_config",
    "otr": "rlreason.algos.otr:otr_loss_from_config",
})

#: environments (rollout/environment.py): classes made per episode as `cls(tokenizer, **env.kwargs)`
ENVIRONMENTS = Registry("env.name", "environment", {
    "tools": "rlreason.rollout.tool_env:ToolEnv",
})

#: tools of the `tools` environment: `tool(arguments, **tool_kwargs) -> str` (rollout/tools.py)
TOOLS = Registry("env.kwargs.tools", "tool", {
    "calculator": "rlreason.rollout.tools:calculator",
    "python": "rlreason.rollout.tools:python",
})
