"""What the trainer prints: the run's summary before the first step and its progress bar."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from refine_core.training.checkpoint import CHECKPOINTS
from refine_core.training.freeze import print_parameter_table


def announce(trainer: Any, resume_from: Path | None) -> None:
    """The trainable-parameter table, then steps, batch shape, device, and where outputs go."""
    acc, s = trainer.accelerator, trainer.settings
    print_parameter_table(trainer.backbone, trainer.console,
                          title=f"{trainer.backbone.name}: trainable parameters")
    what = f"resuming from {resume_from} at step {trainer.step}" if resume_from else "new run"
    trainer.console.print(
        f"{what}: {s.max_steps} steps, batch {s.batch_size} × {acc.num_processes} process(es) × "
        f"{s.grad_accum} accumulation on {acc.device} ({acc.mixed_precision} mixed precision)\n"
        f"metrics → {trainer.metrics.path}\ncheckpoints → {trainer.out / CHECKPOINTS}", highlight=False)


def progress_bar(console: Any, is_main: bool):
    """A rich progress bar on the main process's terminal; silent elsewhere and under CI."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    disable = not is_main or not console.is_terminal or bool(os.environ.get("CI"))
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, disable=disable)
