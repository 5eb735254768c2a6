"""`refine run`: the whole job (annotate → train → eval → report) in one resumable run directory."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from refine_core.cli.options import (BackboneOpt, BenchmarkOpt, CodecOpt, ConfigOpt, DatasetOpt, RecipeOpt,
    SetOpt, TeacherOpt)
from refine_core.cli.output import console


def run(
    out: Annotated[Optional[Path], typer.Option("--out", "-o",
                                                help="Run directory (default runs/<timestamp>); "
                                                                   "an existing one is continued.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    backbone: BackboneOpt = None,
    codec: CodecOpt = None,
    teacher: TeacherOpt = None,
    dataset: DatasetOpt = None,
    benchmark: BenchmarkOpt = None,
    recipe: RecipeOpt = None,
    stages: Annotated[Optional[str], typer.Option(
        "--stages", help="Comma-separated subset of annotate,train,eval,report.")] = None,
) -> None:
    """Annotate, train, evaluate and report (offline with the defaults).

    The defaults use the demo dataset, the scripted teacher and the tiny backbone. Re-running with
    the same --out skips finished stages and resumes an interrupted one.
    """
    from refine_core.config import resolve_config
    from refine_core.run.stages import parse_stages, run_pipeline, saved_config

    chosen = parse_stages(stages)
    out = out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    # An existing OUT's own config is the base: `refine run --out OUT` alone continues it, and any
    # setting given must leave it unchanged (run_pipeline refuses a different run).
    components = {"backbone": backbone, "codec": codec, "teacher": teacher, "dataset": dataset,
                  "benchmark": benchmark}
    cfg = resolve_config(config, set_, components, base=saved_config(out), recipe=recipe)
    console.print(f"run directory: {out}", highlight=False)
    outcome = run_pipeline(cfg, out, chosen, log=lambda line: console.print(line, highlight=False,
                                                                            markup=False))
    if not outcome.ran:
        console.print(f"Nothing to do: {', '.join(outcome.skipped)} already complete in {out}.",
                      highlight=False)
    elif outcome.skipped:
        console.print(f"skipped (already complete): {', '.join(outcome.skipped)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
