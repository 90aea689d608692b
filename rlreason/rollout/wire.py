"""The JSON wire format between a trainer's RemoteEngine and a rollout server: completions
and sampling parameters as plain JSON values. One module both sides import, so the client
never imports the server (and, through its entry point, model loading).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..types import Completion, SamplingParams

__all__ = ["completion_from_json", "completion_to_json", "sampling_from_json", "sampling_to_json"]


def completion_to_json(c: Completion) -> dict[str, Any]:
    return {"token_ids": c.token_ids, "logprobs": c.logprobs, "finish_reason": c.finish_reason}


def completion_from_json(prompt: list[int], d: dict[str, Any]) -> Completion:
    return Completion(prompt_token_ids=list(prompt), token_ids=list(d["token_ids"]),
                      logprobs=[float(x) for x in d["logprobs"]], finish_reason=d["finish_reason"])


def sampling_from_json(d: dict[str, Any]) -> SamplingParams:
    known = SamplingParams.__dataclass_fields__
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"sampling: unknown fields {unknown}; expected some of {sorted(known)}")
    d = dict(d)
    d["stop_token_ids"] = tuple(d.get("stop_token_ids", ()))
    d["stop"] = tuple(d.get("stop", ()))
    return SamplingParams(**d)


def sampling_to_json(sp: SamplingParams) -> dict[str, Any]:
    d = asdict(sp)
    d["stop_token_ids"], d["stop"] = list(sp.stop_token_ids), list(sp.stop)
    if not d["min_tokens"]:  # a server older than the field still takes the request
        del d["min_tokens"]
    return d
