"""DPO loss for LLaVA-NeXT-Interleave preference tuning (facts section 8).

Loss = alpha * mean(-logsigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))) + gamma * NLL(chosen).
Chosen and rejected answers are scored in one concatenated forward pass (chosen first), so the
helpers here work on per-sequence summed log-probabilities and split the concatenated batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass(frozen=True)
class DPOOutput:
    """DPO loss plus the diagnostics logged during training (rewards are detached-free tensors)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    reward_accuracy: torch.Tensor
    margin: torch.Tensor


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log-probs of the label tokens per sequence, shape (B,).

    Uses the causal shift (logits at position t predict the label at t + 1) and skips
    positions labelled -100 (prompt, image tokens, padding), so only the answer is scored.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    safe_labels = shifted_labels.masked_fill(~mask, 0)
    logp = torch.log_softmax(shifted_logits, dim=-1)
    token_logp = torch.gather(logp, 2, safe_labels.unsqueeze(-1)).squeeze(-1)
    return (token_logp * mask).sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> DPOOutput:
    """Sigmoid DPO loss on summed sequence log-probs, each of shape (B,).

    The reference log-probs come from a frozen copy, so they are detached to keep gradients
    flowing only into the policy.
    """
    ref_chosen = ref_chosen.detach()
    ref_rejected = ref_rejected.detach()
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    loss = (-F.logsigmoid(beta * logits)).mean()
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    with torch.no_grad():
        accuracy = (chosen_rewards > rejected_rewards).float().mean()
        margin = (chosen_rewards - rejected_rewards).mean()
    return DPOOutput(
        loss=loss,
        chosen_rewards=chosen_rewards.detach(),
        rejected_rewards=rejected_rewards.detach(),
        reward_accuracy=accuracy,
        margin=margin,
    )


def dpo_objective(dpo: DPOOutput, chosen_nll: torch.Tensor, alpha: float = 1.0, gamma: float = 0.0) -> torch.Tensor:
    """Total loss alpha * DPO + gamma * NLL on the chosen answer (the recipe uses gamma 0).

    The NLL term keeps the chosen answer's likelihood from collapsing when gamma > 0.
    """
    return alpha * dpo.loss + gamma * chosen_nll


def split_concatenated(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a (2B,) tensor from the concatenated chosen+rejected pass into (chosen, rejected).

    The batch is built chosen-first so one forward pass scores both halves.
    """
    if values.shape[0] % 2:
        raise ValueError(f"concatenated batch has odd size {values.shape[0]}; expected chosen then rejected")
    half = values.shape[0] // 2
    return values[:half], values[half:]
