"""How tool calls look in the model's text, and how their outputs are put back.

Two formats:

* `tags`, for base and tiny models: the call is `<NAME>ARGUMENTS</NAME>` (for example
  `<calculator>123*45</calculator>`), the output comes back as `<result>OUTPUT</result>`.
* `chat`, for chat models whose template defines tool calls (Qwen2.5/Qwen3 and others that
  use Hermes-style `<tool_call>`): the call is `<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>`, the output comes back as the template's own tool message, rendered
  by the tokenizer's chat template (so it reads exactly as in the model's training data).

Each format also names the strings that end a model turn at a call (its `stop`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass
class ToolCall:
    name: str | None
    arguments: Any  # the text between tags, or the JSON arguments object
    error: str | None = None  # a call that could not be read (bad JSON): shown to the model


class TagFormat:
    """`<calculator>1+2</calculator>` -> `<result>3</result>`."""

    def __init__(self, tool_names: list[str]):
        self.names = list(tool_names)
        self.stop = tuple(f"</{n}>" for n in self.names)
        alt = "|".join(re.escape(n) for n in self.names)
        self._call = re.compile(rf"<({alt})>(.*?)</\1>", re.DOTALL)

    def parse(self, turn: str) -> list[ToolCall]:
        return [ToolCall(m.group(1), m.group(2)) for m in self._call.finditer(turn)]

    def render(self, outputs: list[str]) -> str:
        return "".join(f"<result>{o}</result>" for o in outputs)


CHAT_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_SENTINEL = "\x00rlreason-turn-end\x00"


class ChatFormat:
    """Hermes-style `<tool_call>` JSON in the text; outputs as the chat template's tool
    messages. The observation is the template's text between the end of the assistant's
    content and the start of its next turn: rendered once per call with a placeholder
    assistant message and cut at the placeholder, so no earlier text is re-tokenised."""

    stop = ("</tool_call>",)

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("env.kwargs.format 'chat': the tokenizer has no chat template; use format 'tags'")
        self.tokenizer = tokenizer
        try:  # a template that cannot place a tool message fails here, not mid-rollout
            self.render(["x"])
        except Exception as e:
            raise ValueError(f"env.kwargs.format 'chat': the chat template cannot render a tool message ({e}); "
                             "use format 'tags'") from e

    def parse(self, turn: str) -> list[ToolCall]:
        calls = []
        for m in CHAT_CALL.finditer(turn):
            try:
                obj = json.loads(m.group(1))
            except json.JSONDecodeError as e:
                calls.append(ToolCall(None, None, f"the tool call is not valid JSON ({e.msg})"))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                calls.append(ToolCall(None, None, 'a tool call needs {"name": ..., "arguments": {...}}'))
                continue
            args = obj.get("arguments", {})
            if isinstance(args, str):  # some models write the arguments as a JSON string
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    pass
            calls.append(ToolCall(obj["name"], args))
        return calls

    def render(self, outputs: list[str]) -> str:
        messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}]
        messages += [{"role": "tool", "content": o} for o in outputs]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        at = text.find(_SENTINEL)
        if at < 0:
            raise ValueError("the chat template dropped the assistant's content; cannot place tool outputs")
        return text[at + len(_SENTINEL):]


def make_format(name: str, tokenizer: Any, tool_names: list[str]):
    """`tags`, `chat`, or `auto` (chat when the tokenizer's template knows `<tool_call>`)."""
    if name == "auto":
        name = "chat" if "<tool_call>" in (getattr(tokenizer, "chat_template", None) or "") else "tags"
    if name == "tags":
        return TagFormat(tool_names)
    if name == "chat":
        return ChatFormat(tokenizer)
    raise ValueError(f"env.kwargs.format: {name!r}; expected 'auto', 'tags' or 'chat'")
