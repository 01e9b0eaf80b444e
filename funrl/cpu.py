"""What this CPU offers the training code: its model name, its vector extensions, native bf16 or not.

bf16 matrix products run natively only with AVX-512-BF16 or AMX; elsewhere oneDNN emulates them, and
`scripts/bench_machine.py` measured that emulation at 0.1-0.5 GFLOP/s on an AVX2 host (fp32: 8-39), so
`optim.autocast=auto` of `python -m funrl.sft` picks bf16 only where `native_bf16()` is true.
"""

from __future__ import annotations

import platform
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_model_and_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in ``cpuinfo``; (platform.processor(), empty) where there is none."""
    first: dict[str, str] = {}
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            first.setdefault(key.strip(), value.strip())
    return first.get("model name", platform.processor()), frozenset(first.get("flags", "").split())


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU computes bf16 matrix products in hardware (AVX-512-BF16 or AMX-BF16)."""
    return any(f in cpu_model_and_flags(cpuinfo)[1] for f in NATIVE_BF16_FLAGS)
