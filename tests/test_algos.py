"""Tests for rlreason.algos: advantages, KL estimators and the GRPO-family losses.

Every expected value is worked out by hand (the arithmetic is written out below as plain
python floats / math expressions), never by calling the code under test another way.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rlreason.algos import LOSSES, LossInputs, group_advantages, kl_penalty, policy_loss
from rlreason.config import AlgoConfig

EPS, EPS_HIGH = 0.2, 0.28  # clip range [0.8, 1.28]
TOL = 1e-9
FRAC_TOL = 1e-7  # clip fractions are count / count, computed in float32


def _cfg(loss_type: str, beta: float = 0.0, kl_estimator: str = "k3",
         epsilon: float = EPS, epsilon_high: float | None = EPS_HIGH) -> SimpleNamespace:
    return SimpleNamespace(loss_type=loss_type, beta=beta, kl_estimator=kl_estimator,
                           epsilon=epsilon, epsilon_high=epsilon_high)


# ------------------------------------------------------------------ group_advantages

REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_group_advantages_group_scale():
    adv = group_advantages(torch.tensor(REWARDS), 4, "group")
    # group 1: mean 0.5, deviations +-0.5, unbiased var = 4 * 0.25 / 3 = 1/3
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    expected = [a, -a, -a, a]
    assert adv[:4].tolist() == pytest.approx(expected, rel=1e-6)
    # group 2 is constant: exactly zero (no 0/0, no NaN)
    assert adv[4:].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert adv.shape == (8,)


def test_group_advantages_batch_scale():
    adv = group_advantages(torch.tensor(REWARDS), 4, "batch")
    # batch mean 0.75; six ones deviate 0.25, two zeros deviate -0.75:
    # sum of squares 6 * 0.0625 + 2 * 0.5625 = 1.5, unbiased var 1.5 / 7
    a = 0.5 / (math.sqrt(1.5 / 7) + 1e-4)
    # the centring is still per group; only the divisor is the batch std
    assert adv.tolist() == pytest.approx([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0], rel=1e-6)


def test_group_advantages_no_scale():
    adv = group_advantages(torch.tensor(REWARDS), 4, "none")
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]


def test_group_advantages_group_size_must_divide():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.tensor(REWARDS[:7]), 4)


def test_group_advantages_unknown_scale():
    with pytest.raises(ValueError, match="algo.scale_rewards"):
        group_advantages(torch.tensor(REWARDS), 4, "median")


# ------------------------------------------------------------------ kl_penalty


@pytest.mark.parametrize(
    ("p", "p_ref", "k1", "k2", "k3"),
    [
        # pi = 0.5, pi_ref = 0.25: pi_ref / pi = 0.5
        (0.5, 0.25, math.log(2), 0.5 * math.log(2) ** 2, 0.5 - math.log(0.5) - 1),
        # pi = 0.2, pi_ref = 0.6: pi_ref / pi = 3
        (0.2, 0.6, -math.log(3), 0.5 * math.log(3) ** 2, 3 - math.log(3) - 1),
    ],
)
def test_kl_penalty_closed_forms(p, p_ref, k1, k2, k3):
    logp = torch.tensor([math.log(p)], dtype=torch.float64)
    ref = torch.tensor([math.log(p_ref)], dtype=torch.float64)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(k1, abs=1e-12)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(k2, abs=1e-12)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(k3, abs=1e-12)
    assert kl_penalty(logp, ref).item() == pytest.approx(k3, abs=1e-12)  # default is k3


def test_kl_k3_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(64, 32, generator=g, dtype=torch.float64) * 3
    ref = torch.randn(64, 32, generator=g, dtype=torch.float64) * 3
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert torch.equal(kl_penalty(logp, logp, "k3"), torch.zeros_like(logp))
    assert torch.equal(kl_penalty(logp, logp, "k2"), torch.zeros_like(logp))


def test_kl_unknown_estimator():
    with pytest.raises(ValueError, match="algo.kl_estimator"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")


# ------------------------------------------------------------------ losses on a tiny batch
#
# B=3, T=3.  ratio = pi / pi_old per token; clip range [0.8, 1.28].
#   seq 0, A = +1.0, mask [1,1,1], ratios [2.0, 1.2, 1.1]   -> token 0 clipped high
#   seq 1, A = -0.5, mask [1,1,0], ratios [0.5, 1.1, (3.0)] -> token 0 clipped low
#   seq 2, A = +2.0, mask [1,0,0], ratios [1.0, (5.0), (5.0)]
# (values in brackets are padding: they must not reach the loss or the metrics; unmasked,
#  seq 1's 3.0 would add 1.5 and seq 2's 5.0s would count as clip_high.)
#
# token terms -min(r A, clip(r) A):
#   seq 0: -min(2.0, 1.28) = -1.28, -1.2, -1.1            sum -3.58, mean -3.58/3
#   seq 1: -min(-0.25, -0.4) = 0.4, -min(-0.55, -0.55) = 0.55   sum 0.95, mean 0.475
#   seq 2: -2.0                                             sum -2.0, mean -2.0
#   all tokens: -3.58 + 0.95 - 2.0 = -4.63 over 6 tokens

RATIOS = [[2.0, 1.2, 1.1], [0.5, 1.1, 3.0], [1.0, 5.0, 5.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
ADV = [1.0, -0.5, 2.0]
OLD_P = [[0.3, 0.2, 0.5], [0.6, 0.25, 0.1], [0.4, 0.15, 0.05]]
MAX_LEN = 4

HAND = {
    "grpo": (-3.58 / 3 + 0.95 / 2 + -2.0 / 1) / 3,
    "bnpo": -4.63 / 6,  # num_micro_batches = 1
    "dapo": -4.63 / 6,
    "dr_grpo": -4.63 / (3 * MAX_LEN),
    # gspo: s0 = (2.0*1.2*1.1)^(1/3) = 2.64^(1/3) = 1.382 > 1.28 -> -min(1.382, 1.28) = -1.28
    #       s1 = (0.5*1.1)^(1/2) = 0.742 < 0.8, A<0 -> -min(-0.371, -0.4) = 0.4
    #       s2 = 1.0 -> -2.0
    "gspo": (-1.28 + 0.4 - 2.0) / 3,
}


def _inputs(requires_grad: bool = False, **kw) -> LossInputs:
    old = torch.tensor(OLD_P, dtype=torch.float64).log()
    logp = old + torch.tensor(RATIOS, dtype=torch.float64).log()
    logp.requires_grad_(requires_grad)
    fields = dict(logp=logp, old_logp=old, advantages=torch.tensor(ADV, dtype=torch.float64),
                  mask=torch.tensor(MASK, dtype=torch.float64), num_sequences=3, num_tokens=6,
                  num_micro_batches=1, max_completion_length=MAX_LEN)
    fields.update(kw)
    return LossInputs(**fields)


def test_a_loss_registered_in_one_place_is_a_valid_loss_type():
    import math

    from rlreason.algos import LOSS_NORMALIZER, register_loss
    from rlreason.config import ConfigError, load_config, reference

    @register_loss("sum_of_tokens")
    def sum_of_tokens(x, cfg):  # REINFORCE over every token of the step
        return -(x.advantages[:, None] * x.logp * x.mask).sum() / max(x.num_tokens, 1), {}

    try:
        assert load_config(None, ["algo.loss_type=sum_of_tokens"]).algo.loss_type == "sum_of_tokens"
        assert any("`sum_of_tokens`" in line for line in reference() if "algo.loss_type" in line)
        assert LOSS_NORMALIZER["sum_of_tokens"] == "step"
        loss, _ = policy_loss(_inputs(), _cfg("sum_of_tokens"))
        by_hand = -sum(ADV[b] * sum(math.log(OLD_P[b][t] * RATIOS[b][t]) for t in range(3) if MASK[b][t])
                       for b in range(3)) / 6
        assert float(loss) == pytest.approx(by_hand)
    finally:
        LOSSES.pop("sum_of_tokens")
        LOSS_NORMALIZER.pop("sum_of_tokens")
    with pytest.raises(ConfigError, match=r"'dapoo' is not a registered loss.*did you mean dapo"):
        load_config(None, ["algo.loss_type=dapoo"])
    with pytest.raises(ConfigError, match=r"algo.loss_type 'no_such_module:f': cannot import it"):
        load_config(None, ["algo.loss_type='no_such_module:f'"])
    with pytest.raises(ValueError, match=r"normalizer 'sequence'"):
        register_loss("x", normalizer="sequence")
    assert AlgoConfig().loss_type in LOSSES and LOSS_NORMALIZER["bnpo"] == "micro_batch"


def test_a_loss_of_your_own_module_is_named_module_colon_function(user_module):
    from rlreason.algos import LOSS_NORMALIZER
    from rlreason.config import load_config

    user_module("my_losses", "def mean_tokens(x, cfg):\n"
                "    return -(x.advantages[:, None] * x.logp * x.mask).sum() / x.mask.sum(), {}\n"
                "mean_tokens.normalizer = 'micro_batch'\n")
    try:
        cfg = load_config(None, ["algo.loss_type='my_losses:mean_tokens'"])
        assert LOSS_NORMALIZER["my_losses:mean_tokens"] == "micro_batch"
        loss, _ = policy_loss(_inputs(), _cfg(cfg.algo.loss_type))
        assert float(loss) == pytest.approx(float(LOSSES["my_losses:mean_tokens"](_inputs(), None)[0]))
    finally:
        LOSSES.pop("my_losses:mean_tokens", None)
        LOSS_NORMALIZER.pop("my_losses:mean_tokens", None)



@pytest.mark.parametrize("loss_type", sorted(HAND))
def test_loss_values_by_hand(loss_type):
    loss, _ = policy_loss(_inputs(), _cfg(loss_type))
    assert loss.item() == pytest.approx(HAND[loss_type], abs=TOL)


def test_loss_with_algo_config_object():
    cfg = AlgoConfig(loss_type="dapo", epsilon=0.2, epsilon_high=0.28)
    loss, _ = policy_loss(_inputs(), cfg)
    assert loss.item() == pytest.approx(HAND["dapo"], abs=TOL)


def test_epsilon_high_defaults_to_epsilon():
    # clip range [0.8, 1.2]: seq 0 token 0 now gives -1.2 instead of -1.28 (1.2 is on the
    # bound, unchanged); everything else as before: -4.63 + 0.08 = -4.55
    loss, m = policy_loss(_inputs(), _cfg("dapo", epsilon_high=None))
    assert loss.item() == pytest.approx(-4.55 / 6, abs=TOL)
    assert m["clip_high"] == pytest.approx(1 / 6, abs=FRAC_TOL)


def test_bnpo_divides_by_num_micro_batches():
    loss, _ = policy_loss(_inputs(num_micro_batches=2), _cfg("bnpo"))
    assert loss.item() == pytest.approx(-4.63 / 6 / 2, abs=TOL)


def test_dapo_divides_by_step_token_count():
    # num_tokens is the whole step's count (say 10), not this micro-batch's 6
    loss, _ = policy_loss(_inputs(num_tokens=10), _cfg("dapo"))
    assert loss.item() == pytest.approx(-4.63 / 10, abs=TOL)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_token_clip_metrics(loss_type):
    _, m = policy_loss(_inputs(), _cfg(loss_type))
    # 6 trained tokens: one clipped high (seq 0 tok 0), one clipped low (seq 1 tok 0)
    assert m["clip_high"] == pytest.approx(1 / 6, abs=FRAC_TOL)
    assert m["clip_low"] == pytest.approx(1 / 6, abs=FRAC_TOL)
    assert m["ratio"] == pytest.approx((2.0 + 1.2 + 1.1 + 0.5 + 1.1 + 1.0) / 6, abs=TOL)
    assert "kl" not in m


def test_gspo_clip_metrics():
    _, m = policy_loss(_inputs(), _cfg("gspo"))
    # 3 sequences: seq 0 clipped high, seq 1 clipped low, seq 2 not
    assert m["clip_high"] == pytest.approx(1 / 3, abs=FRAC_TOL)
    assert m["clip_low"] == pytest.approx(1 / 3, abs=FRAC_TOL)
    assert m["ratio"] == pytest.approx((2.64 ** (1 / 3) + 0.55 ** 0.5 + 1.0) / 3, abs=TOL)


# ------------------------------------------------------------------ gradients


def test_grpo_gradient_at_ratio_one():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -2.5]], dtype=torch.float64,
                        requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    x = LossInputs(logp=logp, old_logp=logp.detach(), mask=mask,
                   advantages=torch.tensor([1.0, -0.5], dtype=torch.float64),
                   num_sequences=2, num_tokens=5, max_completion_length=3)
    loss, _ = policy_loss(x, _cfg("grpo"))
    loss.backward()
    # d/dlogp of -r A / (n_i * num_sequences) at r = 1:  -A_i / (n_i * 2)
    g0 = -1.0 / (3 * 2)
    g1 = 0.5 / (2 * 2)
    expected = [[g0, g0, g0], [g1, g1, 0.0]]
    assert logp.grad[0].tolist() == pytest.approx(expected[0], abs=TOL)
    assert logp.grad[1].tolist() == pytest.approx(expected[1], abs=TOL)
    assert loss.item() == pytest.approx((-1.0 + 0.5) / 2, abs=TOL)


def test_grpo_gradient_zero_on_clipped_and_masked_tokens():
    x = _inputs(requires_grad=True)
    loss, _ = policy_loss(x, _cfg("grpo"))
    loss.backward()
    g = x.logp.grad
    assert g[0, 0].item() == 0.0  # clipped high (r = 2.0, A > 0)
    assert g[1, 0].item() == 0.0  # clipped low (r = 0.5, A < 0)
    assert g[1, 2].item() == 0.0  # padding
    assert g[2, 1].item() == 0.0 and g[2, 2].item() == 0.0  # padding
    # unclipped: d(-r A)/dlogp = -r A, divided by n_i * num_sequences
    assert g[0, 1].item() == pytest.approx(-1.2 * 1.0 / (3 * 3), abs=TOL)
    assert g[0, 2].item() == pytest.approx(-1.1 * 1.0 / (3 * 3), abs=TOL)
    assert g[1, 1].item() == pytest.approx(-1.1 * -0.5 / (2 * 3), abs=TOL)
    assert g[2, 0].item() == pytest.approx(-1.0 * 2.0 / (1 * 3), abs=TOL)


# ------------------------------------------------------------------ KL term (beta > 0)
#
# ref_logp = logp + d, so log(pi_ref / pi) = d and k3 = e^d - d - 1 per token.

D = [[0.1, -0.2, 0.3], [0.5, -0.5, 9.0], [-1.0, 9.0, 9.0]]  # 9.0s are padding
BETA = 0.04


def _k3(d: float) -> float:
    return math.exp(d) - d - 1


K = [[_k3(d) for d in row] for row in D]
KL_SUM = K[0][0] + K[0][1] + K[0][2] + K[1][0] + K[1][1] + K[2][0]
KL_SEQ_MEAN = [(K[0][0] + K[0][1] + K[0][2]) / 3, (K[1][0] + K[1][1]) / 2, K[2][0] / 1]
KL_HAND = {
    "grpo": sum(KL_SEQ_MEAN) / 3,
    "gspo": sum(KL_SEQ_MEAN) / 3,
    "bnpo": KL_SUM / 6,
    "dapo": KL_SUM / 6,
    "dr_grpo": KL_SUM / (3 * MAX_LEN),
}


@pytest.mark.parametrize("loss_type", sorted(KL_HAND))
def test_loss_with_kl(loss_type):
    x = _inputs()
    x.ref_logp = x.logp + torch.tensor(D, dtype=torch.float64)
    loss, m = policy_loss(x, _cfg(loss_type, beta=BETA))
    assert loss.item() == pytest.approx(HAND[loss_type] + BETA * KL_HAND[loss_type], abs=TOL)
    assert m["kl"] == pytest.approx(KL_SUM / 6, abs=TOL)


def test_kl_estimator_k1_used_when_configured():
    x = _inputs()
    x.ref_logp = x.logp + torch.tensor(D, dtype=torch.float64)
    loss, _ = policy_loss(x, _cfg("dapo", beta=BETA, kl_estimator="k1"))
    k1_sum = -(0.1 - 0.2 + 0.3 + 0.5 - 0.5 - 1.0)  # k1 = -d over the 6 trained tokens
    assert loss.item() == pytest.approx(HAND["dapo"] + BETA * k1_sum / 6, abs=TOL)


def test_beta_zero_ignores_reference():
    x = _inputs()
    x.ref_logp = x.logp + torch.tensor(D, dtype=torch.float64)
    loss, m = policy_loss(x, _cfg("grpo", beta=0.0))
    assert loss.item() == pytest.approx(HAND["grpo"], abs=TOL)
    assert "kl" not in m


# ------------------------------------------------------------------ gradient accumulation


def _full_batch():
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(4, 5, generator=g, dtype=torch.float64) * 3
    logp = old + (torch.rand(4, 5, generator=g, dtype=torch.float64) - 0.5)  # r in ~[0.6,1.6]
    ref = old + (torch.rand(4, 5, generator=g, dtype=torch.float64) - 0.5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0],
                         [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.3], dtype=torch.float64)
    return logp, old, ref, mask, adv


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "gspo"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_gradient_accumulation_invariance(loss_type, beta):
    logp, old, ref, mask, adv = _full_batch()
    cfg = _cfg(loss_type, beta=beta)
    n_tok = int(mask.sum())  # 11

    full_logp = logp.clone().requires_grad_(True)
    full, _ = policy_loss(LossInputs(full_logp, old, adv, mask, ref, num_sequences=4,
                                     num_tokens=n_tok, max_completion_length=5), cfg)
    full.backward()

    acc_logp = logp.clone().requires_grad_(True)
    total = 0.0
    for sl in (slice(0, 2), slice(2, 4)):
        part, _ = policy_loss(LossInputs(acc_logp[sl], old[sl], adv[sl], mask[sl], ref[sl],
                                         num_sequences=4, num_tokens=n_tok,
                                         num_micro_batches=1, max_completion_length=5), cfg)
        part.backward()
        total += part.item()

    assert total == pytest.approx(full.item(), abs=1e-12)
    assert torch.allclose(acc_logp.grad, full_logp.grad, atol=1e-12)


def test_bnpo_accumulation_with_equal_token_counts():
    # bnpo averages per micro-batch; with 2 micro-batches of equal token count (4 each)
    # the sum of mean/2 equals the full-batch token mean
    logp, old, _, _, adv = _full_batch()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float64)
    cfg = _cfg("bnpo")
    full, _ = policy_loss(LossInputs(logp, old, adv, mask, num_micro_batches=1), cfg)
    total = sum(policy_loss(LossInputs(logp[sl], old[sl], adv[sl], mask[sl],
                                       num_micro_batches=2), cfg)[0].item()
                for sl in (slice(0, 2), slice(2, 4)))
    assert total == pytest.approx(full.item(), abs=1e-12)


# ------------------------------------------------------------------ dispatch


def test_policy_loss_unknown_type():
    with pytest.raises(ValueError, match="algo.loss_type") as e:
        policy_loss(_inputs(), _cfg("ppo"))
    assert "'ppo'" in str(e.value)
