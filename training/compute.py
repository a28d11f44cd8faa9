"""How a training step uses the hardware: precision, peak memory.  Nothing here changes the model.

bf16 autocast runs matmuls and convolutions in bfloat16 while weights, gradients, optimiser state and
the loss stay fp32 (no loss scaling needed: bf16 has fp32's exponent range).  It pays where the
hardware multiplies bf16 natively: CPUs with AVX512-BF16 or AMX, and CUDA GPUs since Ampere.
Elsewhere oneDNN emulates it and it is slower than fp32, so `auto` picks fp32 there.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import sys
from pathlib import Path

import torch

from training.config import Precision

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU flags name a native bf16 matmul instruction (Linux; False elsewhere)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return any(f in flags for f in NATIVE_BF16_FLAGS)
    return False


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """`auto` -> bf16 or fp32 for this device; an explicit bf16 on hardware without it is kept (slow)
    but said once on stderr."""
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = cpu_has_native_bf16()
    if precision is Precision.AUTO:
        return Precision.BF16 if native else Precision.FP32
    if precision is Precision.BF16 and not native:
        print(
            f"compute.precision=bf16: this {device.type} has no native bf16 matmul; "
            "it is emulated and slower than fp32",
            file=sys.stderr,
        )
    return precision


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The forward pass's precision context (a no-op for fp32)."""
    if precision is Precision.BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
