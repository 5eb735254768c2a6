"""`refine annotate`: a teacher's structured reasoning for every step of a dataset, into OUT.

Resumes by default (an interrupted or failed run asks only what is missing), refuses an OUT that
holds another dataset's or another teacher's annotations, `--dry-run` estimates calls, tokens
and cost without asking anything, `--shard i/n` annotates one deterministic part of the episodes
(several shards may write into one OUT), `--workers N` runs N such shard processes at once into
OUT with one progress bar and one summary (an SDK's per-request CPU cost caps one process).
A teacher in batch mode (e.g. gemini `mode: batch`)
submits jobs and polls them; a re-run after an interruption polls the same jobs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from refine_core.errors import RefineError, UsageError
from refine_core.registry import get_registry
from refine_core.cli.options import (ConfigOpt, DatasetOpt, JsonOpt, RecipeOpt, SetOpt, TeacherOpt,
    load_config)
from refine_core.cli.output import console, err_console


def _progress_display(enabled: bool):
    """A rich progress bar (steps, rate, ETA, failures, cost) fed by the annotation run's
    AnnotationProgress."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    progress = Progress(
        TextColumn("[bold]annotate[/]"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        TextColumn("{task.fields[extra]}"), console=err_console, disable=not enabled, transient=False,
    )
    task = progress.add_task("annotate", total=None, rate="", extra="")

    def update(stats) -> None:
        import time

        elapsed = max(time.monotonic() - stats.started, 1e-9)
        rate = stats.settled / elapsed
        more = "" if stats.producer_done else "+"  # the dataset is still being read
        progress.update(task, completed=stats.settled, total=stats.planned or None,
                        rate=f"{rate:.1f} steps/s",
                        extra=f"{stats.episodes}{more} episodes · failed {stats.failed} · retried "
                              f"{stats.retried} · "
                              f"{f'batch jobs {stats.jobs} · ' if stats.jobs else ''}${stats.cost:.4f}")

    return progress, update


def _decompose(dataset, teacher, out: Path, settings, unsupported: bool, as_json: bool) -> None:
    """annotate.task=decomposition: every episode's VLM2VLA plan into OUT (annotate/plans.py)."""
    from refine_core.annotate.plans import decompose_dataset

    if unsupported:
        raise UsageError("annotate.task=decomposition runs in one process, without --dry-run or --shard; "
                         "drop them")
    report = decompose_dataset(dataset, teacher, out, settings, log=lambda line: console.print(line))
    counts = {"planned": len(report.plans), "rejected": len(report.rejected), "resumed": report.resumed}
    if as_json:
        typer.echo(json.dumps({"out": str(out), **counts, "rejected_episodes": report.rejected}, indent=2))
    else:
        console.print(f"{counts['planned']} episodes decomposed into {out} ({counts['resumed']} from an "
                      f"earlier run), {counts['rejected']} rejected", highlight=False)


def annotate(
    out: Annotated[Path, typer.Option("--out", "-o",
                                      help="Annotation directory (created; resumed if it exists).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    dataset: DatasetOpt = None,
    teacher: TeacherOpt = None,
    recipe: RecipeOpt = None,
    strategy: Annotated[Optional[str], typer.Option(
        "--strategy", help="every_step | every_k | keyframes (annotate.strategy).")] = None,
    every: Annotated[Optional[int], typer.Option("--every", min=1,
                                                 help="K for every_k (annotate.every).")] = None,
    concurrency: Annotated[Optional[int], typer.Option(
        "--concurrency", min=1, help="Requests in flight (annotate.concurrency).")] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, help="Shard processes annotating into OUT at once (annotate.workers).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run",
                                          help="Estimate calls, tokens and cost; ask nothing.")] = False,
    shard: Annotated[Optional[str], typer.Option("--shard",
                                                 help="Annotate shard i of n episodes: i/n.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume", help="Continue an existing OUT (default); --no-resume refuses one.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Annotate a dataset's steps with a teacher's structured reasoning (ReFineVLA's data step)."""
    from refine_core.annotate import annotate_dataset, estimate_run, parse_shard
    from refine_core.data.annotation_set import MANIFEST

    sets = list(set_ or [])
    for key, value in (("strategy", strategy), ("every", every), ("concurrency", concurrency),
                       ("workers", workers)):
        if value is not None:
            sets.append(f"annotate.{key}={value}")
    cfg = load_config(config, sets, teacher=teacher, dataset=dataset, recipe=recipe)
    settings = cfg.annotate
    shard_spec = parse_shard(shard)
    if not resume and not dry_run and (out / MANIFEST).is_file():
        raise UsageError(f"{out} already holds an annotation set; drop --no-resume to continue it, or choose "
                         "a new --out")
    registry = get_registry()
    # The teacher first: a missing key or SDK fails at once, before a dataset is opened.
    teacher_obj = registry.build("teacher", cfg.teacher.name, cfg.teacher.options)
    dataset_obj = registry.build("dataset", cfg.dataset.name, cfg.dataset.options)
    if settings.task == "decomposition":
        one_process = not (dry_run or shard is not None or settings.workers > 1)
        _decompose(dataset_obj, teacher_obj, out, settings, not one_process, as_json)
        return

    if dry_run:
        estimate = estimate_run(dataset_obj, teacher_obj, out, settings, shard_spec)
        if as_json:
            typer.echo(json.dumps(estimate.as_dict(), indent=2))
            return
        batch = ""
        if estimate.mode == "batch":
            batch = (
                f"\n  batch mode: {estimate.jobs} jobs of up to {estimate.batch_size} requests"
                f"{f', {estimate.in_flight} steps in jobs already submitted' if estimate.in_flight else ''}"
            )
        console.print(
            f"dry run: {dataset_obj.name} → {teacher_obj.identity.key()} ({settings.strategy}"
            f"{f', every {settings.every}' if settings.strategy == 'every_k' else ''}), shard "
            f"{shard_spec[0]}/{shard_spec[1]}\n"
            f"  episodes {estimate.episodes}, steps {estimate.steps}, asked steps {estimate.asked_steps}\n"
            f"  already annotated {estimate.already_annotated}, cache hits {estimate.cache_hits}\n"
            f"  calls {estimate.calls}, est. tokens in {estimate.input_tokens:,} / out "
            f"{estimate.output_tokens:,}"
            f"{batch}\n"
            f"  est. cost ${estimate.cost_usd:.4f} (at ${estimate.input_per_million:g} / "
            f"${estimate.output_per_million:g}"
            f" per 1M tokens in/out{', batch price' if estimate.mode == 'batch' else ''}; retries not "
            "included)",
            highlight=False,
        )
        return

    progress, update = _progress_display(enabled=err_console.is_terminal and not as_json)
    if settings.workers > 1:
        from refine_core.annotate.workers import annotate_with_workers, build_from_config, check_workers

        check_workers(dataset_obj, teacher_obj, out, settings)
        with progress:
            stats = annotate_with_workers(build_from_config, (cfg.to_dict(),), out, settings, shard_spec,
                                          on_progress=update)
    else:
        with progress:
            stats = annotate_dataset(dataset_obj, teacher_obj, out, settings, shard_spec, on_progress=update)
    summary = stats.as_dict()
    failures = summary.pop("failures")
    if as_json:
        typer.echo(json.dumps({**summary, "out": str(out), "failures": failures[:20]}, indent=2))
    else:
        console.print(
            f"annotated {out}: {stats.episodes} episodes ({stats.episodes_done_before} done before); "
            f"{f'batch jobs {stats.jobs}; ' if stats.jobs else ''}steps asked {stats.planned}: answered "
            f"{stats.answered}, "
            f"from cache {stats.cached}, failed {stats.failed} "
            f"(retries {stats.retried}); kept from earlier runs {stats.resumed}; tokens in "
            f"{stats.input_tokens:,} / "
            f"out {stats.output_tokens:,}; cost ${stats.cost:.4f}; {summary['elapsed_s']:.1f} s",
            highlight=False,
        )
    if failures:
        raise RefineError(f"{len(failures)} of {stats.planned} steps failed (first: episode "
                          f"{failures[0]['episode_id']} step {failures[0]['step']}: "
                          f"{failures[0]['reason']}); "
                          f"reasons are in the episode files under {out}; run the same command again to "
                          "retry them")


def register(app: typer.Typer) -> None:
    app.command("annotate")(annotate)
