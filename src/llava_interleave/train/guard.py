"""Steps that must not reach the weights, and weights that must not reach the disk.

One NaN applied by the optimiser poisons every weight and every checkpoint after it, and a run that goes on
exits 0 with a useless model. So each step's loss and gradient norm are judged before the optimiser applies
them: a non-finite value, or an exploding loss (over `optim.max_loss`, or over `optim.loss_spike` times the
median of recent steps), stops the run with the last checkpoint untouched, or, with
`optim.skip_bad_steps=true`, leaves the weights as they were and counts the step. Checkpoints and the final
model are checked to be finite before they are written, whatever the loss said.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InterleaveError

SPIKE_WINDOW = 100  # good steps whose median loss a spike is measured against
SPIKE_MIN_STEPS = 10  # no spike is judged before this many good steps


class TrainingDiverged(InterleaveError):
    """The loss or the weights stopped being usable numbers; nothing after the last checkpoint is kept."""

    reason = "diverged"


@dataclass
class LossGuard:
    """Judges each step's loss; its state (recent losses, steps skipped) travels in checkpoints, so a resumed
    run judges exactly as an uninterrupted one."""

    max_loss: float | None = None
    spike: float | None = None
    recent: list[float] = field(default_factory=list)
    bad_steps: int = 0  # skipped under optim.skip_bad_steps

    def problem(self, loss: float, grad_norm: float) -> str | None:
        """Why this step must not update the weights, or None."""
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if not math.isfinite(grad_norm):
            return f"the gradient norm is {grad_norm}"
        if self.max_loss is not None and loss > self.max_loss:
            return f"the loss {loss:.4g} is over optim.max_loss={self.max_loss:g}"
        if self.spike is not None and len(self.recent) >= SPIKE_MIN_STEPS:
            median = statistics.median(self.recent)
            if loss > self.spike * median:
                return (f"the loss {loss:.4g} is over optim.loss_spike={self.spike:g} times the median {median:.4g} "
                        f"of the last {len(self.recent)} steps")
        return None

    def accept(self, loss: float) -> None:
        """Remember a good step's loss for the spike test."""
        self.recent = [*self.recent, loss][-SPIKE_WINDOW:]

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "bad_steps": self.bad_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent, self.bad_steps = list(state["recent"]), int(state["bad_steps"])


def nonfinite(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in a state dict that hold a NaN or an infinity."""
    return [name for name, value in state.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
