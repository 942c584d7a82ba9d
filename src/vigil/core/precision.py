"""The trainer's precision where a task asks for bfloat16 mixed precision: on a CPU only where it is fast.

A CPU with bfloat16 instructions (AVX512-BF16, AMX) runs a bf16 autocast matrix product about twice as fast as
float32; a CPU without them emulates it and runs it several times slower. Lightning's `precision` has no such
choice of its own, so a task's config names `${vigil_bf16_where_fast:${trainer.accelerator}}` and the resolved
value is what the run's config records.
"""

from __future__ import annotations

import torch

BF16 = "bf16-mixed"
FLOAT32 = "32-true"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def bf16_where_fast(accelerator: str) -> str:
    """`bf16-mixed`, except `32-true` for a run on a CPU without bfloat16 instructions."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return FLOAT32 if on_cpu and not cpu_has_fast_bf16() else BF16
