"""Algorithms as pure tensor functions: no I/O, no model, checked by hand in tests."""
from .advantages import ESTIMATORS, group_advantages, register_estimator
from .grpo import LOSS_NORMALIZER, LOSSES, LossInputs, kl_penalty, policy_loss, register_loss

__all__ = ["ESTIMATORS", "LOSSES", "LOSS_NORMALIZER", "LossInputs", "group_advantages", "kl_penalty",
           "policy_loss", "register_estimator", "register_loss"]
