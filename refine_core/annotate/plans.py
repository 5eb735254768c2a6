"""`annotate.task=decomposition`: every episode's VLM2VLA plan, asked of a teacher, into a folder.

OUT/plans.jsonl   the journal of `decompose.PlanJournal`: one settled episode a line (its plan, or
                  why it was rejected), fsynced, so an interrupted run asks only what is left
OUT/plans.json    the manifest: dataset and teacher identity, counts, rejected episodes with reasons,
                  the answers' cost (this run's)

The folder belongs to one dataset (its identity) and one teacher: continuing it with another is
refused, so plans of different sources never mix. Training reads the accepted plans with
`load_plans` (data.samples=vlm2vla).
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

from refine_core.annotate.asking import RetryPolicy
from refine_core.annotate.decompose import (DECOMPOSE_POLICY, DecompositionReport, PlanJournal,
    decompose_episodes)
from refine_core.annotate.selection import select_episodes
from refine_core.config import AnnotateSettings
from refine_core.dataset import RobotDataset
from refine_core.errors import UsageError
from refine_core.files import atomic_write
from refine_core.plan import TrajectoryPlan, TrajectoryRequest

PLANS_JOURNAL, PLANS_MANIFEST = "plans.jsonl", "plans.json"


def _header(dataset: RobotDataset, teacher: Any) -> dict[str, Any]:
    return {"dataset": dataset.name, "dataset_identity": dataset.identity, "teacher": teacher.identity.key()}


def decompose_dataset(dataset: RobotDataset, teacher: Any, out: str | Path, settings: AnnotateSettings,
                      log: Callable[[str], None] | None = None) -> DecompositionReport:
    """Plans for the episodes of `settings.split` (up to `settings.max_episodes`), resuming `out`."""
    if not callable(getattr(teacher, "decompose", None)):
        name = getattr(teacher, "name", None) or type(teacher).__name__
        raise UsageError(f"teacher '{name}' cannot decompose trajectories (annotate.task=decomposition); "
                         "use scripted, gemini or openai")
    out = Path(out)
    header = _header(dataset, teacher)
    manifest = out / PLANS_MANIFEST
    if manifest.is_file():
        held = {k: json.loads(manifest.read_text()).get(k) for k in header}
        if held != header:
            key = next(k for k in header if held[k] != header[k])
            raise UsageError(f"{out} holds plans of another {key.split('_')[0]} ({held[key]}); choose a new "
                             "--out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(manifest, json.dumps({**header, "complete": False}, indent=2))
    requests = (TrajectoryRequest.from_episode(episode)
                for episode in select_episodes(dataset, settings.split, (0, 1), settings.max_episodes))
    # the user's retry settings; a whole trajectory's answer may take longer than one step's
    policy = RetryPolicy.from_settings(settings, min_timeout=DECOMPOSE_POLICY.request_timeout)
    report = asyncio.run(decompose_episodes(teacher, requests, PlanJournal(out / PLANS_JOURNAL),
                                            settings.max_reasks, policy=policy))
    atomic_write(manifest, json.dumps({
        **header, "complete": True,
        "counts": {"episodes": len(report.plans) + len(report.rejected), "planned": len(report.plans),
                   "rejected": len(report.rejected), "resumed": report.resumed},
        "rejected": report.rejected, "cost_usd": _cost(teacher)}, indent=2))
    if log is not None and report.rejected:
        first = next(iter(report.rejected.items()))
        log(f"{len(report.rejected)} episodes rejected (they do not train), e.g. {first[0]}: {first[1]}")
    return report


def _cost(teacher: Any) -> float:
    """USD of this run's decomposition answers (teachers that count them: `decompose_usage`)."""
    usage, price = getattr(teacher, "decompose_usage", None), getattr(teacher, "price", None)
    return round(price.cost(usage), 6) if usage is not None and price is not None else 0.0


def holds_plans(folder: str | Path) -> bool:
    return (Path(folder) / PLANS_MANIFEST).is_file()


def load_plans(folder: str | Path, dataset: RobotDataset) -> dict[str, TrajectoryPlan]:
    """The accepted plans of a decomposition folder made for `dataset` (episode id → plan)."""
    folder = Path(folder)
    if not holds_plans(folder):
        raise UsageError(f"{folder} holds no trajectory plans: data.samples=vlm2vla trains on the plans of "
                         "`refine annotate --set annotate.task=decomposition`")
    manifest = json.loads((folder / PLANS_MANIFEST).read_text())
    if manifest.get("dataset_identity") != dataset.identity:
        raise UsageError(f"the plans in {folder} were made for dataset {manifest.get('dataset_identity')}, "
                         f"not {dataset.identity}; decompose this dataset first")
    results = PlanJournal(folder / PLANS_JOURNAL).read()
    return {episode: result.plan for episode, result in results.items() if result.plan is not None}
