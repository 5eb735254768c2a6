"""Training: selective transfer and LoRA, the accelerate trainer, checkpoints and exact resume.

    setup = prepare_run(config, annotations_dir=...)     # validates and builds (one-line errors)
    result = train(setup, out_dir, resume=False)         # metrics.jsonl + checkpoints/step-*
    backbone, config = load_checkpoint(result.checkpoint)
"""
from refine_core.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from refine_core.training.freeze import (apply_freeze, frozen_block_count, parameter_rows,
    print_parameter_table)
from refine_core.training.lora import apply_lora, lora_module_names
from refine_core.training.metrics import METRIC_KEYS, CollapseDetector
from refine_core.training.setup import RunSetup, prepare_run
from refine_core.training.trainer import Trainer, TrainingDiverged, TrainResult, train

__all__ = [
    "METRIC_KEYS", "CollapseDetector", "RunSetup", "TrainResult", "Trainer", "TrainingDiverged",
    "apply_freeze",
    "apply_lora", "frozen_block_count", "latest_checkpoint", "list_checkpoints", "load_checkpoint",
    "lora_module_names", "parameter_rows", "prepare_run", "print_parameter_table", "train",
]
