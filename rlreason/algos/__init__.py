"""Algorithms as pure tensor functions: no I/O, no model, checked by hand in tests."""
from .grpo import (
    LOSS_NORMALIZER,
    LOSSES,
    LossInputs,
    group_advantages,
    kl_penalty,
    policy_loss,
    register_loss,
)

__all__ = ["LOSSES", "LOSS_NORMALIZER", "LossInputs", "group_advantages", "kl_penalty", "policy_loss",
           "register_loss"]
