"""Base model vs fine-tuned checkpoint: attention maps on the same held-out frames (the paper's
Figure 1/6 comparison).

The base model is the run's backbone rebuilt from the same config with the codec attached and
no trained weights: for the `tiny` preset that is the same seeded initialisation training
started from; for a `path` backbone, the pretrained weights before fine-tuning.

Frames: the middle step of each of the first N held-out episodes (`data.val_fraction` split of
the run's dataset, the split the offline benchmark evaluates). A run that held nothing out uses
training episodes and says so.

With `measure=N`, the same model loads also measure the attention share on the task objects
(`refine_core.report.attention_objects`) on N held-out frames per target that carry `boxes` step
metadata, spread evenly over the held-out episodes (evenly spaced steps in each).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refine_core.evaluate.attention import (AttentionMap, Fusion, Target, box_share, fuse, patch_grid,
    sample_attention, sample_image_maps, top_k_heads)
from refine_core.errors import UsageError
from refine_core.report.attention_objects import MEASURE_FUSION, ObjectAttention, summarise, task_boxes

BASE_LABEL = "base (untrained)"


@dataclass
class AttentionRow:
    key: str  # "<episode_id>/<step_index>"
    instruction: str
    maps: dict[str, AttentionMap]  # column label → map, base first


@dataclass
class AttentionComparison:
    rows: list[AttentionRow]
    target: str
    top_k: int
    fusion: str
    checkpoint: Path
    held_out: bool = True  # False: the run held no episodes out, training frames were used
    notes: list[str] = field(default_factory=list)
    objects: ObjectAttention | None = None  # the share on the task objects, when measured

    @property
    def labels(self) -> list[str]:
        return list(self.rows[0].maps) if self.rows else []


def resolve_checkpoint(directory: str | Path) -> Path:
    """The `step-*` directory meant by a step dir, a train dir, its checkpoints/, or a run dir OUT."""
    from refine_core.training.checkpoint import CHECKPOINTS, RUN_INFO, latest_checkpoint

    directory = Path(directory)
    if (directory / RUN_INFO).is_file():
        return directory
    for base in (directory.parent if directory.name == CHECKPOINTS else directory, directory / "train"):
        latest = latest_checkpoint(base)
        if latest is not None:
            return latest
    raise UsageError(f"No refine checkpoint in {directory} (looked for {RUN_INFO}, {CHECKPOINTS}/step-*, "
                     f"train/{CHECKPOINTS}/step-*)")


def _annotations(info: dict[str, Any], checkpoint: Path):
    """The annotation set the run trained with, if it is still on disk (else the run's annotations/)."""
    from refine_core.data.annotation_set import MANIFEST, AnnotationSet

    candidates = []
    if info.get("annotations"):
        candidates.append(Path(info["annotations"]["directory"]))
    candidates += [parent / "annotations" for parent in checkpoint.parents][:4]
    for directory in candidates:
        if (directory / MANIFEST).is_file():
            return AnnotationSet.load(directory)
    return None


def pick_samples(dataset: Any, config: Any, chunk_size: int, annotations: Any, episodes: int,
                 target: Target) -> tuple[list[Any], bool]:
    """(one sample per episode, whether they are held out): the middle step of each episode
    (for a reasoning target, the middle one of the annotated steps)."""
    from refine_core.data.samples import SampleStream, episode_samples

    def collect(split: str) -> list[Any]:
        stream = SampleStream(dataset, chunk_size=chunk_size, split=split,
                              val_fraction=config.data.val_fraction,
                              max_episodes=config.data.max_episodes, annotations=annotations)
        chosen = []
        for episode in stream.episodes():
            samples = list(episode_samples(episode, chunk_size, annotations))
            if target == "reasoning":
                samples = [s for s in samples if s.reasoning]
            if samples:
                chosen.append(samples[len(samples) // 2])
            if len(chosen) >= episodes:
                break
        return chosen

    held_out = collect("val")
    if held_out:
        return held_out, True
    training = collect("train")
    if not training:
        what = "annotated steps" if target == "reasoning" else "steps"
        raise UsageError(f"Dataset '{dataset.name}' has no {what} to draw attention frames from")
    return training, False


@dataclass
class MeasureFrame:
    sample: Any  # TrainingSample
    boxes: list[list[float]]  # the task objects' boxes in its frame


def _spread(episodes: list[list[MeasureFrame]], count: int) -> list[MeasureFrame]:
    """Up to `count` frames over as many episodes as possible: round r takes the r-th of each episode's
    evenly spaced picks."""
    episodes = [frames for frames in episodes if frames]
    if not episodes:
        return []
    per_episode = -(-count // len(episodes))
    picks = []
    for index, frames in enumerate(episodes):
        k = min(per_episode, len(frames))
        picks += [(rank, index, frames[int((rank + 0.5) * len(frames) / k)]) for rank in range(k)]
    return [frame for _, _, frame in sorted(picks, key=lambda p: p[:2])][:count]


def pick_frames(dataset: Any, config: Any, chunk_size: int, annotations: Any,
                count: int) -> tuple[dict[str, list[MeasureFrame]], bool]:
    """({target: frames}, held out): frames with task boxes for the action target and, among those
    with reasoning, for the reasoning target. Scans at most `count` episodes per split; a dataset
    whose first episode has no boxes is taken to have none."""
    from refine_core.data.samples import SampleStream, episode_samples

    for split in ("val", "train"):
        stream = SampleStream(dataset, chunk_size=chunk_size, split=split,
                              val_fraction=config.data.val_fraction, max_episodes=config.data.max_episodes,
                              annotations=annotations)
        found: list[list[MeasureFrame]] = []
        for episode in stream.episodes():
            metadata = {f"{episode.episode_id}/{step.step_index}": step.metadata for step in episode.steps}
            frames = []
            for sample in episode_samples(episode, chunk_size, annotations):
                boxes = task_boxes(metadata.get(sample.key, {}))
                if boxes:
                    frames.append(MeasureFrame(sample, boxes))
            if not frames and not found:
                return {}, split == "val"
            found.append(frames[:: max(1, len(frames) // count)])  # keep few frames of a long episode
            if len(found) >= count:
                break
        if found:
            chosen = {"action": _spread(found, count),
                      "reasoning": _spread([[f for f in e if f.sample.reasoning] for e in found], count)}
            return {target: frames for target, frames in chosen.items() if frames}, split == "val"
    return {}, True


def compare_attention(checkpoint: str | Path, episodes: int = 3, target: Target = "action", top_k: int = 8,
                      fusion: Fusion = "max", registry: Any = None, measure: int = 0) -> AttentionComparison:
    """Attention maps of the base model and the fine-tuned checkpoint on the same frames; with
    `measure` > 0 also the attention share on the task objects over that many frames per target."""
    from refine_core.registry import get_registry
    from refine_core.training.checkpoint import RUN_INFO, load_checkpoint, read_json
    from refine_core.training.setup import attach_codec, build_backbone

    if episodes < 1:
        raise UsageError(f"--episodes must be at least 1, got {episodes}")
    registry = registry or get_registry()
    step_dir = resolve_checkpoint(checkpoint)
    info = read_json(step_dir / RUN_INFO)
    tuned, config = load_checkpoint(step_dir, registry)
    dataset = registry.build("dataset", config.dataset.name, config.dataset.options)
    annotations = _annotations(info, step_dir)
    if annotations is not None:
        annotations = annotations.with_format(config.train.reasoning_format)
    if target == "reasoning" and annotations is None:
        raise UsageError(f"--target reasoning needs the run's annotations; none found for {step_dir}")
    samples, held_out = pick_samples(dataset, config, tuned.codec.chunk_size, annotations, episodes, target)
    order = config.train.reasoning_order
    started = time.perf_counter()
    frames, measured_held_out = (pick_frames(dataset, config, tuned.codec.chunk_size, annotations, measure)
                                 if measure > 0 else ({}, True))
    picking = time.perf_counter() - started
    # one model at a time on the accelerator: a real backbone pair may not fit side by side
    tuned_label = f"fine-tuned (step {info.get('step', '?')})"
    tuned_maps, tuned_shares, tuned_seconds = _run_on_device(tuned, samples, target, top_k, fusion, order,
                                                             frames)
    stats = tuned.codec.stats
    del tuned
    base = build_backbone(config, registry)
    attach_codec(base, config, registry, stats)
    base_maps, base_shares, base_seconds = _run_on_device(base, samples, target, top_k, fusion, order, frames)
    rows = [AttentionRow(key=s.key, instruction=s.instruction, maps={BASE_LABEL: b, tuned_label: t})
            for s, b, t in zip(samples, base_maps, tuned_maps)]
    notes = [] if held_out else [f"run held out no episodes (data.val_fraction={config.data.val_fraction}): "
                                 f"training frames shown"]
    objects = None
    if frames:
        shares = {name: summarise(name, [base_shares[name][f.sample.key][0] for f in chosen],
                                  [tuned_shares[name][f.sample.key][0] for f in chosen],
                                  [tuned_shares[name][f.sample.key][1] for f in chosen])
                  for name, chosen in frames.items()}
        objects = ObjectAttention(shares=shares, tuned_label=tuned_label, checkpoint=step_dir.name,
                                  held_out=measured_held_out, top_k=top_k,
                                  seconds=round(picking + tuned_seconds + base_seconds, 2))
        if not measured_held_out:
            objects.notes.append("run held out no episodes: the share is measured on training frames")
    elif measure > 0:
        notes.append("no object boxes in the dataset's step metadata (`boxes`): the attention share on the "
                     "task objects is not measured")
    return AttentionComparison(rows=rows, target=target, top_k=top_k, fusion=fusion, checkpoint=step_dir,
                               held_out=held_out, notes=notes, objects=objects)


def _run_on_device(backbone: Any, samples: list[Any], target: Target, top_k: int, fusion: Fusion, order: str,
                   frames: dict[str, list[MeasureFrame]]):
    """(figure maps, {target: {key: (share, chance)}}, seconds spent measuring) for one model."""
    import torch

    if torch.cuda.is_available():
        backbone.model.to("cuda")
    backbone.model.eval()
    try:
        maps = [sample_attention(backbone, s, target, top_k, fusion, order) for s in samples]
        started = time.perf_counter()
        wanted: dict[str, tuple[MeasureFrame, list[str]]] = {}  # one forward pass serves both targets
        for name, chosen in frames.items():
            for frame in chosen:
                wanted.setdefault(frame.sample.key, (frame, []))[1].append(name)
        shares: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in frames}
        for frame, targets in wanted.values():
            for name, (layers, _) in sample_image_maps(backbone, frame.sample, targets, order).items():
                mass = patch_grid(fuse(layers, top_k_heads(layers, top_k), MEASURE_FUSION))
                shares[name][frame.sample.key] = box_share(mass, frame.boxes)
        return maps, shares, time.perf_counter() - started
    finally:
        backbone.model.to("cpu")
