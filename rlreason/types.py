"""The few dataclasses that cross module boundaries.

Tokens, not text, cross the rollout -> trainer boundary: a `Completion` carries the exact
token ids that were sampled and their sampling log-probabilities, so the trainer scores
precisely what the sampler produced (no re-tokenisation drift).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Problem:
    """One task instance: what the model is asked and what a verifier checks against.

    `prompt` is plain text for base models; `messages` is a chat (list of role/content
    dicts) for instruct models. Exactly one of them is used when building the prompt
    (messages win when both are set). `solution` is an oracle worked solution, used as a
    hint source by guided exploration and as a target by SFT.
    """

    id: str
    answer: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    solution: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prompt is None and not self.messages:
            raise ValueError(f"problem {self.id!r}: needs a 'prompt' or 'messages'")

    @property
    def question(self) -> str:
        """The problem statement as text (the last user turn of a chat)."""
        if self.prompt is not None:
            return self.prompt
        users = [m["content"] for m in self.messages or [] if m.get("role") == "user"]
        return users[-1] if users else self.messages[-1]["content"]  # type: ignore[index]


@dataclass
class SamplingParams:
    """How completions are sampled (names follow TRL / vLLM)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    stop: tuple[str, ...] = ()  # a completion ends once its text contains one (kept in it)
    min_tokens: int = 0  # no stop (EOS, stop token, stop string) before this many tokens (vLLM's name)


@dataclass
class Completion:
    """One sampled continuation of a prompt.

    token_ids: sampled tokens, EOS included when the model stopped on it.
    logprobs: log-probability of each sampled token under the sampling distribution
      (temperature applied), one per token id.
    finish_reason: "stop" (EOS / stop token) or "length" (hit max_tokens, or an episode's
      turn or token limit).
    loss_mask: for a multi-turn episode (rollout/episodes.py), 1 where the model sampled the
      token and 0 where an environment inserted it (tool output); None: every token is the
      model's. Only model tokens carry loss; an inserted token's logprob is 0.
    info: an episode's counters (turns, tool_calls, tool_errors, truncated, env_reward).
    policy_version: the trainer step whose weights sampled it, where the engine knows
      (a rollout server told the version with each push); None otherwise.
    """

    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str = ""
    loss_mask: list[int] | None = None
    info: dict[str, Any] | None = None
    policy_version: int | None = None


@dataclass
class Adapter:
    """A LoRA adapter in memory: its peft config and tensors under peft's saved names
    (what `adapter_model.safetensors` holds). How the trainer pushes LoRA to an engine
    that does not share its module, gathered from shards where training shards them."""

    config: Any  # peft.LoraConfig
    tensors: dict[str, Any]

    def write(self, folder: str) -> str:
        """Save as a peft adapter folder (what vLLM's LoRARequest reads)."""
        from safetensors.torch import save_file  # lazily: it loads torch; this module is otherwise plain dataclasses

        self.config.save_pretrained(folder)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.tensors.items()},
                  f"{folder}/adapter_model.safetensors")
        return folder
