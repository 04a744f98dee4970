"""Run ours and the peer side by side, taking turns, so background load hits both alike.

The machines these benchmarks run on share two cores with other work, and a run of one
side then the other can see twice the load on one of them. `Baton` runs each side in
its own thread but lets only one compute at a time: a side hands the turn over at
natural boundaries (the end of a training step, the start of a forward pass) and
waits for it to come back. Each side's time is the sum of its own turns ("segments"),
so waiting never counts, and consecutive segments of the two sides are seconds apart.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import torch


class Baton:
    """Two or more named workers in threads; only the holder of the turn runs.

    Turns go round in cycles. With ``alternate``, every other cycle swaps the first two
    workers (ours, peer | peer, ours | ours, peer ...: an ABBA order), so neither side
    always runs right after the same neighbour; a worker whose turn comes twice in a
    row just carries on (its time is still split into two segments).
    """

    def __init__(self, names: list[str], *, alternate: bool = False):
        self.names = list(names)
        self.alternate = alternate
        self._cv = threading.Condition()
        self._turn = self.names[0]
        self._queue = self.names[1:]
        self._cycle = 0
        self._done: set[str] = set()
        self._since: dict[str, float] = {}
        self._local = threading.local()
        self.segments: dict[str, list[float]] = {n: [] for n in self.names}

    def _acquire(self, name: str) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._turn == name)
        self._since[name] = time.perf_counter()

    def _next(self, current: str) -> str:
        if all(n in self._done for n in self.names):
            return current
        while True:
            if not self._queue:
                self._cycle += 1
                order = list(self.names)
                if self.alternate and self._cycle % 2:
                    order[:2] = order[1::-1]
                self._queue = order
            name = self._queue.pop(0)
            if name not in self._done:
                return name

    def _release(self, name: str, finished: bool = False) -> None:
        self.segments[name].append(time.perf_counter() - self._since[name])
        with self._cv:
            if finished:
                self._done.add(name)
            self._turn = self._next(name)
            self._cv.notify_all()

    def current(self) -> str | None:
        """The worker name of the calling thread (None outside `run`)."""
        return getattr(self._local, "name", None)

    def switch(self) -> None:
        """Hand the turn to the next worker and wait for it to come back (no-op outside `run`)."""
        name = self.current()
        if name is None:
            return
        self._release(name)
        self._acquire(name)

    def run(self, work: dict[str, Callable[[], object]]) -> dict[str, object]:
        """Run every worker to its end; return their results (re-raising the first error)."""
        if list(work) != self.names:
            raise ValueError(f"work for {list(work)}, baton for {self.names}")
        results: dict[str, object] = {}
        errors: dict[str, BaseException] = {}

        def body(name: str, fn: Callable[[], object]) -> None:
            self._local.name = name
            self._acquire(name)
            try:
                results[name] = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors[name] = e
            finally:
                self._release(name, finished=True)

        threads = [threading.Thread(target=body, args=(n, work[n]), name=f"bench-{n}") for n in self.names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            name, err = next(iter(errors.items()))
            raise RuntimeError(f"benchmark side {name!r} failed: {err}") from err
        return results

    def total(self, name: str) -> float:
        """Seconds the worker computed (the sum of its turns)."""
        return sum(self.segments[name])


class SwitchOnForward:
    """While active, every call of a module matching ``is_boundary`` hands the turn over.

    A module-level forward pre-hook (all modules, all threads; a no-op outside the
    baton's workers). It fires only for modules called through ``__call__``: the
    sentence-transformers ``Transformer`` module calls its HF model's ``forward``
    directly, so hook a submodule both sides call, e.g. the model's embeddings.
    """

    def __init__(self, baton: Baton, is_boundary: Callable[[torch.nn.Module], bool]):
        self.baton, self.is_boundary, self._handle = baton, is_boundary, None
        self.count = 0

    def __enter__(self) -> "SwitchOnForward":
        def hook(module, args):
            if self.is_boundary(module):
                self.count += 1
                self.baton.switch()

        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()


def is_text_embeddings(module: torch.nn.Module) -> bool:
    """The embeddings block of a BERT-like encoder: called once per forward pass."""
    return hasattr(module, "word_embeddings") and type(module).__name__.endswith("Embeddings")
