"""The benchmark contract: evaluate a trained backbone, one record per episode plus aggregates.

A benchmark is built from its options (`factory(options)`) and called with an `EvalContext`;
`write_results` stores what it returns as `results.jsonl` (one line per episode),
`summary.json` and any further files the benchmark made (e.g. tables), each written atomically so
a crash never leaves half a file.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from refine_core.data.annotation_set import AnnotationSet
from refine_core.backbone import Backbone
from refine_core.dataset import RobotDataset
from refine_core.files import atomic_write


@dataclass
class EvalContext:
    backbone: Backbone
    dataset: RobotDataset
    out_dir: Path
    annotations: AnnotationSet | None = None
    val_fraction: float = 0.1
    reasoning_order: str = "reason_then_act"
    reasoning_format: str = "refinevla"  # the training text of the reasoning (its opening is forced)
    reasoning_dropout: float = 0.0  # how often training dropped the reasoning (acting without it was taught)
    lambda_r: float = 0.3
    with_plan: bool = True  # VLM2VLA: the action prompts the model learnt carry the motion plan
    extra: dict[str, Any] = field(default_factory=dict)
    # builds the model before fine-tuning (same backbone and codec, no trained weights) on demand,
    # for benchmarks that compare the two (knowledge retention); None where there is no base
    base_backbone: Callable[[], Backbone] | None = None


@dataclass
class BenchmarkResult:
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # further result files (name → text), e.g. tables


class Benchmark(ABC):
    name: str = "benchmark"

    @abstractmethod
    def evaluate(self, context: EvalContext) -> BenchmarkResult:
        """Run the benchmark; per-episode records and a summary of aggregates."""

    def preflight(self) -> None:
        """Refuse at once (a one-line UsageError) what would fail only after the weights load, e.g.
        a simulator that is not installed; `refine eval` calls it before loading the checkpoint."""

    def aggregate(self, records: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, str]:
        """The benchmark's own aggregates of its records (e.g. a paper's tables): added to `summary`
        in place, and further result files (name → text) returned. Called on a whole evaluation's
        records, also when `refine eval merge` joins the parts of a split one."""
        return {}


def write_results(out_dir: str | Path, result: BenchmarkResult) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in result.records))
    atomic_write(out_dir / "summary.json", json.dumps(result.summary, indent=2) + "\n")
    for name, text in result.files.items():
        atomic_write(out_dir / name, text)
