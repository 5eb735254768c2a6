"""`refine eval`: run a benchmark on a trained checkpoint (`--shard i/n`: one part of a closed-loop
evaluation split across machines); `refine eval merge`: the parts into one result."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from refine_core.cli.options import BenchmarkOpt, DatasetOpt, JsonOpt, SetOpt
from refine_core.cli.output import console, display_table
from refine_core.errors import UsageError

eval_app = typer.Typer(help="Evaluate a checkpoint; `refine eval merge` joins the shards of a split one.")


@eval_app.callback(invoke_without_command=True)
def eval_checkpoint(
    ctx: typer.Context,
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", help="A checkpoint (step-*) or a training OUT.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Where results.jsonl and summary.json go.")] = None,
    benchmark: BenchmarkOpt = None,
    dataset: DatasetOpt = None,
    set_: SetOpt = None,
    annotations: Annotated[Optional[Path], typer.Option(
        "--annotations", help="Annotations of the dataset, for teacher-forced reasoning accuracy.")] = None,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", help="Run part i of n (0-based) of a closed-loop benchmark's episodes, e.g. 0/4; "
                        "join the parts with `refine eval merge`.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a checkpoint (default: the run's own dataset and benchmark, from the checkpoint)."""
    if ctx.invoked_subcommand is not None:
        return
    from refine_core.config import resolve_components, resolve_config
    from refine_core.evaluate.checkpoint_eval import checkpoint_config, evaluate_checkpoint
    from refine_core.evaluate.shards import parse_shard
    from refine_core.registry import get_registry

    if checkpoint is None or out is None:
        missing = " and ".join(f"--{name}" for name, value in (("checkpoint", checkpoint), ("out", out))
                               if value is None)
        raise UsageError(f"Missing option {missing}: refine eval --checkpoint CHECKPOINT --out OUT")
    part = parse_shard(shard) if shard is not None else None
    registry = get_registry()
    saved = checkpoint_config(checkpoint)
    config = resolve_config(None, set_, {"benchmark": benchmark, "dataset": dataset}, base=saved)
    config = resolve_components(config, registry, ("dataset", "benchmark"))
    command = None
    if part is not None:  # what `refine eval merge` tells to rerun while this part is unfinished
        words = ["refine", "eval", "--checkpoint", str(checkpoint), "--out", str(out), "--shard", shard]
        words += [w for flag, value in (("--benchmark", benchmark), ("--dataset", dataset),
                                        ("--annotations", annotations)) if value is not None
                  for w in (flag, str(value))]
        words += [w for value in set_ or [] for w in ("--set", value)]
        command = shlex.join(words)
    result = evaluate_checkpoint(checkpoint, out, config, annotations, registry, shard=part, command=command)
    title = f"{config.benchmark.name} → {out}" + (f" (shard {shard})" if part else "")
    _show(result.summary, as_json, title, out)


@eval_app.command("merge")
def merge(
    shards: Annotated[list[Path], typer.Argument(help="The OUT of every shard (`refine eval --shard i/n`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the merged results.jsonl and summary.json "
                                                           "go (never over other results).")],
    as_json: JsonOpt = False,
) -> None:
    """Merge the shards of a split closed-loop evaluation into one result.

    Writes the results.jsonl and summary.json an unsharded run writes (summaries recomputed from
    the merged episodes); refuses shards that do not make one whole, or an OUT with other results.
    """
    from refine_core.evaluate.shards import merge_shards

    result = merge_shards(shards, out)
    _show(result.summary, as_json, f"{result.summary.get('benchmark')}: {len(shards)} shards → {out}", out)


def _show(summary: dict, as_json: bool, title: str, out: Path) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    # a benchmark's own tables (summary "tables", e.g. SimplerEnv's paper tables) are too wide for a
    # terminal: their titles and files are named below the metrics, the report renders them
    tables = summary.get("tables") if isinstance(summary.get("tables"), list) else []
    metrics = {key: value for key, value in summary.items() if not (key == "tables" and tables)}
    rows = [{"metric": key, "value": value} for key, value in _flat(metrics).items()]
    display_table(rows, ["metric", "value"], False, title=title)
    for table in tables:
        if isinstance(table, dict) and isinstance(table.get("title"), str):
            files = f" → {out / table['file']}.md, .csv" if isinstance(table.get("file"), str) else ""
            console.print(escape(f"{table['title']}{files}"), highlight=False, soft_wrap=True)


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
    app.add_typer(eval_app, name="eval")
