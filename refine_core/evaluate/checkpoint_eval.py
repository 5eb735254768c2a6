"""Evaluate a trained checkpoint with a benchmark (the `eval` stage and `refine eval`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from refine_core.data.annotation_set import AnnotationSet
from refine_core.benchmark import BenchmarkResult, EvalContext, write_results
from refine_core.config import Component, RunConfig


def checkpoint_config(checkpoint: str | Path) -> RunConfig:
    """The RunConfig stored with a checkpoint (a step-* directory or a training OUT)."""
    from refine_core.training.checkpoint import read_checkpoint_info

    return RunConfig.model_validate(read_checkpoint_info(checkpoint)[1]["config"])


def evaluate_checkpoint(checkpoint: str | Path, out: str | Path, config: RunConfig | None = None,
                        annotations_dir: str | Path | None = None, registry: Any = None,
                        benchmark: Component | None = None) -> BenchmarkResult:
    """Load `checkpoint`, run the configured benchmark (or `benchmark`) on the configured dataset,
    write OUT.

    `config` (default: the run's own, stored in the checkpoint) chooses the benchmark and may
    point the dataset elsewhere (e.g. another data_dir on this machine).
    """
    from refine_core.training.checkpoint import load_checkpoint

    if registry is None:
        from refine_core.registry import get_registry

        registry = get_registry()
    backbone, saved = load_checkpoint(checkpoint, registry)
    config = config or saved
    chosen = benchmark or config.benchmark
    benchmark = registry.build("benchmark", chosen.name, chosen.options)
    dataset = registry.build("dataset", config.dataset.name, config.dataset.options)
    annotations = None
    if annotations_dir is not None:
        annotations = AnnotationSet.load(annotations_dir)
        annotations.check_matches(dataset.name, dataset.identity)
        annotations = annotations.with_format(config.train.reasoning_format)  # the text the model learnt
    context = EvalContext(backbone=backbone, dataset=dataset, out_dir=Path(out), annotations=annotations,
                          val_fraction=config.data.val_fraction, reasoning_order=config.train.reasoning_order,
                          reasoning_format=config.train.reasoning_format,
                          reasoning_dropout=config.train.reasoning_dropout, lambda_r=config.loss.lambda_r)
    result = benchmark.evaluate(context)
    write_results(out, result)
    return result
