"""Where a model runs: `auto` (this process's CUDA device, else Apple MPS, else the CPU) or an explicit torch device
string such as `cuda:1`, `cuda`, `mps` or `cpu`.

Under torchrun / accelerate launch, `auto` means the GPU of this process's LOCAL_RANK, as accelerate places it, so
every rank loads its own copy straight onto its own device.
"""
from __future__ import annotations

import os

import torch

AUTO = "auto"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = AUTO) -> torch.device:
    """A concrete torch.device (CUDA devices always with their index); a clear ValueError for one that is absent."""
    if isinstance(device, torch.device):
        spec = str(device)
    else:
        spec = (device or AUTO).strip().lower()
    if spec == AUTO:
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0") or 0)
            return torch.device("cuda", local % torch.cuda.device_count())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        parsed = torch.device(spec)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}, built for CUDA {torch.version.cuda}); use auto or cpu")
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if parsed.index is None else parsed.index
        if index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    if parsed.type == "mps" and not _mps_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use auto or cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: supported are auto, cpu, cuda, cuda:N and mps")
    return parsed


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls are fast (not emulated) on `device`: CUDA compute capability 8+ (Ampere on) or ROCm,
    CPUs with AVX512-BF16 or AMX. MPS is left in fp32."""
    if device.type == "cuda":
        if torch.version.hip:
            return True
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False
