"""`mlp2x_gelu` projector: Linear(vision C -> H), GELU, Linear(H -> H), both with biases."""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)
        self.act = nn.GELU()  # exact (erf) GELU, as "gelu" in both layouts
        self.linear_2 = nn.Linear(out_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))
