"""Shared pieces of the benchmarks: result rows, the results table, DuckDB, timing."""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

#: The bench names written to ``bench_results`` (DESIGN §2).
BENCHES = ("stage1_train", "stage2_train", "pipeline", "teacher_encode_cold", "teacher_encode_warm", "encode_bf16", "search")


@dataclass(frozen=True)
class Row:
    """One figure: ours against the peer on the same work. Higher is better for both."""

    bench: str
    metric: str
    ours: float
    peer: float
    note: str = ""

    @property
    def ratio(self) -> float:
        """ours / peer (> 1: ours is ahead)."""
        if self.peer == 0 or not math.isfinite(self.peer) or not math.isfinite(self.ours):
            return float("nan")
        return self.ours / self.peer

    def record(self) -> dict:
        return {"bench": self.bench, "metric": self.metric, "ours": float(self.ours),
                "peer": float(self.peer), "ratio": float(self.ratio)}


def write_rows(home: str | Path, rows: Sequence[Row]) -> int:
    """Append the rows to ``bench_results`` in ``<home>/mimo.duckdb``."""
    from mimo_pipeline.storage import ResultsDB

    return ResultsDB(Path(home) / "mimo.duckdb").append("bench_results", [r.record() for r in rows])


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "nan"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def format_table(rows: Iterable[Row]) -> str:
    """A plain-text table: bench, metric, ours, peer, ratio, and a note naming the peer."""
    rows = list(rows)
    head = ("bench", "metric", "ours", "peer", "ratio", "peer / note")
    body = [(r.bench, r.metric, _fmt(r.ours), _fmt(r.peer), f"{r.ratio:.2f}" if math.isfinite(r.ratio) else "nan",
             r.note) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head) - 1)]

    def line(cells):
        left = [str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(left) + "  " + str(cells[-1])

    sep = "  ".join("-" * w for w in widths) + "  " + "-" * 11
    return "\n".join([line(head), sep, *(line(b) for b in body)])


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Run ``fn`` once after a garbage collection; return (seconds, result)."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)
