"""One step ahead: the next step's batch is drawn and collated in a background thread while this
step trains.

Reading the stream, resizing and tokenising are Python work on the training thread otherwise; the
forward and backward pass release the GIL (torch kernels, CUDA launches), so the two overlap. The
steps are prepared strictly in order, one at a time, by one thread, so the stream is consumed exactly
as without prefetching: the same batches, the same positions in checkpoints, bit-identical training.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class StepPrefetcher(Generic[T]):
    """`get(step)` returns `prepare(step)` and starts `prepare(step + 1)` in the background (up to
    `last_step`). Steps must be asked for in order; `enabled=False` prepares each on the caller's
    thread. An error raised while preparing a step is raised by the `get` of that step."""

    def __init__(self, prepare: Callable[[int], T], last_step: int, enabled: bool = True):
        self._prepare, self._last = prepare, last_step
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="refine-prefetch") if enabled else None
        self._pending: tuple[int, Future] | None = None

    def get(self, step: int) -> T:
        if self._pending is not None:
            ahead, future = self._pending
            self._pending = None
            if ahead != step:  # a caller bug: the stream has already moved past `ahead`'s samples
                raise RuntimeError(f"prefetched step {ahead}, asked for step {step}")
            prepared = future.result()
        else:
            prepared = self._prepare(step)
        if self._pool is not None and step < self._last:
            self._pending = (step + 1, self._pool.submit(self._prepare, step + 1))
        return prepared

    def close(self) -> None:
        """Wait for a step still being prepared (its batch is dropped; nothing is saved from it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending = None

    def __enter__(self) -> StepPrefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
