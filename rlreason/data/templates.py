"""Turn a `Problem` into the prompt string (and token ids) the policy model sees.

template:
  "chat"  -> tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
             messages = problem.messages, else [system?] + [user: problem.prompt].
  "plain" -> `plain_template` with "{prompt}" (problem.question) and "{system}" substituted.
  "auto"  -> "chat" when the tokenizer has a chat template, else "plain".
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from rlreason.types import Problem

__all__ = ["TEMPLATES", "build_prompt", "encode_prompts", "resolve_template"]

TEMPLATES = ("auto", "chat", "plain")


def _tokenizer_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def resolve_template(tokenizer: Any, template: str = "auto") -> str:
    """ "chat" or "plain": which template `build_prompt` will use for this tokenizer."""
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r} is not one of {TEMPLATES}")
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    if template == "auto":
        return "chat" if has_chat else "plain"
    if template == "chat" and not has_chat:
        raise ValueError(
            f"tokenizer {_tokenizer_name(tokenizer)!r} has no chat template (tokenizer.chat_template "
            "is None), so template='chat' cannot be used; set `template: plain` (with a "
            "`plain_template`) for base models, or use an instruct tokenizer that ships a chat template"
        )
    return template


def _messages(problem: Problem, system_prompt: str | None) -> list[dict[str, str]]:
    if problem.messages:
        messages = [dict(m) for m in problem.messages]
        # A configured system prompt applies to chats that do not carry their own.
        if system_prompt is not None and not any(
            m.get("role") == "system" for m in messages
        ):
            messages.insert(0, {"role": "system", "content": system_prompt})
        return messages
    messages = (
        [{"role": "system", "content": system_prompt}]
        if system_prompt is not None
        else []
    )
    messages.append({"role": "user", "content": problem.question})
    return messages


def _plain(problem: Problem, system_prompt: str | None, plain_template: str) -> str:
    if system_prompt and "{system}" not in plain_template:
        warnings.warn(
            "system_prompt is set but plain_template has no '{system}' placeholder: the system "
            "prompt is not part of the plain prompt",
            stacklevel=3,
        )
    # Only the two placeholders are substituted (no str.format), so templates may contain
    # literal braces such as "\\boxed{}" without escaping.
    return plain_template.replace("{system}", system_prompt or "").replace(
        "{prompt}", problem.question
    )


def _build(
    problem: Problem,
    tokenizer: Any,
    kind: str,
    system_prompt: str | None,
    plain_template: str,
) -> str:
    if kind == "plain":
        return _plain(problem, system_prompt, plain_template)
    text = tokenizer.apply_chat_template(
        _messages(problem, system_prompt), tokenize=False, add_generation_prompt=True
    )
    if not isinstance(
        text, str
    ):  # defensive: some tokenizer versions return a list for batches
        raise TypeError(
            f"apply_chat_template returned {type(text).__name__}, expected str"
        )
    return text


def build_prompt(
    problem: Problem,
    tokenizer: Any,
    *,
    template: str = "auto",
    system_prompt: str | None = None,
    plain_template: str = "{prompt}",
) -> str:
    """The prompt text for one problem (see the module docstring for the template kinds)."""
    kind = resolve_template(tokenizer, template)
    return _build(problem, tokenizer, kind, system_prompt, plain_template)


def encode_prompts(
    problems: Sequence[Problem],
    tokenizer: Any,
    *,
    template: str = "auto",
    system_prompt: str | None = None,
    plain_template: str = "{prompt}",
) -> list[list[int]]:
    """Token ids of each problem's prompt.

    Chat-templated prompts are tokenized with add_special_tokens=False (the chat template
    already contains BOS etc.); plain prompts use the tokenizer's default special tokens.
    """
    kind = resolve_template(tokenizer, template)
    texts = [
        _build(p, tokenizer, kind, system_prompt, plain_template) for p in problems
    ]
    if not texts:
        return []
    kwargs = {"add_special_tokens": False} if kind == "chat" else {}
    return [list(ids) for ids in tokenizer(texts, **kwargs)["input_ids"]]


class PromptEncoder:
    """A recipe's prompt -> token ids, each (id, prompt) encoded once: the trainer asks for
    the same prompts every epoch and POPE's guided variants share an id, not a prompt."""

    def __init__(self, tokenizer: Any, data_cfg: Any) -> None:
        self.tokenizer, self.data = tokenizer, data_cfg
        self.cache: dict[tuple[str, str], list[int]] = {}

    def __call__(self, p: Problem) -> list[int]:
        key = (p.id, p.prompt)
        if key not in self.cache:
            d = self.data
            self.cache[key] = encode_prompts([p], self.tokenizer, template=d.template, system_prompt=d.system_prompt,
                                             plain_template=d.plain_template)[0]
        return self.cache[key]

    def fitting(self, problems: list[Problem], max_length: int, log) -> list[Problem]:
        """`problems` whose prompt fits `max_length` tokens; says how many were dropped."""
        keep = [p for p in problems if len(self(p)) <= max_length]
        if len(keep) < len(problems):
            log(f"data: dropping {len(problems) - len(keep)} prompts longer than "
                f"data.max_prompt_length={max_length} tokens")
        return keep
