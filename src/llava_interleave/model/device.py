"""Turn a device name (cpu, cuda, cuda:N, mps) into a `torch.device` that exists on this machine.

torch accepts `cuda:7` on a machine with one GPU, or `cuda` on a CPU-only build, and fails only later,
deep inside the first tensor move, with a traceback; checking here gives one line before any work.
"""

from __future__ import annotations

import torch

from ..errors import DeviceError

KNOWN = "cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The device `name` names (None: cuda when available, else cpu).

    Raises:
        DeviceError: the name is malformed, or the machine has no such device."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as err:
        raise DeviceError(f"unknown device {str(name)!r}: use {KNOWN}") from err
    if device.type == "cuda":
        _check_cuda(device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {str(name)!r}: this machine has no usable Apple GPU (MPS)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {str(name)!r} is not supported: use {KNOWN}")
    return device


def _check_cuda(device: torch.device) -> None:
    """A CUDA device must exist: a CPU-only build or a machine without a GPU has none."""
    count = torch.cuda.device_count()
    if count == 0:
        raise DeviceError(f"device '{device}': no CUDA GPU is available here, use cpu")
    if device.index is not None and device.index >= count:
        raise DeviceError(f"device '{device}': this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")


def free_memory_mb(device: torch.device) -> float | None:
    """Memory free for new tensors on `device` now, in MiB: the GPU's free memory on CUDA, the kernel's
    MemAvailable on a CPU (Linux); None where it cannot be known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**20
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as info:
                for line in info:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            return None
    return None
