"""Data parallelism with existing engines: one process per device under `torchrun`, parameters sharded
with PyTorch FSDP (fully_shard, per decoder layer) or replicated with DDP. Without torchrun: one process.

State dicts always travel as full, unsharded CPU tensors, so a checkpoint written by 2 processes resumes
on 1 (or 4) and the final model is an ordinary checkpoint directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
Strategy = Literal["fsdp", "ddp"]  # sharded parameters, or replicas


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a copy on the input's device; the input is left alone). NCCL reduces CUDA
        tensors only, so a CPU tensor makes the trip through the current GPU there."""
        value = value.detach().clone()
        if self.world > 1:
            nccl = dist.get_backend() == "nccl"
            moved = value.cuda() if nccl else value
            dist.all_reduce(moved)
            value = moved.to(value.device)
        return value

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (any picklable object), in rank order."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown(group: Dist) -> None:
    if group.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(net: nn.Module, group: Dist, strategy: Strategy) -> nn.Module:
    """FSDP: every vision and decoder layer its own shard unit, the rest (embeddings, projector, head) the
    root's. DDP: replicas; unused parameters are allowed (a text-only batch leaves the projector idle)."""
    if group.world == 1:
        return net
    if strategy == "ddp":
        ids = [group.local_rank] if next(net.parameters()).is_cuda else None
        return nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)
    from torch.distributed.fsdp import fully_shard

    for layer in [*net.vision_tower.encoder.layers, *net.language_model.layers]:
        fully_shard(layer)
    fully_shard(net)
    return net


def full_model_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict (a collective: every rank calls it)."""
    return get_model_state_dict(net, options=FULL)


def full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return get_optimizer_state_dict(net, optimizer, options=FULL)


def load_full_state(net: nn.Module, optimizer: torch.optim.Optimizer | None, model: dict, optim: dict | None) -> None:
    """Load full state dicts into a (possibly sharded) model; `model` may hold only the trained tensors."""
    set_model_state_dict(net, model, options=StateDictOptions(full_state_dict=True, strict=False))
    if optimizer is not None and optim is not None:
        set_optimizer_state_dict(net, optimizer, optim, options=StateDictOptions(full_state_dict=True))
