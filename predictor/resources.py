"""Device, dtype and CPU-thread choices that fit the container, not the host."""

from __future__ import annotations

import math
import os
from pathlib import Path

ONEDNN_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def bound_onednn_cache(capacity: int) -> None:
    """oneDNN (torch's CPU kernels) caches a primitive per op shape, each with its own reordered
    weights (megabytes); packed or padded batches make new shapes on most passes, so its default
    1024 entries grew the predictor by over a gigabyte. A few dozen keep repeated shapes fast. Read
    once, when torch loads: set it before."""
    import sys

    if "torch" in sys.modules:
        raise RuntimeError(f"{ONEDNN_CACHE_VARIABLE} must be set before torch is imported")
    os.environ[ONEDNN_CACHE_VARIABLE] = str(capacity)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fix_mmap_threshold(threshold_bytes: int) -> bool:
    """Serves allocations over `threshold_bytes` from their own mappings, returned on free. glibc
    otherwise raises its threshold after the first large free (up to 32 MiB), so every batch's
    activations of a new size land in the heap, which fragments and grows pass after pass. 0 keeps
    glibc's dynamic threshold. Returns whether it was set (glibc only)."""
    if threshold_bytes <= 0:
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):
        return False


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit(
    cpu_max: Path = CGROUP_CPU_MAX,
    v1_quota: Path = CGROUP_V1_QUOTA,
    v1_period: Path = CGROUP_V1_PERIOD,
) -> float | None:
    """CPUs allowed by the container's CFS quota, or None when unlimited or unknown."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1_quota.read_text())
        if quota_us > 0:
            return quota_us / int(v1_period.read_text())
    except (OSError, ValueError):
        pass
    return None


def fit_thread_count(requested: int = 0, cpu_limit: float | None = None) -> int:
    """Threads for torch: the explicit request, else the CPU quota (rounded up), else the CPUs
    this process may run on. A pod limited to 2 CPUs on a 64-core node gets 2, not 64."""
    if requested > 0:
        return requested
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    available = available or 1
    if cpu_limit is None:
        cpu_limit = cgroup_cpu_limit()
    if cpu_limit is not None:
        available = min(available, max(1, math.ceil(cpu_limit)))
    return available


# Device nodes of the NVIDIA driver and of ROCm: without them torch cannot see a GPU, so `auto` is the
# CPU and no torch import is needed to know it (the OpenVINO runtime never imports torch).
GPU_DEVICE_NODES = (Path("/dev/nvidiactl"), Path("/dev/kfd"))


def resolve_device(device: str, gpu_nodes: tuple[Path, ...] = GPU_DEVICE_NODES) -> str:
    if device == "auto":
        if not any(node.exists() for node in gpu_nodes):
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return device


DTYPES = ("float32", "float16", "bfloat16", "int8")


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` is fp16 on GPU (tensor cores), bf16 on a CPU that computes it natively (avx512_bf16 or
    AMX; the runtime then checks it against fp32, see precision.py) and fp32 on other CPUs (emulated
    bf16 and fp16 matmuls are slower there). int8 means a quantized OpenVINO IR and is never automatic."""
    from predictor.precision import cpu_has_native_bf16

    if dtype == "auto":
        if device.startswith("cuda"):
            return "float16"
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {DTYPES}, got {dtype!r}")
    return dtype
