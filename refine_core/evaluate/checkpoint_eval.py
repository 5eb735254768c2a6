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


def base_backbone(run_config: RunConfig, registry: Any, tuned: Any) -> Any:
    """The model before fine-tuning: the run's backbone rebuilt from its options (the `tiny` preset
    from its seed, a `path` from its pretrained weights) with the same codec and statistics, no
    trained weights and no LoRA adapters; frozen, in eval mode, on the CPU."""
    import torch

    from refine_core.training.setup import attach_codec, build_backbone

    base = build_backbone(run_config, registry)
    with torch.random.fork_rng():  # rows the codec adds are initialised from the run's seed
        torch.manual_seed(run_config.train.seed)
        attach_codec(base, run_config, registry, tuned.codec.stats, stats_key=tuned.statistics_key)
    for parameter in base.model.parameters():
        parameter.requires_grad_(False)
    base.model.eval()
    return base


def evaluate_checkpoint(checkpoint: str | Path, out: str | Path, config: RunConfig | None = None,
                        annotations_dir: str | Path | None = None, registry: Any = None,
                        benchmark: Component | None = None, shard: tuple[int, int] | None = None,
                        command: str | None = None) -> BenchmarkResult:
    """Load `checkpoint`, run the configured benchmark (or `benchmark`) on the configured dataset,
    write OUT.

    `config` (default: the run's own, stored in the checkpoint) chooses the benchmark and may
    point the dataset elsewhere (e.g. another data_dir on this machine). `shard` (i, n) runs part
    i of n of a closed-loop benchmark's episodes (`command`, the one that runs it, is recorded so
    that `refine eval merge` can say how to finish it); see `refine_core.evaluate.shards`.
    """
    from refine_core.training.checkpoint import load_checkpoint

    if registry is None:
        from refine_core.registry import get_registry

        registry = get_registry()
    config = config or checkpoint_config(checkpoint)
    chosen = benchmark or config.benchmark
    benchmark = registry.build("benchmark", chosen.name, chosen.options)
    benchmark.preflight()  # e.g. a missing simulator: one line now, not after the weights load
    identity = None
    if shard is not None:  # checked before the weights load: a wrong --shard or --out fails at once
        from refine_core.evaluate.shards import begin_shard, checkpoint_fingerprint, shard_identity

        identity = shard_identity(shard, checkpoint_fingerprint(checkpoint), benchmark, chosen.name, command)
        begin_shard(out, identity)
    backbone, run_config = load_checkpoint(checkpoint, registry)
    dataset = registry.build("dataset", config.dataset.name, config.dataset.options)
    annotations = None
    if annotations_dir is not None:
        annotations = AnnotationSet.load(annotations_dir)
        annotations.check_matches(dataset.name, dataset.identity)
        annotations = annotations.with_format(config.train.reasoning_format)  # the text the model learnt
    context = EvalContext(backbone=backbone, dataset=dataset, out_dir=Path(out), annotations=annotations,
                          val_fraction=config.data.val_fraction, reasoning_order=config.train.reasoning_order,
                          reasoning_format=config.train.reasoning_format,
                          reasoning_dropout=config.train.reasoning_dropout, lambda_r=config.loss.lambda_r,
                          with_plan=run_config.vlm2vla.with_plan,
                          extra={"shard": shard} if shard is not None else {},
                          base_backbone=lambda: base_backbone(run_config, registry, backbone))
    result = benchmark.evaluate(context)
    if identity is not None:
        from refine_core.evaluate.shards import finish_shard

        return finish_shard(out, identity, result)
    write_results(out, result)
    return result
