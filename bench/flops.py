"""The machine's fp32 matmul ceiling: repeated ``torch.mm`` of two n×n matrices."""

from __future__ import annotations

import time

import torch


class MatmulProbe:
    """Repeated ``torch.mm`` of two n×n fp32 matrices; `window` returns GFLOP/s of one window."""

    def __init__(self, n: int = 1024):
        self.n = n
        self.a, self.b, self.out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        torch.mm(self.a, self.b, out=self.out)  # warm-up

    def window(self, seconds: float) -> float:
        count, t0 = 0, time.perf_counter()
        while count == 0 or time.perf_counter() - t0 < seconds:
            torch.mm(self.a, self.b, out=self.out)
            count += 1
        return 2 * self.n ** 3 * count / (time.perf_counter() - t0) / 1e9


def matmul_peak_gflops(n: int = 1024, seconds: float = 1.0, reps: int = 3) -> float:
    """Best GFLOP/s of ``reps`` windows of ``seconds`` each (2·n³ FLOPs per product)."""
    probe = MatmulProbe(n)
    return max(probe.window(seconds) for _ in range(reps))
