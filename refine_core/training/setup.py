"""Everything `refine train` checks and builds before the first step, and the policy rebuild a
checkpoint load shares with it.

Order (cheap checks first, so a typo fails in a second, not after a model load): components
and their options → dataset and annotation match → backbone → block count for freezing →
dataset statistics → codec on the backbone's vocabulary → LoRA or freezing. Each failure is a
`UsageError` with one line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from refine_core.data.annotation_set import AnnotationSet
from refine_core.config import RunConfig, resolve_components
from refine_core.dataset import RobotDataset
from refine_core.errors import UsageError
from refine_core.statistics import Statistics
from refine_core.training.freeze import apply_freeze, frozen_block_count
from refine_core.training.lora import apply_lora

TRAIN_COMPONENTS = ("backbone", "codec", "dataset")


@dataclass
class RunSetup:
    config: RunConfig
    backbone: Any
    dataset: RobotDataset
    action_stats: Statistics
    annotations: AnnotationSet | None = None
    resized_embeddings: bool = False  # the codec added tokens: embedding rows must be saved
    frozen_blocks: int = 0
    lora_modules: list[str] = field(default_factory=list)
    plans: dict[str, Any] | None = None  # data.samples=vlm2vla: episode id → TrajectoryPlan


def build_backbone(config: RunConfig, registry: Any) -> Any:
    return registry.build("backbone", config.backbone.name, config.backbone.options)


def attach_codec(backbone: Any, config: RunConfig, registry: Any, action_stats: Statistics,
                 stats_key: str | None = None) -> bool:
    """Bind the configured codec; returns whether the embeddings grew (new codec tokens).
    `stats_key` (the dataset's name) becomes `backbone.statistics_key`."""
    config = resolve_components(config, registry, ())  # a codec left unset: the backbone's
    codec = registry.build("codec", config.codec.name, config.codec.options)
    rows = backbone.model.get_input_embeddings().num_embeddings
    backbone.attach_codec(codec, action_stats)
    if stats_key:
        backbone.statistics_key = stats_key
    return backbone.model.get_input_embeddings().num_embeddings != rows


def apply_transfer(backbone: Any, config: RunConfig) -> tuple[int, list[str]]:
    """LoRA when `lora.r` is set (only adapters train), else the freeze rules."""
    if config.lora.r is not None:
        torch.manual_seed(config.train.seed)  # adapter initialisation is part of the run's seed
        return 0, apply_lora(backbone, config.lora)
    return apply_freeze(backbone, config.freeze), []


def prepare_run(config: RunConfig, registry: Any = None, annotations_dir: str | Path | None = None,
                dataset: RobotDataset | None = None) -> RunSetup:
    """Validate and build a training run; `dataset` replaces the configured one (tests, notebooks)."""
    if registry is None:
        from refine_core.registry import get_registry

        registry = get_registry()
    kinds = TRAIN_COMPONENTS if dataset is None else ("backbone", "codec")
    config = resolve_components(config, registry, kinds)
    if dataset is None:
        dataset = registry.build("dataset", config.dataset.name, config.dataset.options)
    annotations = plans = None
    if config.data.samples == "vlm2vla":
        from refine_core.annotate.plans import load_plans

        if annotations_dir is None:
            raise UsageError("data.samples=vlm2vla trains on trajectory plans: pass the folder of `refine "
                             "annotate --set annotate.task=decomposition` (--annotations DIR)")
        plans = load_plans(annotations_dir, dataset)
        if not plans:
            raise UsageError(f"{annotations_dir} holds no accepted plan to train on; see its plans.json")
    elif annotations_dir is not None:
        annotations = AnnotationSet.load(annotations_dir)
        annotations.check_matches(dataset.name, dataset.identity)
        annotations = annotations.with_format(config.train.reasoning_format)
    backbone = build_backbone(config, registry)
    if config.lora.r is None:
        frozen_block_count(config.freeze.first_n_layers, len(backbone.blocks()), backbone.name)
    stats = dataset.statistics().action
    resized = attach_codec(backbone, config, registry, stats, stats_key=dataset.name)
    frozen, lora_modules = apply_transfer(backbone, config)
    return RunSetup(config=config, backbone=backbone, dataset=dataset, action_stats=backbone.codec.stats,
                    annotations=annotations, resized_embeddings=resized, frozen_blocks=frozen,
                    lora_modules=lora_modules, plans=plans)
