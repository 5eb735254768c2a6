"""The optimizer side of a run: AdamW parameter groups, the LR schedule, the mixed-precision choice."""
from __future__ import annotations

import math
from typing import Any

import torch


def lr_factor(index: int, warmup: int, total: int, schedule: str) -> float:
    """LR multiplier for the step with 0-based index `index`: linear warmup, then the schedule."""
    if warmup and index < warmup:
        return (index + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (index - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def mixed_precision(precision: str) -> str:
    if precision == "bf16":
        return "bf16"
    if precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def build_adamw(parameters: list[torch.nn.Parameter], settings: Any) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with weight decay on matrices only (not on biases and norms), and its LambdaLR schedule."""
    decay = [p for p in parameters if p.ndim >= 2]
    no_decay = [p for p in parameters if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(i, settings.warmup_steps, settings.max_steps, settings.schedule))
    return optimizer, scheduler
