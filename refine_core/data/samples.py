"""Episodes → training samples: action chunks, train/validation split by episode, annotation join,
and a seeded shuffle buffer whose position can be saved and restored (exact resume).

The stream is deterministic for a given (dataset, seed): epoch e shuffles with seed (seed, e).
Restoring a position replays the stream up to it — cheap next to training, and exact.

Several processes (DDP/FSDP ranks) may each read their own part: `rank` r of `world_size` N
takes the split's episodes at positions r, r + N, r + 2N, … (after `max_episodes`, so every rank
draws from the same pool), which makes the ranks' samples disjoint and, together, the whole split.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np

from refine_core.data.annotation_set import AnnotationSet
from refine_core.backbone import TrainingSample
from refine_core.dataset import RobotDataset
from refine_core.episode import Episode

MissingAnnotation = Literal["action_only", "skip"]


def episode_split(episode_id: str, val_fraction: float) -> str:
    """'train' or 'val', fixed per episode id (a hash, so it does not depend on order or count)."""
    if val_fraction <= 0:
        return "train"
    bucket = int(hashlib.sha1(episode_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if bucket < val_fraction else "train"


def action_chunks(episode: Episode, chunk_size: int) -> np.ndarray:
    """[T, chunk, 7]: the actions from each step on; past the end the last action repeats."""
    actions = episode.actions()
    index = np.minimum(np.arange(len(actions))[:, None] + np.arange(chunk_size)[None, :], len(actions) - 1)
    return actions[index]


@dataclass
class SampleCounts:
    episodes: int = 0
    samples: int = 0
    with_reasoning: int = 0
    missing_reasoning: int = 0
    skipped: int = 0


def episode_samples(episode: Episode, chunk_size: int, annotations: AnnotationSet | None = None,
                    missing: MissingAnnotation = "action_only",
                    counts: SampleCounts | None = None) -> Iterator[TrainingSample]:
    counts = counts if counts is not None else SampleCounts()
    if not episode.steps:
        return
    counts.episodes += 1
    chunks = action_chunks(episode, chunk_size)
    for step, chunk in zip(episode.steps, chunks):
        reasoning = annotations.text(episode.episode_id, step.step_index,
                                     step.instruction) if annotations else None
        if annotations is not None and reasoning is None:
            counts.missing_reasoning += 1
            if missing == "skip":
                counts.skipped += 1
                continue
        counts.samples += 1
        counts.with_reasoning += reasoning is not None
        yield TrainingSample(images=step.images, primary_camera=step.primary_camera,
                             instruction=step.instruction,
                             actions=chunk, reasoning=reasoning,
                             key=f"{episode.episode_id}/{step.step_index}")


def plan_samples(episode: Episode, plan, settings, counts: SampleCounts | None = None
                 ) -> Iterator[TrainingSample]:
    """An episode's VLM2VLA text-task samples (`settings`: the `vlm2vla.*` config section) as
    text-answer training samples; `plan` None (no accepted plan): none, counted as skipped."""
    from refine_core.data.vlm2vla import vlm2vla_samples

    counts = counts if counts is not None else SampleCounts()
    if not episode.steps:
        return
    counts.episodes += 1
    if plan is None:
        counts.skipped += len(episode.steps)
        return
    hold = np.zeros((1, 7), dtype=np.float32)  # text answers carry their own actions; never read
    built = vlm2vla_samples(episode, plan, settings.chunk_size, tuple(settings.kinds), settings.with_plan)
    for sample in built:
        counts.samples += 1
        yield TrainingSample(images=sample.images, primary_camera=sample.primary_camera,
                             instruction=sample.prompt, actions=hold, answer=sample.answer,
                             answer_kind=sample.kind,
                             key=f"{episode.episode_id}/{sample.key.split('/', 1)[1]}")


class SampleStream:
    """Training samples of one split, shuffled through a seeded buffer, epoch after epoch.
    With `plans` (episode id → VLM2VLA plan) and `vlm2vla` settings, the samples are the episodes'
    text tasks (`plan_samples`) instead of one per step."""

    def __init__(self, dataset: RobotDataset, chunk_size: int = 1, split: str = "train",
                 val_fraction: float = 0.1, max_episodes: int | None = None, shuffle_buffer: int = 1000,
                 seed: int = 0, annotations: AnnotationSet | None = None,
                 missing_annotation: MissingAnnotation = "action_only", rank: int = 0, world_size: int = 1,
                 plans: dict | None = None, vlm2vla: Any = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        self.rank, self.world_size = rank, world_size
        self.dataset, self.chunk_size, self.split = dataset, chunk_size, split
        self.val_fraction, self.max_episodes = val_fraction, max_episodes
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.annotations, self.missing = annotations, missing_annotation
        if (plans is None) != (vlm2vla is None):
            raise ValueError("VLM2VLA samples need both the plans and the vlm2vla settings")
        self.plans, self.vlm2vla = plans, vlm2vla
        self.counts = SampleCounts()
        self.epoch, self.position = 0, 0  # samples consumed in the current epoch

    def episodes(self) -> Iterator[Episode]:
        """This rank's episodes of the split, in the dataset's order (validation holds out whole
        episodes; rank r of N keeps every N-th one from position r)."""
        taken = in_split = 0
        for episode in self.dataset.episodes("train"):
            if self.max_episodes is not None and taken >= self.max_episodes:
                return
            taken += 1
            if episode_split(episode.episode_id, self.val_fraction) != self.split:
                continue
            if in_split % self.world_size == self.rank:
                yield episode
            in_split += 1

    def samples(self) -> Iterator[TrainingSample]:
        """One unshuffled pass over the split."""
        for episode in self.episodes():
            if self.plans is not None:
                plan = self.plans.get(episode.episode_id)
                yield from plan_samples(episode, plan, self.vlm2vla, self.counts)
            else:
                yield from episode_samples(episode, self.chunk_size, self.annotations, self.missing,
                                           self.counts)

    def _shuffled(self, epoch: int) -> Iterator[TrainingSample]:
        # one rank keeps the single-process order; several ranks shuffle with their own streams
        rng = np.random.default_rng([self.seed, epoch] + ([self.rank] if self.world_size > 1 else []))
        buffer: list[TrainingSample] = []
        for sample in self.samples():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            i = int(rng.integers(len(buffer)))
            yield buffer[i]
            buffer[i] = sample
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[TrainingSample]:
        """Endless: epochs follow each other; the position survives state_dict/load_state_dict."""
        while True:
            emitted = 0
            for index, sample in enumerate(self._shuffled(self.epoch)):
                if index < self.position:
                    continue  # replaying up to a restored position
                self.position = index + 1
                emitted += 1
                yield sample
            if emitted == 0 and self.position == 0:
                where = f" for rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
                raise ValueError(f"the {self.split} split of dataset '{self.dataset.name}' has no "
                                 f"samples{where}")
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}  # per rank when sharded

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
