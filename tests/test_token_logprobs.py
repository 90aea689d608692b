"""The memory-lean log-prob op must equal the plain expression, value and gradient."""
from __future__ import annotations

import pytest
import torch

from rlreason.algos import token_logprobs as tl


def _reference(x: torch.Tensor, t: torch.Tensor, temperature: float):
    lp = torch.log_softmax(x.double() / temperature, -1)
    return lp.gather(-1, t[..., None]).squeeze(-1), -(lp.exp() * lp).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 1e-2)])
def test_values_entropy_and_gradient_match_the_plain_expression(monkeypatch, temperature, dtype, tol):
    monkeypatch.setattr(tl, "CHUNK_ELEMENTS", 101 * 4)  # 4 rows a chunk: ten chunks, one short
    torch.manual_seed(0)
    x = (torch.randn(2, 19, 101) * 3).to(dtype).requires_grad_()
    t = torch.randint(0, 101, (2, 19))
    g = torch.randn(2, 19)
    lp, ent = tl.token_logprobs(x, t, temperature, with_entropy=True)
    assert lp.shape == ent.shape == (2, 19) and lp.dtype == torch.float32
    (lp * g).sum().backward()
    xr = x.detach().double().requires_grad_()
    ref_lp, ref_ent = _reference(xr, t, temperature)
    (ref_lp * g.double()).sum().backward()
    assert torch.allclose(lp.double(), ref_lp, atol=1e-5)  # computed in float32 either way
    assert torch.allclose(ent.double(), ref_ent.detach(), atol=1e-5)
    assert x.grad.dtype == dtype
    assert torch.allclose(x.grad.double(), xr.grad, atol=tol, rtol=tol)


def test_gradient_by_hand_for_one_row():
    # logits (0, ln 3): softmax (1/4, 3/4); d log p_1 / dx = onehot(1) - softmax = (-1/4, 1/4)
    x = torch.tensor([[0.0, float(torch.log(torch.tensor(3.0)))]], requires_grad=True)
    lp, _ = tl.token_logprobs(x, torch.tensor([1]))
    assert lp.item() == pytest.approx(float(torch.log(torch.tensor(0.75))), abs=1e-6)
    lp.sum().backward()
    assert x.grad.tolist()[0] == pytest.approx([-0.25, 0.25], abs=1e-6)
    # at temperature 2 the logits are halved: softmax of (0, ln 3 / 2), gradient halved too
    x.grad = None
    lp, _ = tl.token_logprobs(x, torch.tensor([1]), temperature=2.0)
    lp.sum().backward()
    p1 = 3 ** 0.5 / (1 + 3 ** 0.5)
    assert x.grad.tolist()[0] == pytest.approx([-(1 - p1) / 2, (1 - p1) / 2], abs=1e-6)
