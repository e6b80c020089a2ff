"""What a benchmark figure was measured on: the CPU, its vector extensions and its measured fp32
matmul rate (machines of the same kind differ 3x or more, AVX-512 or not).

    machine(threads=1)  -> {"cpu": "Intel Xeon ...", "cores": 2, "vector": "avx512f", "matmul_gflops": 128.4, ...}
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["machine", "matmul_gflops", "describe"]

MATMUL_SIZE = 2048
MATMUL_TIMES = 5
_VECTOR = ("avx512f", "avx2", "avx", "sse4_2", "asimd", "neon")  # the widest one present is named


def matmul_gflops(device: torch.device | None = None, threads: int | None = None) -> float:
    """Median fp32 GFLOP/s of square MATMUL_SIZE matmuls (on ``threads`` torch threads, if given)."""
    device = device or torch.device("cpu")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device) for _ in range(2))
        a @ b  # warm-up
        times = []
        for _ in range(MATMUL_TIMES):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * MATMUL_SIZE**3 / statistics.median(times) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(threads: int | None = None) -> dict[str, Any]:
    """The CPU's name, core count, widest vector extension and fp32 matmul rate (Linux /proc for
    the first three; what it cannot read is None)."""
    cpu, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu is None:
                cpu = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "vector": next((f for f in _VECTOR if f in flags), None),
        "matmul_threads": threads or torch.get_num_threads(),
        "matmul_gflops": round(matmul_gflops(threads=threads), 1),
    }


def describe(info: dict[str, Any]) -> str:
    """``Intel Xeon ..., 2 cores, avx512f, fp32 matmul 128 GFLOP/s on 1 thread``."""
    threads = info["matmul_threads"]
    return (
        f"{info['cpu'] or 'unknown CPU'}, {info['cores']} cores, {info['vector'] or 'no known vector extension'}, "
        f"fp32 matmul {info['matmul_gflops']:.0f} GFLOP/s on {threads} thread{'s' if threads != 1 else ''}"
    )
