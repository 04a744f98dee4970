"""The numeric precision of no-gradient encoding: ``auto``, ``fp32`` or ``bf16``.

Every pass that needs no gradient (teacher vectors, evaluation, the least-squares fit
of ``W``, the held-out P@1 probe, the no-gradient pass of gradient caching) can run in
bfloat16 where the hardware has bf16 matrix units: Intel AMX-BF16, AVX512-BF16 (Intel
and AMD), or a CUDA GPU with bf16 support. ``auto`` picks bf16 on such a GPU; on a CPU with
those flags it also measures, once per process, a 1024² matmul in both dtypes and takes bf16
only when it is at least `BF16_MIN_SPEEDUP` times faster. The flags alone do not tell:
measured 2026-12-02 on two hosts of this machine kind, 2 threads, 2048² matmul: an AMD EPYC
with AVX512-BF16 ran bf16 at about 3× fp32 (student encoding 2.79×), an Intel Xeon with the
same flag at 0.59× (encoding 0.67×, `python -m bench.run --only encode_bf16`). Outputs are
always float32 arrays/tensors; only the arithmetic changes.

Two ways to run a forward pass in bf16, measured on the student (multilingual-e5-small,
64 German verses, max 64 tokens, 2 threads, AMD EPYC with AVX512-BF16, shared cores; median
of 10): fp32 1.34 s, bf16 weights 0.39 s, autocast 0.45 s; cosine to fp32 ≥ 0.99997 both.

- cast the weights to bf16 (``model.to(torch.bfloat16)``): the faster one, what
  `encoder.SentenceEncoder` does, since it owns an inference-only model (this also halves
  its weight memory; token vectors are pooled in float32);
- `torch.autocast` (`no_grad_precision`, `encode_no_grad`): for a model being trained,
  whose fp32 weights must stay as they are; no copy of the weights per step.

`make bench` (``encode_bf16``) measures the first against fp32 on 512 verses in eight languages.

Vectors of two precisions never mix: `cache_fingerprint` appends ``-bf16`` to a model's
cache key (fp32 keeps the bare fingerprint, so caches written before this setting
existed stay valid).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from .errors import MimoInputError

#: What the ``precision`` setting accepts.
PRECISIONS = ("auto", "fp32", "bf16")
#: What `resolve_precision` returns.
RESOLVED = ("fp32", "bf16")
#: CPU flags (``/proc/cpuinfo``) that mean bf16 matrix arithmetic in hardware.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")

CPUINFO = Path("/proc/cpuinfo")
#: ``auto`` takes bf16 on a CPU only where a bf16 matmul is at least this many times faster than fp32.
BF16_MIN_SPEEDUP = 1.3

log = logging.getLogger(__name__)


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (empty where unreadable)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _torch_cpu_bf16() -> bool:
    """torch's own probe, for systems without ``/proc/cpuinfo`` (private helpers, so guarded)."""
    cpu = getattr(torch, "cpu", None)
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # noqa: BLE001 - a probe that fails means "not known to have it"
            continue
    return False


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX-BF16 or AVX512-BF16)."""
    flags = cpu_flags()
    if flags:
        return any(f in flags for f in BF16_CPU_FLAGS)
    return _torch_cpu_bf16()


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup(n: int = 1024, reps: int = 5) -> float:
    """fp32 time over bf16 time of an ``n``² ``torch.mm`` on this CPU with torch's current threads
    (the two dtypes take turns; best of ``reps`` each, after a warm-up). Measured once per process
    (about 0.1–0.3 s)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    pairs = {dt: (a.to(dt), b.to(dt)) for dt in (torch.float32, torch.bfloat16)}
    best = {dt: float("inf") for dt in pairs}
    for dt, (x, y) in pairs.items():
        torch.mm(x, y)
    for _ in range(reps):
        for dt, (x, y) in pairs.items():
            t0 = time.perf_counter()
            torch.mm(x, y)
            best[dt] = min(best[dt], time.perf_counter() - t0)
    return best[torch.float32] / best[torch.bfloat16]


@functools.lru_cache(maxsize=None)
def _cpu_auto() -> str:
    if not cpu_has_bf16():
        return "fp32"
    speedup = cpu_bf16_speedup()
    choice = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    log.info("precision auto: a bf16 matmul runs %.2f× fp32 on this CPU (bf16 flags present; bf16 needs ≥ %.1f×): "
             "%s", speedup, BF16_MIN_SPEEDUP, choice)
    return choice


def _cuda_has_bf16(device: torch.device) -> bool:
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001 - no usable CUDA runtime
        return False


def check_precision(precision: str, *, source: str = "precision") -> str:
    """``precision`` itself if it is one of `PRECISIONS`, else a `MimoInputError` naming them."""
    if precision not in PRECISIONS:
        raise MimoInputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}",
                             source=source)
    return precision


def resolve_precision(precision: str, device: str | torch.device | None = None) -> str:
    """``"fp32"`` or ``"bf16"``: what ``precision`` means on ``device`` (None = CPU).

    ``auto`` is bf16 on a CUDA GPU with bf16 support and on a CPU with AMX-BF16 or
    AVX512-BF16 where a bf16 matmul measures at least `BF16_MIN_SPEEDUP` times faster than
    fp32 (`cpu_bf16_speedup`), fp32 anywhere else. ``fp32`` and ``bf16`` are taken as given
    (bf16 runs everywhere, emulated and slow without those units).
    """
    check_precision(precision)
    if precision != "auto":
        return precision
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cpu":
        return _cpu_auto()
    if dev.type == "cuda":
        return "bf16" if _cuda_has_bf16(dev) else "fp32"
    return "fp32"


def cache_fingerprint(fingerprint: str, precision: str) -> str:
    """A model's cache key at a resolved precision: the bare fingerprint for fp32, ``<fp>-bf16`` for bf16."""
    if precision not in RESOLVED:
        raise ValueError(f"cache_fingerprint needs a resolved precision {RESOLVED}, got {precision!r}: "
                         f"call resolve_precision first")
    return fingerprint if precision == "fp32" else f"{fingerprint}-{precision}"


def torch_dtype(precision: str) -> torch.dtype:
    """The weight dtype of a resolved precision."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


@contextlib.contextmanager
def no_grad_precision(precision: str, device: str | torch.device | None = None) -> Iterator[str]:
    """``torch.no_grad`` plus, where ``precision`` resolves to bf16, ``torch.autocast(bf16)``.

    Yields the resolved precision. For models whose fp32 weights must stay untouched (a
    model in training); an inference-only model is faster with its weights cast to bf16
    (`encoder.SentenceEncoder` does that). Cast the outputs with ``.float()``.
    """
    resolved = resolve_precision(precision, device)
    dev_type = torch.device(device).type if device is not None else "cpu"
    with torch.no_grad():
        if resolved == "bf16":
            with torch.autocast(dev_type, dtype=torch.bfloat16):
                yield resolved
        else:
            yield resolved


def encode_no_grad(forward: Callable[[], torch.Tensor], *, precision: str = "auto",
                   device: str | torch.device | None = None) -> torch.Tensor:
    """Run ``forward()`` without gradients in ``precision``; return its tensor as float32.

    The entry point for training code: e.g. gradient caching's first pass,
    ``encode_no_grad(lambda: model.embed(texts, "query"), precision="auto", device=model.device)``.
    The result is a float32 tensor that is not part of any graph (``requires_grad`` False),
    on the same device as ``forward`` put it.
    """
    with no_grad_precision(precision, device):
        out = forward()
    return out.float()
