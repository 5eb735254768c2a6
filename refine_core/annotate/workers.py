"""`annotate.workers` N: N shard processes annotating into one OUT, with one progress display and
one summary in the parent.

Why processes: an SDK client spends CPU on every request (google-genai ≈ 9 ms converting
requests and answers), so one process tops out near 115 requests/s whatever the concurrency;
each worker brings its own core. The workers are ordinary shard runs (`selection.shard_of`,
the store's per-process journal, the manifest merged under a file lock), so an interrupted
multi-worker run resumes like any run, with any number of workers. Worker k of N within
`--shard i/n` runs shard i + k·n of n·N: together exactly the episodes of shard i/n.

`concurrency`, `requests_per_minute` and `tokens_per_minute` stay totals: they are split
between the workers (an API's limits are per key, not per process). Workers are started with
`spawn` (never fork a process that may hold TensorFlow or SDK threads), and each builds its own
dataset and teacher from a picklable `build` callable.
"""
from __future__ import annotations

import multiprocessing
import queue as queue_module
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from refine_core.annotate.pipeline import annotate_dataset
from refine_core.annotate.run import AnnotationProgress
from refine_core.annotate.selection import run_header
from refine_core.annotate.store import check_out_dir
from refine_core.config import AnnotateSettings, RunConfig
from refine_core.errors import RefineError, UsageError

Build = Callable[..., tuple[Any, Any]]  # (*args) → (dataset, teacher), importable by name
REPORT_SECONDS = 0.2  # how often a worker sends its progress
_SUMMED = [f.name for f in fields(AnnotationProgress)
           if f.name not in ("started", "failures", "producer_done")]


def worker_shards(shard: tuple[int, int], workers: int) -> list[tuple[int, int]]:
    """The shards of `workers` processes that together are `shard`."""
    index, count = shard
    return [(index + k * count, count * workers) for k in range(workers)]


def worker_settings(settings: AnnotateSettings, workers: int, k: int) -> AnnotateSettings:
    """Worker k's share of the totals (at least one request in flight each)."""
    share = settings.concurrency // workers + (k < settings.concurrency % workers)
    per = {key: getattr(settings, key) / workers
           for key in ("requests_per_minute", "tokens_per_minute") if getattr(settings, key) is not None}
    return settings.model_copy(update={"concurrency": max(share, 1), "workers": 1, **per})


def merge_progress(parts: list[AnnotationProgress | None], started: float) -> AnnotationProgress:
    """The workers' progress as one run's: counts summed, failures joined, done when all are."""
    merged = AnnotationProgress(started=started)
    known = [p for p in parts if p is not None]
    for name in _SUMMED:
        setattr(merged, name, sum(getattr(p, name) for p in known))
    merged.failures = [f for p in known for f in p.failures]
    merged.producer_done = len(known) == len(parts) and all(p.producer_done for p in known)
    return merged


def build_from_config(config: dict[str, Any]) -> tuple[Any, Any]:
    """The dataset and teacher of a run config (what `refine annotate` and `refine run` build)."""
    from refine_core.registry import get_registry

    cfg, registry = RunConfig.model_validate(config), get_registry()
    teacher = registry.build("teacher", cfg.teacher.name, cfg.teacher.options)
    return registry.build("dataset", cfg.dataset.name, cfg.dataset.options), teacher


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if isinstance(exc, RefineError) and text:
        return text[0]
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _worker(k: int, build: Build, build_args: tuple, out: str, settings: AnnotateSettings,
            shard: tuple[int, int], reports: Any) -> None:
    last = 0.0

    def report(stats: AnnotationProgress) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= REPORT_SECONDS:
            last = now
            # failures travel once, with the final stats; progress needs only their count
            reports.put(("progress", k, AnnotationProgress(**{**stats.__dict__, "failures": []})))

    try:
        dataset, teacher = build(*build_args)
        stats = annotate_dataset(dataset, teacher, out, settings, shard, on_progress=report)
        reports.put(("done", k, stats))
    except BaseException as exc:  # KeyboardInterrupt included: the parent reports it as one line
        reports.put(("error", k, _one_line(exc)))


def check_workers(dataset: Any, teacher: Any, out: str | Path, settings: AnnotateSettings) -> None:
    """Refuse, once in the parent, what every worker would refuse (a foreign OUT, batch mode)."""
    if teacher.batch is not None:
        raise UsageError("annotate.workers > 1 is for online teachers: a batch-mode teacher waits on jobs, "
                         "not on the CPU; set annotate.workers=1")
    check_out_dir(Path(out), run_header(dataset, teacher.identity, settings))


def annotate_with_workers(build: Build, build_args: tuple, out: str | Path, settings: AnnotateSettings,
                          shard: tuple[int, int] = (0, 1),
                          on_progress: Callable[[AnnotationProgress], None] | None = None
                          ) -> AnnotationProgress:
    """Run `settings.workers` shard processes of `shard` into `out`; their merged progress.
    `build(*build_args)` must be importable by name (workers are spawned)."""
    workers = settings.workers
    on_progress = on_progress or (lambda stats: None)
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    reports = context.Queue()
    shards = worker_shards(shard, workers)
    processes = [context.Process(target=_worker, name=f"refine-annotate-{k}", daemon=True,
                                 args=(k, build, build_args, str(out), worker_settings(settings, workers, k),
                                       shards[k], reports))
                 for k in range(workers)]
    latest: list[AnnotationProgress | None] = [None] * workers
    finished: dict[int, str | None] = {}  # worker → None (done) or its error line

    def handle(kind: str, k: int, payload: Any) -> None:
        if kind == "error":
            finished[k] = payload
            return
        latest[k] = payload
        if kind == "done":
            finished[k] = None
        on_progress(merge_progress(latest, started))

    try:
        for process in processes:
            process.start()
        while len(finished) < workers:
            try:
                handle(*reports.get(timeout=0.5))
                continue
            except queue_module.Empty:
                pass
            dead = [k for k, p in enumerate(processes) if k not in finished and not p.is_alive()]
            if dead:  # killed without a word (OOM killer, kill -9), or its last words still in the pipe
                time.sleep(0.5)
                while True:
                    try:
                        handle(*reports.get_nowait())
                    except queue_module.Empty:
                        break
                for k in dead:
                    finished.setdefault(k, f"exited with code {processes[k].exitcode} before finishing")
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()
    errors = [(k, line) for k, line in sorted(finished.items()) if line is not None]
    if errors:
        k, line = errors[0]
        more = f" ({len(errors) - 1} more workers failed)" if len(errors) > 1 else ""
        raise RefineError(f"annotate worker {k} (shard {shards[k][0]}/{shards[k][1]}) failed: {line}{more}; "
                    f"what the workers answered is kept in {out}: run again to resume")
    merged = merge_progress(latest, started)
    on_progress(merged)
    return merged
