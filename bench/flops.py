"""The machine's matmul ceiling (repeated ``torch.mm`` of two n×n matrices, fp32 or bf16)
and the matmul FLOPs of a BERT-like encoder's forward pass."""

from __future__ import annotations

import time
from typing import Iterable

import torch


class MatmulProbe:
    """Repeated ``torch.mm`` of two n×n matrices of ``dtype``; `window` returns GFLOP/s of one window."""

    def __init__(self, n: int = 1024, dtype: torch.dtype = torch.float32):
        self.n, self.dtype = n, dtype
        self.a, self.b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        self.out = torch.empty(n, n, dtype=dtype)
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


def encoder_forward_flops(config, shapes: Iterable[tuple[int, int]], *, attention: bool = True) -> int:
    """Matmul FLOPs of a BERT-like encoder's forward over batches of ``(rows, padded length)``.

    Per layer and batch of B rows × L tokens (H hidden, F feed-forward): the Q, K, V and
    output projections ``8·B·L·H²``, the feed-forward ``4·B·L·H·F``, attention scores and
    their weighted sum ``4·B·L²·H``. Padding counts (the hardware computes it); embedding
    look-ups, layer norms, softmax and pooling are left out (well under 1%). ``attention=False``
    drops the ``4·B·L²·H`` term: what ``FlopCounterMode`` sees on CPU, where it has no formula
    for ``_scaled_dot_product_flash_attention_for_cpu``.
    """
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    att = 4 * h if attention else 0
    return int(sum(layers * (b * n * (8 * h * h + 4 * h * f) + att * b * n * n) for b, n in shapes))
