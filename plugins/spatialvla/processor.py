"""SpatialVLA's processor, for transformers 5.x: what upstream's `SpatialVLAProcessor` derives from
`processor_config.json` (statistics, bin policy, camera intrinsics, chunk size) and how it
turns a frame and an instruction into model inputs.

- Image: resized to the SigLIP size (224), scaled to [0, 1] and *not* normalised — the model
  normalises for SigLIP and for ZoeDepth itself (upstream sets `do_normalize` false).
- Prompt: 256 `<image>` tokens, `<bos>`, the lower-cased instruction and "\\n" (PaliGemma's layout).
- Intrinsic: per dataset (`intrinsic_config[unnorm_key]`, else `default`), scaled from the
  calibration resolution to the model's input size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refine_core import Statistics, UsageError

PROCESSOR_CONFIG = "processor_config.json"
# Upstream's default camera (640×480, f ≈ 623.6 px): what its processor uses for datasets it has
# no calibration for, and the intrinsic the tiny fixture was made with.
DEFAULT_INTRINSIC = {"width": 640, "height": 480,
                     "intrinsic": [[623.588, 0.0, 319.501], [0.0, 623.588, 239.545], [0.0, 0.0, 1.0]]}


@dataclass
class ProcessorSettings:
    statistics: dict[str, Any] = field(default_factory=dict)
    bin_policy: dict[str, Any] | None = None
    intrinsic_config: dict[str, Any] = field(default_factory=lambda: {"default": DEFAULT_INTRINSIC})
    action_config: dict[str, Any] = field(default_factory=dict)
    action_chunk_size: int = 4
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: str | Path) -> "ProcessorSettings":
        """`processor_config.json` of a checkpoint directory; defaults when there is none."""
        path = Path(directory) / PROCESSOR_CONFIG
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise UsageError(f"{path} is not valid JSON ({exc}); re-download the checkpoint") from None
        known = {"statistics", "bin_policy", "intrinsic_config", "action_config", "action_chunk_size"}
        settings = cls(**{k: v for k, v in data.items() if k in known and v is not None},
                       extra={k: v for k, v in data.items() if k not in known})
        settings.intrinsic_config.setdefault("default", DEFAULT_INTRINSIC)
        return settings

    def write(self, directory: str | Path) -> None:
        data = dict(self.extra)
        data.update(statistics=self.statistics, bin_policy=self.bin_policy,
                    intrinsic_config=self.intrinsic_config,
                    action_config=self.action_config, action_chunk_size=self.action_chunk_size)
        data.setdefault("processor_class", "SpatialVLAProcessor")
        (Path(directory) / PROCESSOR_CONFIG).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    # -- statistics ---------------------------------------------------------------------------------
    def resolve_key(self, unnorm_key: str | None, required: bool = True) -> str | None:
        """The dataset whose statistics un-normalise actions; None when the checkpoint has none, or
        (not `required`: fine-tuning brings its own statistics) when it has several and none is named."""
        keys = sorted(self.statistics)
        if unnorm_key is None:
            if len(keys) > 1 and not required:
                return None
            if len(keys) > 1:
                raise UsageError(f"this checkpoint holds statistics for {len(keys)} datasets; choose one "
                                 "with "
                                 f"backbone.unnorm_key (one of: {', '.join(keys)})")
            return keys[0] if keys else None
        if unnorm_key not in self.statistics:
            shown = ", ".join(keys) if keys else "(none: the checkpoint has no processor statistics)"
            raise UsageError(f"unnorm_key {unnorm_key!r} is not in the checkpoint's statistics; available: "
                             f"{shown}")
        return unnorm_key

    def action_statistics(self, unnorm_key: str) -> Statistics:
        action = self.statistics[unnorm_key].get("action")
        if not action or "q01" not in action or "q99" not in action:
            raise UsageError(f"statistics[{unnorm_key!r}] in {PROCESSOR_CONFIG} has no action q01/q99")
        q01, q99 = np.asarray(action["q01"], float), np.asarray(action["q99"], float)
        mean = np.asarray(action.get("mean", (q01 + q99) / 2), float)
        std = np.asarray(action.get("std", (q99 - q01) / 4), float)
        mask = action.get("mask")
        return Statistics(mean=mean, std=std, min=np.asarray(action.get("min", q01), float),
                          max=np.asarray(action.get("max", q99), float), q01=q01, q99=q99,
                          count=int(action.get("num_transitions", 0) or 0),
                          mask=None if mask is None else np.asarray(mask, bool))

    def set_action_statistics(self, key: str, stats: Statistics) -> None:
        """Record the statistics a fine-tune used, in upstream's layout, so `unnorm_key=key` finds them."""
        mask = stats.mask if stats.mask is not None else np.ones(stats.dim, bool)
        self.statistics[key] = {"action": {"mean": stats.mean.tolist(), "std": stats.std.tolist(),
                                           "min": stats.min.tolist(), "max": stats.max.tolist(),
                                           "q01": stats.q01.tolist(), "q99": stats.q99.tolist(),
                                           "mask": [bool(m) for m in mask],
                                           "num_transitions": int(stats.count)}}

    # -- camera -------------------------------------------------------------------------------------
    def intrinsic(self, unnorm_key: str | None, image_size: int) -> np.ndarray:
        """3×3 float32 intrinsic for the model's square input."""
        entry = self.intrinsic_config.get(unnorm_key or "default") or self.intrinsic_config["default"]
        matrix = np.asarray(entry["intrinsic"], dtype=np.float32).copy()
        matrix[0] *= image_size / float(entry["width"])
        matrix[1] *= image_size / float(entry["height"])
        return matrix
