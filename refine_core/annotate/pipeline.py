"""`annotate_dataset`: the entry point of the annotation engine (online or batch run)."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

from refine_core.annotate.batch import BatchRun, read_job_files
from refine_core.annotate.run import AnnotationProgress, AnnotationRun
from refine_core.annotate.selection import run_header
from refine_core.annotate.store import AnnotationStore
from refine_core.config import AnnotateSettings
from refine_core.dataset import RobotDataset
from refine_core.errors import UsageError
from refine_core.teacher import Teacher


def annotate_dataset(dataset: RobotDataset, teacher: Teacher, out: str | Path, settings: AnnotateSettings,
                     shard: tuple[int, int] = (0, 1),
                     on_progress: Callable[[AnnotationProgress], None] | None = None) -> AnnotationProgress:
    """Annotate (or resume annotating) `dataset` into `out`; returns what this run did."""
    if teacher.batch is None:
        if jobs := read_job_files(out, teacher.identity.key()):
            raise UsageError(f"{out} has {len(jobs)} batch jobs submitted by a batch-mode run and not yet "
                             "collected; "
                             f"run with the teacher in batch mode again to collect them, or delete "
                             f"{Path(out) / 'batches'} to ask their steps online")
    store = AnnotationStore.open(out, run_header(dataset, teacher.identity, settings))
    if teacher.batch is not None:
        run: AnnotationRun = BatchRun(dataset, teacher, store, settings, shard, on_progress)
    else:
        run = AnnotationRun(dataset, teacher, store, settings, shard, on_progress)
    try:
        return asyncio.run(run.run())
    finally:
        store.close(price=run.price)
