"""Which episodes a run annotates (shards, caps) and what it asks about each step."""
from __future__ import annotations

import hashlib
from typing import Any, Iterator

import numpy as np

from refine_core.config import AnnotateSettings
from refine_core.dataset import RobotDataset
from refine_core.episode import Episode, Step
from refine_core.errors import UsageError
from refine_core.teacher import AnnotationRequest, Price, Teacher, TeacherIdentity


def parse_shard(text: str | None) -> tuple[int, int]:
    """"i/n" (0 <= i < n) → (i, n); None → (0, 1)."""
    if not text:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"Bad --shard '{text}': write it as i/n, e.g. 0/4 (shards 0..n-1)") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"Bad --shard '{text}': need 0 <= i < n, e.g. 0/4")
    return index, count


def shard_of(episode_id: str, count: int) -> int:
    """Which of `count` shards owns an episode: a hash of its id, so it does not depend on order."""
    return int(hashlib.sha1(episode_id.encode()).hexdigest()[:12], 16) % count


def select_episodes(dataset: RobotDataset, split: str, shard: tuple[int, int],
                    max_episodes: int | None = None) -> Iterator[Episode]:
    """The episodes this shard annotates (`max_episodes` counts dataset episodes, before sharding,
    so every shard of a capped run sees the same episode pool)."""
    for position, episode in enumerate(dataset.episodes(split)):
        if max_episodes is not None and position >= max_episodes:
            return
        if shard_of(episode.episode_id, shard[1]) == shard[0]:
            yield episode


def run_header(dataset: RobotDataset, identity: TeacherIdentity,
               settings: AnnotateSettings) -> dict[str, Any]:
    return {"dataset": dataset.name, "dataset_identity": dataset.identity, "teacher": identity.key(),
            "strategy": settings.strategy,
            "every": settings.every if settings.strategy == "every_k" else None}


def effective_price(teacher: Teacher, settings: AnnotateSettings) -> Price:
    base = teacher.price
    return Price(
        input_per_million=base.input_per_million if settings.price_input_per_million is None
        else settings.price_input_per_million,
        output_per_million=base.output_per_million if settings.price_output_per_million is None
        else settings.price_output_per_million,
    )


def step_request(step: Step, episode_actions: np.ndarray) -> AnnotationRequest:
    return AnnotationRequest(instruction=step.instruction, images=step.images,
                             primary_camera=step.primary_camera,
                             episode_id=step.episode_id, step_index=step.step_index, action=step.action,
                             metadata=step.metadata, episode_actions=episode_actions)
