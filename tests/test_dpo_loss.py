"""DPO loss: exact formula on hand numbers, diagnostics, log-prob gathering, gradient direction."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from llava_interleave.train.dpo_loss import (
    DPOOutput,
    dpo_loss,
    dpo_objective,
    sequence_logprobs,
    split_concatenated,
)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _neg_logsigmoid(x: float) -> float:
    return math.log(1.0 + math.exp(-x))


def test_loss_matches_hand_formula():
    pc, pr, rc, rr = _t(-10.0, -4.0), _t(-12.0, -3.0), _t(-11.0, -5.0), _t(-11.5, -3.5)
    out = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # pair 0: (-10 - -12) - (-11 - -11.5) = 2 - 0.5 = 1.5; pair 1: (-4 - -3) - (-5 - -3.5) = -1 + 1.5 = 0.5
    expected = (_neg_logsigmoid(0.1 * 1.5) + _neg_logsigmoid(0.1 * 0.5)) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(out.chosen_rewards, _t(0.1 * 1.0, 0.1 * 1.0))
    assert torch.allclose(out.rejected_rewards, _t(0.1 * -0.5, 0.1 * 0.5))


def test_zero_logit_gives_log_two():
    x = _t(-3.0, -7.0)
    out = dpo_loss(x, x, x, x)
    assert out.loss.item() == pytest.approx(math.log(2.0), abs=1e-12)
    assert out.reward_accuracy.item() == 0.0
    assert out.margin.item() == 0.0


def test_reward_accuracy_and_margin():
    pc, pr = _t(-1.0, -2.0, -3.0, -4.0), _t(-2.0, -1.0, -3.0, -6.0)
    rc, rr = _t(-2.0, -2.0, -3.0, -4.0), _t(-2.0, -2.0, -2.0, -4.0)
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    chosen = [0.5 * 1.0, 0.0, 0.0, 0.0]
    rejected = [0.0, 0.5 * 1.0, 0.5 * -1.0, 0.5 * -2.0]
    assert torch.allclose(out.chosen_rewards, _t(*chosen))
    assert torch.allclose(out.rejected_rewards, _t(*rejected))
    assert out.reward_accuracy.item() == pytest.approx(3 / 4)  # pairs 0, 2, 3
    assert out.margin.item() == pytest.approx(sum(c - r for c, r in zip(chosen, rejected)) / 4)


def test_output_is_frozen():
    x = _t(0.0)
    out = dpo_loss(x, x, x, x)
    assert isinstance(out, DPOOutput)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.loss = x  # type: ignore[misc]


def test_sequence_logprobs_matches_manual_gather():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.tensor([[-100, 3, 1, -100, 6], [-100, -100, 0, 2, -100]])
    got = sequence_logprobs(logits, labels)
    logp = torch.log_softmax(logits, dim=-1)
    expected = []
    for b in range(2):
        total = 0.0
        for t in range(1, 5):
            if labels[b, t] != -100:
                total += logp[b, t - 1, labels[b, t]].item()
        expected.append(total)
    assert torch.allclose(got.double(), _t(*expected), atol=1e-6)


def test_sequence_logprobs_all_ignored_is_zero():
    logits = torch.randn(1, 4, 3)
    labels = torch.full((1, 4), -100)
    assert sequence_logprobs(logits, labels).item() == 0.0


def test_gradient_descent_increases_chosen_log_ratio():
    pc = _t(-5.0, -8.0).requires_grad_()
    pr, rc, rr = _t(-6.0, -7.0), _t(-5.5, -7.5), _t(-6.0, -7.0)
    before = ((pc - pr) - (rc - rr)).detach().clone()
    out = dpo_loss(pc, pr, rc, rr, beta=0.1)
    out.loss.backward()
    assert (pc.grad < 0).all()  # loss falls as chosen log-prob rises
    with torch.no_grad():
        pc -= 1.0 * pc.grad
    after = (pc - pr) - (rc - rr)
    assert (after > before).all()
    assert dpo_loss(pc, pr, rc, rr, beta=0.1).loss.item() < out.loss.item()


def test_reference_gets_no_gradient():
    rc = _t(-1.0).requires_grad_()
    out = dpo_loss(_t(-1.0).requires_grad_(), _t(-2.0), rc, _t(-2.0))
    out.loss.backward()
    assert rc.grad is None


def test_beta_scales_rewards_and_sharpens_loss():
    pc, pr, rc, rr = _t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0)  # logit = 2 - 0 = 2
    small, large = dpo_loss(pc, pr, rc, rr, beta=0.1), dpo_loss(pc, pr, rc, rr, beta=1.0)
    assert torch.allclose(large.chosen_rewards, 10 * small.chosen_rewards)
    assert large.margin.item() == pytest.approx(10 * small.margin.item())
    assert small.loss.item() == pytest.approx(_neg_logsigmoid(0.2))
    assert large.loss.item() == pytest.approx(_neg_logsigmoid(2.0))
    assert large.loss.item() < small.loss.item()  # a correct preference costs less at higher beta


def test_objective_combines_terms():
    x = _t(-1.0)
    out = dpo_loss(x, x, x, x)
    nll = torch.tensor(2.5, dtype=torch.float64)
    assert dpo_objective(out, nll).item() == pytest.approx(math.log(2.0))
    assert dpo_objective(out, nll, alpha=0.5, gamma=2.0).item() == pytest.approx(0.5 * math.log(2.0) + 5.0)


def test_split_concatenated_chosen_first():
    chosen, rejected = split_concatenated(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert chosen.tolist() == [1.0, 2.0, 3.0]
    assert rejected.tolist() == [4.0, 5.0, 6.0]
    with pytest.raises(ValueError):
        split_concatenated(torch.zeros(3))
