"""Per-dimension statistics of actions (and states), used by codecs to normalise.

Normalisation follows OpenVLA / SpatialVLA: q01/q99 map to [-1, 1] (`normalize`), values outside
are clipped, and `mask` marks the dimensions that are normalised (the gripper is not).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from refine_core.files import atomic_write

_FIELDS = ("mean", "std", "min", "max", "q01", "q99")


@dataclass
class Statistics:
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    count: int = 0
    mask: np.ndarray | None = None  # True where a dimension is normalised; None = all

    def __post_init__(self) -> None:
        for name in _FIELDS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=bool)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])

    @classmethod
    def from_array(cls, values: np.ndarray, mask: np.ndarray | None = None) -> "Statistics":
        """Statistics of `values` [N, D] (float64 internally so sums do not drift)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or len(values) == 0:
            raise ValueError(f"statistics need a non-empty [N, D] array, got shape {values.shape}")
        return cls(
            mean=values.mean(0), std=values.std(0), min=values.min(0), max=values.max(0),
            q01=np.quantile(values, 0.01, axis=0), q99=np.quantile(values, 0.99, axis=0),
            count=len(values), mask=mask,
        )

    def _active(self) -> np.ndarray:
        return np.ones(self.dim, dtype=bool) if self.mask is None else self.mask

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """q01..q99 → [-1, 1], clipped; dimensions outside `mask` pass through."""
        x = np.asarray(x, dtype=np.float64)
        span = np.maximum(self.q99 - self.q01, 1e-8)
        scaled = np.clip(2.0 * (x - self.q01) / span - 1.0, -1.0, 1.0)
        return np.where(self._active(), scaled, x)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        """[-1, 1] → q01..q99: 0.5·(x+1)·(q99−q01)+q01 on masked dimensions."""
        x = np.asarray(x, dtype=np.float64)
        restored = 0.5 * (x + 1.0) * (self.q99 - self.q01) + self.q01
        return np.where(self._active(), restored, x)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name).tolist() for name in _FIELDS}
        out["count"] = self.count
        if self.mask is not None:
            out["mask"] = self.mask.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Statistics":
        return cls(**{k: data[k] for k in _FIELDS}, count=int(data.get("count", 0)), mask=data.get("mask"))


@dataclass
class DatasetStatistics:
    action: Statistics
    state: Statistics | None = None
    num_episodes: int = 0
    num_steps: int = 0
    num_instructions: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.to_dict(),
            "state": self.state.to_dict() if self.state is not None else None,
            "num_episodes": self.num_episodes, "num_steps": self.num_steps,
            "num_instructions": self.num_instructions, "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DatasetStatistics":
        return cls(
            action=Statistics.from_dict(data["action"]),
            state=Statistics.from_dict(data["state"]) if data.get("state") else None,
            num_episodes=int(data.get("num_episodes", 0)), num_steps=int(data.get("num_steps", 0)),
            num_instructions=int(data.get("num_instructions", 0)), extra=dict(data.get("extra") or {}),
        )


# -- computing from episodes, and caching ----------------------------------------------------
class StatisticsAccumulator:
    """Collects actions (and states) episode by episode in one pass; `finish` computes them all.

    Arrays are kept (float32) rather than summarised online because q01/q99 need every value.
    """

    def __init__(self) -> None:
        self._actions: list[np.ndarray] = []
        self._states: list[np.ndarray] = []
        self._instructions: set[str] = set()
        self.num_episodes = 0

    def add(self, actions: np.ndarray, states: np.ndarray | None = None, instructions: Any = ()) -> None:
        actions = np.asarray(actions, dtype=np.float32)
        if len(actions) == 0:
            return
        self._actions.append(actions)
        if states is not None:
            self._states.append(np.asarray(states, dtype=np.float32))
        self._instructions.update(i for i in instructions if i)
        self.num_episodes += 1

    def finish(self, action_mask: np.ndarray | None = None,
               extra: dict[str, Any] | None = None) -> DatasetStatistics:
        if not self._actions:
            raise ValueError("no steps to compute statistics from")
        actions = np.concatenate(self._actions)
        # a state only counts when every episode has one, so rows line up with the actions
        states = np.concatenate(self._states) if len(self._states) == len(self._actions) else None
        return DatasetStatistics(
            action=Statistics.from_array(actions, mask=action_mask),
            state=Statistics.from_array(states) if states is not None and states.ndim == 2 else None,
            num_episodes=self.num_episodes, num_steps=len(actions),
            num_instructions=len(self._instructions), extra=dict(extra or {}),
        )


def stats_file_name(key: str) -> str:
    return f"refine_statistics_{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def cached_statistics(
    key: str, compute: Callable[[], DatasetStatistics], directories: Sequence[str | Path],
) -> tuple[DatasetStatistics, Path | None]:
    """Statistics stored under `key` in the first of `directories` that has them, else computed
    and written to the first writable one. Returns them and the file used (None if none writable).

    `key` must change whenever the data or the options that shape it do; the file records it and
    a file whose key differs (a hash collision, a hand edit) is ignored.
    """
    name = stats_file_name(key)
    for directory in directories:
        path = Path(directory) / name
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("key") == key and "statistics" in data:
            return DatasetStatistics.from_dict(data["statistics"]), path
    stats = compute()
    payload = json.dumps({"key": key, "statistics": stats.to_dict()}, indent=1)
    for directory in directories:
        path = Path(directory) / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, payload, durable=False)  # recomputable: a cache
            return stats, path
        except OSError:  # read-only data folder: try the next place
            pass
    return stats, None
