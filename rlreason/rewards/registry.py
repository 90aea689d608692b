"""Naming, loading and safely calling reward functions.

A reward function is any ``fn(completion: str, problem: Problem, **kwargs) -> float``; one
that declares a ``completion_length`` parameter also gets the completion's length in tokens
(DAPO's overlong penalty). A *group* reward (``fn.scope = "group"``) scores a prompt's whole
group at once, ``fn(completions: list[str], problem, **kwargs) -> list[float]``: label-free
rewards compare a completion with its siblings (majority vote), not with an answer.
Configs name rewards by string: a registered name (``"math"``) or an import path
(``"my_pkg.rewards:score"``), so users add rewards without touching this package.

`RewardFunction` is the guard between a (possibly buggy or slow) user function and the
trainer. One bad sample must not silently corrupt a batch's advantages, so errors and
non-numeric or non-finite returns raise `RewardError` naming the reward, the problem and
the completion. Slowness, on the other hand, is a property of the sample (a pathological
expression for SymPy), so a call that exceeds `timeout_s` scores 0.0, is counted in
`timeouts`, and warns, and training goes on -- unless most of one reward's calls in a
training step time out (`max_timeout_fraction`), which is a broken or mis-sized reward,
not a hard sample: then `check_timeout_fractions` (the trainer, on the step's counts
summed over processes) raises `RewardError`.
"""
from __future__ import annotations

import inspect
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from rlreason.plugins import import_user_module, resolve_attribute
from rlreason.registry import REWARDS
from rlreason.rewards.trl_compat import TRL_PREFIX, TRLRewardError, adapt_trl_reward, resolve_trl_builtin
from rlreason.types import Problem

__all__ = [
    "RewardError",
    "RewardFunction",
    "RewardScores",
    "check_timeout_fractions",
    "compute_rewards",
    "register_reward",
    "registered_rewards",
    "resolve_reward",
]

RewardFn = Callable[..., Any]


class RewardError(Exception):
    """A reward could not be resolved, raised, or returned something that is not a score."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` resolvable as `name` (in registry.REWARDS, the one list the
    config validates names against). Returns `fn` unchanged.

    Registering a different function under a taken name raises, so two modules cannot
    silently shadow each other; re-registering the same function (a module reload) is fine.
    """

    def decorator(fn: RewardFn) -> RewardFn:
        try:
            REWARDS.register_unique(name, fn)
        except ValueError as e:
            raise RewardError(str(e)) from None
        return fn

    return decorator


def registered_rewards() -> list[str]:
    """The registered reward names, sorted."""
    return sorted(REWARDS.names())


def resolve_reward(spec: str) -> RewardFn:
    """The reward function for `spec`: a registered name or ``"package.module:function"``.

    Modules are imported from `sys.path` and, last, the current directory (console scripts
    such as ``rlreason`` do not put it on `sys.path`), so ``my_rewards:score`` finds
    ``./my_rewards.py``. Any failure to import the module raises `RewardError`.
    """
    if ":" not in spec:
        try:
            return REWARDS.get(spec)
        except ValueError as e:  # names the registered rewards and the nearest ones
            raise RewardError(f"unknown reward: {e}") from None

    module_name, _, attr = spec.partition(":")
    hint = f"registered rewards: {', '.join(registered_rewards())}"
    if not module_name or not attr:
        raise RewardError(f"reward spec {spec!r} must look like 'package.module:function'; {hint}")
    try:
        module = import_user_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise RewardError(
            f"reward {spec!r}: cannot import module {module_name!r} ({exc!r}); {hint}"
        ) from exc
    try:
        fn: Any = resolve_attribute(module, attr)
    except AttributeError:
        raise RewardError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}; {hint}") from None
    if not callable(fn):
        raise RewardError(f"reward {spec!r}: {attr!r} is not callable")
    return fn


class _Timeout(BaseException):
    """Raised by our SIGALRM handler. A BaseException so that the reward's own
    ``except Exception`` blocks (math-verify has several) cannot swallow it."""


_TIMED_OUT = object()  # sentinel: the call ran past timeout_s


class RewardFunction:
    """A reward function with a name, fixed extra kwargs, validation and a time limit.

    ``RewardFunction(fn_or_spec, name=None, timeout_s=10.0, kwargs={...})``; calling it as
    ``rf(completion, problem)`` returns a float. `timeouts` counts timed-out calls over
    the object's life; `max_timeout_fraction` (None: no limit) is the largest fraction of
    a step's calls that may time out (`check_timeout_fractions`). The time limit uses SIGALRM via
    ``setitimer`` in the main thread (the call is interrupted) and a daemon thread joined
    with a timeout elsewhere (the call is abandoned, not killed: it keeps running in the
    background, so rewards that must stop promptly should also bound themselves).
    """

    def __init__(
        self,
        fn: RewardFn | str,
        name: str | None = None,
        *,
        timeout_s: float | None = 10.0,
        kwargs: dict[str, Any] | None = None,
        max_timeout_fraction: float | None = None,
        api: str = "auto",
        trl_completions: str = "messages",
    ) -> None:
        kwargs = dict(kwargs or {})
        if api not in ("auto", "rlreason", "trl"):
            raise RewardError(f"rewards[].api: {api!r}; expected 'auto', 'rlreason' or 'trl'")
        try:
            if isinstance(fn, str):
                name = name or fn
                if fn.startswith(TRL_PREFIX):  # TRL's own rewards, by name
                    fn, kwargs = resolve_trl_builtin(fn, kwargs)
                    api = "trl"
                else:
                    fn = resolve_reward(fn)
            if api == "trl":  # written for TRL's GRPOTrainer: called on a batch of one
                fn = adapt_trl_reward(fn, name or getattr(fn, "__name__", repr(fn)), trl_completions)
        except TRLRewardError as e:
            raise RewardError(str(e)) from e
        self.fn = fn
        self.scope = getattr(fn, "scope", "completion")
        try:
            self.takes_length = "completion_length" in inspect.signature(fn).parameters
        except (TypeError, ValueError):  # a builtin or C callable: no signature to read
            self.takes_length = False
        self.name = name or getattr(fn, "__name__", repr(fn))
        self.timeout_s = timeout_s
        self.kwargs = kwargs
        self.max_timeout_fraction = max_timeout_fraction
        self.timeouts = 0

    def __repr__(self) -> str:
        return f"RewardFunction({self.name!r}, timeout_s={self.timeout_s}, kwargs={self.kwargs})"

    def _describe(self, problem: Problem, completion: str) -> str:
        return f"reward {self.name!r} on problem {problem.id!r}, completion {completion[:200]!r}"

    def score_group(self, completions: list[str], problem: Problem) -> list[float]:
        """A group reward's scores for one prompt's completions, each checked like one
        completion's (the time limit covers the whole group)."""
        try:
            values = self._call_bounded(completions, problem)
        except Exception as exc:
            raise RewardError(f"{self._describe(problem, completions[0])} raised {exc!r}") from exc
        if values is _TIMED_OUT:
            self.timeouts += len(completions)
            warnings.warn(f"reward {self.name!r} timed out after {self.timeout_s}s on problem {problem.id!r}'s "
                          "group; scoring 0.0", RuntimeWarning, stacklevel=2)
            return [0.0] * len(completions)
        if not isinstance(values, (list, tuple)) or len(values) != len(completions):
            raise RewardError(f"{self._describe(problem, completions[0])}: a group reward must return one score "
                              f"per completion ({len(completions)}), got {values!r}")
        return [self._checked(v, c, problem) for v, c in zip(values, completions)]

    def __call__(self, completion: str, problem: Problem, completion_length: int | None = None) -> float:
        extra = {"completion_length": completion_length} if self.takes_length else {}
        try:
            value = self._call_bounded(completion, problem, **extra)
        except Exception as exc:
            raise RewardError(f"{self._describe(problem, completion)} raised {exc!r}") from exc
        if value is _TIMED_OUT:
            self.timeouts += 1
            warnings.warn(
                f"reward {self.name!r} timed out after {self.timeout_s}s on problem "
                f"{problem.id!r}; scoring 0.0",
                RuntimeWarning,
                stacklevel=2,
            )
            return 0.0
        return self._checked(value, completion, problem)

    def _checked(self, value: Any, completion: str, problem: Problem) -> float:
        if isinstance(value, (str, bytes)):
            raise RewardError(f"{self._describe(problem, completion)} returned non-numeric {value!r}")
        try:
            score = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise RewardError(
                f"{self._describe(problem, completion)} returned non-numeric {value!r}"
            ) from None
        if not math.isfinite(score):
            raise RewardError(f"{self._describe(problem, completion)} returned non-finite {score!r}")
        return score

    def _call_bounded(self, completion: Any, problem: Problem, **extra: Any) -> Any:
        """Run the function under the time limit; `_TIMED_OUT` if it ran out."""
        timeout = self.timeout_s
        if timeout is None or timeout <= 0:
            return self.fn(completion, problem, **self.kwargs, **extra)
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            return self._call_with_alarm(completion, problem, timeout, extra)
        return self._call_in_thread(completion, problem, timeout, extra)

    def _call_with_alarm(self, completion: Any, problem: Problem, timeout: float, extra: dict) -> Any:
        def on_alarm(signum: int, frame: Any) -> None:
            raise _Timeout

        # Respect an outer deadline (a nested RewardFunction): never extend it, re-arm it after.
        outer_remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        started = time.monotonic()
        previous = signal.signal(signal.SIGALRM, on_alarm)
        try:
            signal.setitimer(signal.ITIMER_REAL, min(timeout, outer_remaining or timeout))
            try:
                return self.fn(completion, problem, **self.kwargs, **extra)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Timeout:
            return _TIMED_OUT
        finally:
            # getsignal() gives None for a handler not installed from Python; use the default.
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
            if outer_remaining:
                left = outer_remaining - (time.monotonic() - started)
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))

    def _call_in_thread(self, completion: Any, problem: Problem, timeout: float, extra: dict) -> Any:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = self.fn(completion, problem, **self.kwargs, **extra)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=target, name=f"reward-{self.name}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            return _TIMED_OUT
        if "error" in box:
            raise box["error"]
        return box.get("value")


class RewardScores(tuple):
    """``(totals, raw)``, unpacked as before, plus `timeouts`: for each reward's name, how
    many of its calls in this `compute_rewards` call timed out (and scored 0.0)."""

    timeouts: dict[str, int]

    def __new__(cls, totals: list[float], raw: dict[str, list[float]],
                timeouts: dict[str, int]) -> RewardScores:
        self = super().__new__(cls, (totals, raw))
        self.timeouts = timeouts
        return self

    @property
    def totals(self) -> list[float]:
        return self[0]

    @property
    def raw(self) -> dict[str, list[float]]:
        return self[1]


def check_timeout_fractions(
    rewards: Sequence[tuple[RewardFunction, float]],
    timeouts: dict[str, int],
    calls: int,
) -> None:
    """Raise `RewardError` if a reward with a `max_timeout_fraction` timed out on more than
    that fraction of its `calls` calls (`timeouts[name]` of them). ``rewards[i]`` in the
    message is the reward's position in `rewards` (the recipe's ``rewards`` list)."""
    for i, (rf, _) in enumerate(rewards):
        limit = rf.max_timeout_fraction
        n = timeouts.get(rf.name, 0)
        if limit is None or calls <= 0 or n <= limit * calls:
            continue
        raise RewardError(
            f"reward {rf.name!r} timed out on {n}/{calls} calls this step "
            f"(> max_timeout_fraction {limit} of rewards[{i}]); raise rewards[{i}].timeout_s "
            f"(now {rf.timeout_s}) or fix the reward"
        )


def compute_rewards(
    completions: Sequence[str],
    problems: Sequence[Problem],
    rewards: Sequence[tuple[RewardFunction, float]],
    *,
    group_size: int | None = None,
    lengths: Sequence[int] | None = None,
) -> RewardScores:
    """Score each (completion, problem) pair with every reward.

    `group_size`: completions come in groups of that many per prompt (needed by group
    rewards); `lengths`: each completion's length in tokens (for rewards that take one).

    Returns ``(totals, raw)``: ``totals[i] = sum(weight * reward(completions[i], problems[i]))``
    and ``raw[name]`` the unweighted scores of each reward, for logging; the result's
    ``.timeouts[name]`` counts each reward's calls that timed out here (what
    `check_timeout_fractions` judges).
    """
    if len(completions) != len(problems):
        raise RewardError(f"{len(completions)} completions but {len(problems)} problems")
    names = [rf.name for rf, _ in rewards]
    if len(set(names)) != len(names):
        raise RewardError(f"reward names must be unique, got {names}; pass name= to tell them apart")
    totals = [0.0] * len(completions)
    raw: dict[str, list[float]] = {}
    timeouts: dict[str, int] = {}
    for rf, weight in rewards:
        before = rf.timeouts
        if rf.scope == "group":
            if not group_size:
                raise RewardError(f"reward {rf.name!r} scores whole groups: it needs the completions of a "
                                  "prompt together (training, not per-sample evaluation)")
            scores = [s for i in range(0, len(completions), group_size)
                      for s in rf.score_group(list(completions[i:i + group_size]), problems[i])]
        else:
            lens = lengths if lengths is not None else [None] * len(completions)
            scores = [rf(c, p, n) for c, p, n in zip(completions, problems, lens)]
        raw[rf.name] = scores
        timeouts[rf.name] = rf.timeouts - before
        totals = [t + weight * s for t, s in zip(totals, scores)]
    return RewardScores(totals, raw, timeouts)


def rewards_from_config(specs, *, labelled: bool = True) -> list[tuple[RewardFunction, float]]:
    """The recipe's `rewards` list as (reward function, weight) pairs, summed by the trainer.
    Without labels (data.answer_key null) only rewards that need none are accepted: group
    rewards and those that read the completion alone (overlong, format)."""
    out = [(RewardFunction(r.name, timeout_s=r.timeout_s, kwargs=r.kwargs,
                           max_timeout_fraction=r.max_timeout_fraction, api=r.api,
                           trl_completions=r.trl_completions), r.weight)
           for r in specs]
    needs_label = [rf.name for rf, _ in out if rf.scope != "group" and not getattr(rf.fn, "label_free", False)]
    if not labelled and needs_label:
        raise RewardError(f"data.answer_key is null (no labels), but rewards {needs_label} compare with a label; "
                          "train with majority_vote or urpa (and overlong/format as shaping terms)")
    return out
