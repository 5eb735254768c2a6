"""`refine run`: annotate → train → eval → report in one run directory, resumable stage by stage.

OUT/config.yaml        the fully resolved config (a different config later is refused)
OUT/run_state.json     which stages finished, with a one-line summary each
OUT/annotations/       the annotation set (refine annotate)
OUT/train/             metrics.jsonl, checkpoints/step-* (refine train)
OUT/eval/              results.jsonl, summary.json (refine eval)
OUT/report/            report.md, report.html

A finished stage is skipped; an interrupted one resumes (annotation journal, newest checkpoint);
finished work is never redone or overwritten.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from refine_core.config import NO_COMPONENT, RunConfig, config_difference, dump_yaml, resolve_components
from refine_core.files import atomic_write
from refine_core.errors import UsageError

STAGES = ("annotate", "train", "eval", "report")
CONFIG_FILE, STATE_FILE = "config.yaml", "run_state.json"


@dataclass
class RunOutcome:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    summaries: dict[str, str] = field(default_factory=dict)


def parse_stages(text: str | None) -> tuple[str, ...]:
    if not text:
        return STAGES
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown or not chosen:
        raise UsageError(f"Unknown stage '{unknown[0] if unknown else text}'. Available: {', '.join(STAGES)}")
    return tuple(s for s in STAGES if s in chosen)  # always in pipeline order


def saved_config(out: Path) -> RunConfig | None:
    path = out / CONFIG_FILE
    if not path.is_file():
        return None
    return RunConfig.model_validate(yaml.safe_load(path.read_text()))


def claim_run_dir(out: Path, config: RunConfig, registry: Any = None) -> None:
    """Create OUT with this config, or accept OUT holding the same config; refuse another run's.
    A saved config's unset components are decided as today's (a run written before a component
    slot existed continues)."""
    saved = saved_config(out)
    if saved is not None:
        if registry is not None:
            saved = resolve_components(saved, registry, ())
        difference = config_difference(saved.to_dict(), config.to_dict())
        if difference:
            key, old, new = difference
            raise UsageError(f"{out} holds a different run ({key}: {old!r} → {new!r}); choose a new --out, "
                             f"or run `refine run --out {out}` with no settings to continue it")
        return
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no refine run; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / CONFIG_FILE, dump_yaml(config))


class RunState:
    def __init__(self, out: Path):
        self.path = out / STATE_FILE
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"stages": {}}

    def done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("status") == "done"

    def mark(self, stage: str, summary: str, complete: bool = True) -> None:
        status = "done" if complete else "partial"  # a partial stage runs again (and resumes) next time
        self.data["stages"][stage] = {"status": status, "summary": summary, "finished": time.time()}
        atomic_write(self.path, json.dumps(self.data, indent=2) + "\n")


def run_pipeline(config: RunConfig, out: str | Path, stages: tuple[str, ...] = STAGES,
                 log: Callable[[str], None] = print, registry: Any = None) -> RunOutcome:
    out = Path(out)
    if registry is None:
        from refine_core.registry import get_registry

        registry = get_registry()
    kinds = {"annotate": ("dataset", "teacher"), "train": ("backbone", "codec", "dataset"),
             "eval": ("dataset", "benchmark", "closed_loop")}
    config = resolve_components(config, registry,
                                tuple(dict.fromkeys(k for s in stages for k in kinds.get(s, ()))))
    claim_run_dir(out, config, registry)
    state, outcome = RunState(out), RunOutcome()
    for stage in stages:
        if state.done(stage):
            outcome.skipped.append(stage)
            continue
        log(f"[{stage}] starting")
        summary, complete = _STAGE_FUNCTIONS[stage](config, out, registry, log)
        state.mark(stage, summary, complete)
        outcome.ran.append(stage)
        outcome.summaries[stage] = summary
        log(f"[{stage}] done: {summary}")
    return outcome


def _annotate(config: RunConfig, out: Path, registry: Any, log) -> tuple[str, bool]:
    from refine_core.annotate import annotate_dataset

    teacher = registry.build("teacher", config.teacher.name, config.teacher.options)
    dataset = registry.build("dataset", config.dataset.name, config.dataset.options)
    if config.annotate.task == "decomposition":
        from refine_core.annotate.plans import decompose_dataset

        report = decompose_dataset(dataset, teacher, out / "annotations", config.annotate, log)
        return (f"{len(report.plans)} episodes decomposed into plans by {teacher.identity.key()}, "
                f"{len(report.rejected)} rejected"), True
    if config.annotate.workers > 1:
        from refine_core.annotate.workers import annotate_with_workers, build_from_config, check_workers

        check_workers(dataset, teacher, out / "annotations", config.annotate)
        annotate_with_workers(build_from_config, (config.to_dict(),), out / "annotations", config.annotate)
    else:
        annotate_dataset(dataset, teacher, out / "annotations", config.annotate)
    manifest = json.loads((out / "annotations" / "manifest.json").read_text())
    counts = manifest.get("counts", {})
    failed = counts.get("failed", 0)
    summary = (f"{counts.get('annotated', 0)} of {counts.get('planned', 0)} steps annotated by "
               f"{teacher.identity.key()}, {failed} failed, cost ${manifest.get('cost_usd', 0.0):.4f}")
    if failed:
        summary += " (failed steps train action-only now and are asked again on the next run)"
    return summary, not failed


def _annotations_dir(out: Path) -> Path | None:
    """OUT/annotations when the annotate stage wrote reasoning (manifest.json) or plans (plans.json)."""
    from refine_core.annotate.plans import holds_plans

    annotations = out / "annotations"
    return annotations if (annotations / "manifest.json").is_file() or holds_plans(annotations) else None


def _train(config: RunConfig, out: Path, registry: Any, log) -> tuple[str, bool]:
    from refine_core.training import prepare_run
    from refine_core.training.checkpoint import latest_checkpoint
    from refine_core.training.trainer import Trainer

    setup = prepare_run(config, registry, annotations_dir=_annotations_dir(out))
    train_dir = out / "train"
    resume = latest_checkpoint(train_dir) is not None
    if resume:
        log(f"[train] resuming from {latest_checkpoint(train_dir)}")
    result = Trainer(setup, train_dir, resume=resume).fit()
    return f"{result.step} steps, newest checkpoint {result.checkpoint}", True


def _eval(config: RunConfig, out: Path, registry: Any, log) -> tuple[str, bool]:
    """The configured benchmark into OUT/eval, then the closed-loop one into OUT/eval/<name>; a
    benchmark whose summary is already written is not run again (an interrupted stage resumes)."""
    from refine_core.evaluate.checkpoint_eval import evaluate_checkpoint

    annotations = out / "annotations"
    annotations_dir = annotations if (annotations / "manifest.json").is_file() else None
    summary_file = out / "eval" / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
    else:
        summary = evaluate_checkpoint(out / "train", out / "eval", config, annotations_dir, registry).summary
    accuracy = summary.get("action_token_accuracy")
    chance = summary.get("action_token_chance")
    text = (f"{summary.get('episodes')} held-out episodes" if summary.get("episodes") is not None
            else f"benchmark {summary.get('benchmark', config.benchmark.name)} written to eval/summary.json")
    if accuracy is not None:
        text += f", action token accuracy {accuracy:.3f}" + (f" (chance {chance:.4f})" if chance else "")
    closed = config.closed_loop
    if closed is not None and closed.name != NO_COMPONENT:
        log(f"[eval] closed loop: {closed.name}")
        result = evaluate_checkpoint(out / "train", out / "eval" / closed.name, config, annotations_dir,
                                     registry, benchmark=closed)
        policies = result.summary.get("policies", {})
        rates = [f"{name} {row['success_rate']:.0%} [{low:.0%}, {high:.0%}]"
                 for name, row in policies.items() if row.get("success_rate") is not None
                 for low, high in [row["success_ci95"]]]
        text += f"; {closed.name} success: " + ", ".join(rates)
    return text, True


def _report(config: RunConfig, out: Path, registry: Any, log) -> tuple[str, bool]:
    from refine_core.report import build_report

    return f"written {build_report(out)}", True


_STAGE_FUNCTIONS = {"annotate": _annotate, "train": _train, "eval": _eval, "report": _report}
