"""`refine sweep`: one `refine run` per grid point, then the chosen metric against the swept
value (plot + table). See `refine_core.run.sweep` for naming, resuming and the result files."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from refine_core.errors import RefineError
from refine_core.cli.options import (BackboneOpt, BenchmarkOpt, CodecOpt, ConfigOpt, DatasetOpt, JsonOpt,
    SetOpt, TeacherOpt, load_config)
from refine_core.cli.output import console, display_table, err_console


def sweep(
    grid: Annotated[list[str], typer.Option(
        "--grid", "-g", help="An axis: dotted.key=v1,v2,... (repeat for a Cartesian product).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep directory: one run directory per point.")],
    metric: Annotated[str, typer.Option(
        "--metric", help="Key of each point's eval/summary.json to plot (dotted for nested keys).")
    ] = "action_token_accuracy",
    stages: Annotated[Optional[str], typer.Option(
        "--stages", help="Stages each point runs (default annotate,train,eval).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    backbone: BackboneOpt = None,
    codec: CodecOpt = None,
    teacher: TeacherOpt = None,
    dataset: DatasetOpt = None,
    benchmark: BenchmarkOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the same config at every grid point (resumable) and plot a metric against the swept value."""
    from refine_core.run.stages import parse_stages
    from refine_core.run.sweep import DEFAULT_STAGES, parse_grid, plan_sweep, rows, run_sweep

    chosen = parse_stages(stages) if stages else DEFAULT_STAGES
    axes = [parse_grid(item) for item in grid]
    base_sets = list(set_ or [])
    points = plan_sweep(axes, out, lambda extra: load_config(
        config, base_sets + extra, backbone=backbone, codec=codec, teacher=teacher, dataset=dataset,
        benchmark=benchmark))
    # with --json, stdout carries only the table: progress and the runs' own output go to stderr
    stream = err_console if as_json else console
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        result = run_sweep(points, axes, out, metric, chosen,
                           log=lambda line: stream.print(line, highlight=False, markup=False))
    display_table(rows(result), [a.key for a in axes] + [metric, "status", "directory"], as_json,
                  title=f"{metric} per grid point")
    if not as_json:
        console.print(f"wrote {result.figure} and {result.table}", highlight=False)
    if result.failed:
        first = result.failed[0]
        raise RefineError(f"{len(result.failed)} of {len(points)} points failed (first {first.name}: "
                          f"{first.error}); "
                          f"run the same command again to retry them")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
