"""`refine eval`: run a benchmark on a trained checkpoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from refine_core.cli.options import BenchmarkOpt, DatasetOpt, JsonOpt, SetOpt
from refine_core.cli.output import display_table


def eval_checkpoint(
    checkpoint: Annotated[Path, typer.Option("--checkpoint",
                                             help="A checkpoint (step-*) or a training OUT.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where results.jsonl and summary.json go.")],
    benchmark: BenchmarkOpt = None,
    dataset: DatasetOpt = None,
    set_: SetOpt = None,
    annotations: Annotated[Optional[Path], typer.Option(
        "--annotations", help="Annotations of the dataset, for teacher-forced reasoning accuracy.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a checkpoint (default: the run's own dataset and benchmark, from the checkpoint)."""
    from refine_core.config import resolve_components, resolve_config
    from refine_core.evaluate.checkpoint_eval import checkpoint_config, evaluate_checkpoint
    from refine_core.registry import get_registry

    registry = get_registry()
    saved = checkpoint_config(checkpoint)
    config = resolve_config(None, set_, {"benchmark": benchmark, "dataset": dataset}, base=saved)
    config = resolve_components(config, registry, ("dataset", "benchmark"))
    result = evaluate_checkpoint(checkpoint, out, config, annotations, registry)
    if as_json:
        typer.echo(json.dumps(result.summary, indent=2))
        return
    rows = [{"metric": key, "value": value} for key, value in _flat(result.summary).items()]
    display_table(rows, ["metric", "value"], False, title=f"{config.benchmark.name} → {out}")


def _flat(summary: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            flat[prefix + key] = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        else:
            flat[prefix + key] = f"{value:.4g}" if isinstance(value, float) else value
    return flat


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_checkpoint)
