"""Recipes: named presets of config values for a paper's training method (`--recipe NAME`).

A recipe is a layer of the config: defaults < recipe < config file < component flags < --set, so
anything it sets can still be overridden. The resolved config records the recipe's name
(`recipe:`), and `refine config show --recipe NAME` prints what it sets.

- `refinevla` (the defaults): teacher reasoning per step, `L_action + λ_r·L_reasoning`, the
  backbone's transfer recipe (lower layers frozen).
- `vlm2vla`: VLM2VLA — a teacher decomposes each trajectory (`annotate.task=decomposition`), the
  model learns the five text tasks of `refine_core.data.vlm2vla` (subtasks, motion plan, action
  chunk as text, direction, subtask completion) with plain cross-entropy on the answers, LoRA
  only (r 16, α 32, dropout 0.05, on every linear layer of the language model), lr 5e-5 with linear
  decay; it acts through the hierarchical policy (`closed_loop.modes=[hierarchical]`). The demo
  backbone is the tiny Gemma-3 preset (the paper fine-tunes Gemma-3-12B-IT: set backbone.path).
- `vlm2vla-nr`: the paper's no-reasoning ablation: action chunks straight from the subtask, no
  motion plan in their prompt.
- `vlm2vla-at`: the paper's action-token ablation: the action answers written with 15 rarely used
  vocabulary ids, one per symbol (`least-likely` codec), instead of the tokenizer's own number text.
"""
from __future__ import annotations

from typing import Any

from refine_core.errors import UsageError

_VLM2VLA: dict[str, Any] = {
    "backbone": {"name": "hf_vlm", "preset": "tiny-gemma3"},
    "codec": {"name": "text"},
    "annotate": {"task": "decomposition"},
    "data": {"samples": "vlm2vla"},
    "lora": {"r": 16, "alpha": 32.0, "dropout": 0.05, "targets": "all-linear"},
    "train": {"lr": 5e-5, "schedule": "linear", "reasoning_dropout": 0.0},
    "benchmark": {"name": "retention"},
    "closed_loop": {"modes": ["hierarchical"]},
}

RECIPES: dict[str, dict[str, Any]] = {
    "refinevla": {},
    "vlm2vla": _VLM2VLA,
    "vlm2vla-nr": {**_VLM2VLA, "vlm2vla": {"with_plan": False}},
    "vlm2vla-at": {**_VLM2VLA, "codec": {"name": "least-likely"}},
}


def recipe_values(name: str) -> dict[str, Any]:
    """The config values recipe `name` sets (nested like a config file), or a one-line UsageError."""
    if name not in RECIPES:
        raise UsageError(f"Unknown recipe '{name}'. Available: {', '.join(RECIPES)}")
    return RECIPES[name]
