"""The built-in tool environment (`env.name: tools`): each model turn that calls tools gets
their outputs back; a turn without a call is the answer and ends the episode.

    env:
      name: tools
      kwargs:
        tools: [calculator]          # registry.TOOLS names or module:function
        format: auto                 # tags | chat | auto (chat when the template has <tool_call>)
        tool_kwargs: {python: {timeout_s: 5, memory_mb: 512, max_output_chars: 1000}}

A tool that fails, raises or times out answers `error: ...` and the episode goes on: the
model sees what went wrong, as it would from a real interpreter.
"""
from __future__ import annotations

import inspect
from typing import Any

from ..registry import TOOLS
from ..types import Problem
from .environment import StepResult
from .tool_format import make_format

MAX_ERROR_CHARS = 300


class ToolEnv:
    def __init__(self, tokenizer: Any, tools: list[str] | tuple[str, ...] = ("calculator",), format: str = "auto",
                 tool_kwargs: dict[str, dict[str, Any]] | None = None, max_calls_per_turn: int = 4):
        if not tools:
            raise ValueError("env.kwargs.tools: name at least one tool, e.g. [calculator]")
        self.tools = {name: TOOLS.get(TOOLS.check(name)) for name in tools}
        self.tool_kwargs = dict(tool_kwargs or {})
        unknown = sorted(set(self.tool_kwargs) - set(self.tools))
        if unknown:
            raise ValueError(f"env.kwargs.tool_kwargs: {unknown} are not among env.kwargs.tools {list(tools)}")
        for name, kw in self.tool_kwargs.items():  # a typo fails now, not as an error shown to the model
            try:
                inspect.signature(self.tools[name]).bind(None, **kw)
            except TypeError as e:
                raise ValueError(f"env.kwargs.tool_kwargs.{name}: {e}") from None
        self.format = make_format(format, tokenizer, [n.rpartition(":")[2] if ":" in n else n for n in tools])
        self.by_call_name = {(n.rpartition(":")[2] if ":" in n else n): n for n in tools}
        self.stop = self.format.stop
        self.max_calls = max_calls_per_turn

    def reset(self, problem: Problem) -> None:
        pass  # tools keep no state between calls

    def _call(self, call) -> tuple[str, bool]:
        """(output, failed) of one call."""
        if call.error:
            return f"error: {call.error}", True
        name = self.by_call_name.get(call.name)
        if name is None:
            return f"error: unknown tool {call.name!r}; available: {', '.join(self.by_call_name)}", True
        try:
            return str(self.tools[name](call.arguments, **self.tool_kwargs.get(name, {}))), False
        except Exception as e:  # a tool's failure is the model's observation, not the run's
            return f"error: {e}"[:MAX_ERROR_CHARS], True

    def step(self, turn: str) -> StepResult:
        calls = self.format.parse(turn)
        if not calls:
            return StepResult(done=True)
        results = [self._call(c) for c in calls[: self.max_calls]]
        errors = sum(failed for _, failed in results)
        if len(calls) > self.max_calls:
            results.append((f"error: at most {self.max_calls} calls per turn", True))
            errors += 1
        return StepResult(observation=self.format.render([out for out, _ in results]),
                          info={"tool_calls": len(calls), "tool_errors": errors})
