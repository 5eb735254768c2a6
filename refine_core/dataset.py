"""The dataset contract: stream Episodes, report statistics and what the robot is."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

from refine_core.episode import Episode
from refine_core.statistics import DatasetStatistics


class RobotDataset(ABC):
    """A robot dataset in refine's conventions (see `refine_core.episode`).

    Subclasses set `name`, `robot`, `control_frequency` (Hz), `cameras` (names, primary first)
    and implement `episodes` and `identity`. `statistics()` may be computed and cached.
    """

    name: str = "dataset"
    robot: str = "unknown"
    control_frequency: float = 0.0
    cameras: tuple[str, ...] = ()

    @property
    def primary_camera(self) -> str:
        return self.cameras[0]

    @property
    @abstractmethod
    def identity(self) -> str:
        """A stable key for this dataset's content (caches and annotations are keyed by it)."""

    @abstractmethod
    def episodes(self, split: str = "train") -> Iterator[Episode]:
        """Stream episodes of a split, in a deterministic order."""

    @abstractmethod
    def statistics(self) -> DatasetStatistics:
        """Per-dimension action (and state) statistics of the training split."""
