"""The vision tower's gradient checkpointing (on under `grad_checkpointing=true`) changes memory, not results."""

from __future__ import annotations

import torch

from llava_interleave.config import VisionConfig
from llava_interleave.model.vision_tower import VisionTower

TINY = VisionConfig(image_size=28, patch_size=7, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)


def _output_and_grads(tower: VisionTower, pixels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    tower.zero_grad(set_to_none=True)
    pixels = pixels.clone().requires_grad_(True)
    out = tower(pixels)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), {"pixels": pixels.grad, **{name: p.grad for name, p in tower.named_parameters()}}


def _saved_for_backward(tower: VisionTower, pixels: torch.Tensor) -> int:
    """How many tensors one forward pass keeps for the backward pass (outside checkpointed layers)."""
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        tower(pixels)
    return len(saved)


def test_checkpointed_tower_gives_the_same_output_and_gradients():
    torch.manual_seed(0)
    tower = VisionTower(TINY).train()
    pixels = torch.randn(3, 3, 28, 28)
    plain_out, plain_grads = _output_and_grads(tower, pixels)
    plain_saved = _saved_for_backward(tower, pixels)
    tower.gradient_checkpointing = True
    out, grads = _output_and_grads(tower, pixels)
    assert torch.allclose(out, plain_out, atol=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-6), name
    assert _saved_for_backward(tower, pixels) < plain_saved / 4  # the layers' activations are recomputed instead
    assert _saved_for_backward(tower.eval(), pixels) == plain_saved  # evaluation never recomputes
