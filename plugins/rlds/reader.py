"""The shared RLDS reader: one tfds folder + an `RldsLayout` → refine Episodes and statistics.

Per episode, in this order (each step optional, set by the layout):
1. drop the first step (Bridge: its action is all zeros);
2. gripper to refine's convention (1 = open): `open_is_1` as is, `closed_is_1` → 1 − clip(g, 0, 1),
   `closedness_relative` → `rel2abs_gripper`;
3. binarise the gripper (`binarize_gripper`);
4. relabel movement from the reached state, dropping the last step (Bridge);
then steps whose recorded or converted action is NaN/inf are skipped and counted (or, with
`strict`, fail), and episodes with no instruction at any step are skipped when `skip_unlabeled`
(OpenVLA trains with `skip_unlabeled=True`). Episodes left with no step are skipped.

TensorFlow is imported on first read, never at module import.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from refine_core import (ACTION_DIM, DatasetStatistics, Episode, GRIPPER, RefineError, RobotDataset,
    StatisticsAccumulator, Step, UsageError, cache_dir, cached_statistics)

from . import conversions
from .layout import (RldsLayout, content_fingerprint, locate_version_dir, parse_action_part, read_features,
                     validate_layout)
from .tensorflow_import import tensorflow

log = logging.getLogger("refine.datasets")
_ALL_STEPS = 2**31 - 1  # batch size that puts a whole episode's steps in one batch


@dataclass
class Trajectory:
    """One converted episode as arrays (images only when asked for)."""

    ordinal: int  # position of the episode in the split's files
    actions: np.ndarray
    instructions: list[str]
    states: np.ndarray | None = None
    images: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    source_steps: np.ndarray | None = None  # index of each kept step in the recorded episode


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _text(values: Any) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.atleast_1d(values)]


def _tf_reason(exc: Exception) -> str:
    """TensorFlow's message without its graph-node and op decorations."""
    text = (getattr(exc, "message", "") or str(exc)).strip()
    text = re.sub(r"\{\{.*?\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text, flags=re.S)
    return text.splitlines()[0] if text else type(exc).__name__


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else value.tolist()
    return value.item() if isinstance(value, np.generic) else value


class RldsDataset(RobotDataset):
    """Any RLDS (tfds) dataset on disk, read through an `RldsLayout`."""

    def __init__(self, layout: RldsLayout, data_dir: str | Path | None, *, name: str = "rlds",
                 max_episodes: int | None = None, strict: bool = False, skip_unlabeled: bool = True,
                 primary_camera_only: bool = False):
        self.name, self.layout = name, layout
        self.robot, self.control_frequency = layout.robot, layout.control_frequency
        self.cameras = layout.cameras()
        self.primary_camera_only = primary_camera_only  # the others stay encoded and are dropped
        self.max_episodes, self.strict, self.skip_unlabeled = max_episodes, strict, skip_unlabeled
        self.version_dir = locate_version_dir(data_dir, layout.builder, name)
        self._features = read_features(self.version_dir)
        self._paths = validate_layout(layout, self._features, self.version_dir, name)
        self._image_paths = [self._paths[k] for k in layout.image_keys]
        try:
            self._info = json.loads((self.version_dir / "dataset_info.json").read_text())
        except ValueError as exc:
            raise UsageError(f"Cannot read {self.version_dir / 'dataset_info.json'}: {exc}") from None
        self._identity: str | None = None
        self._pipelines: dict[tuple[str, bool], Any] = {}  # (split, images) → tf.data.Dataset
        self.statistics_path: Path | None = None
        self.skipped: dict[str, int] = {}

    # -- identity and splits -------------------------------------------------------------------
    @property
    def builder_name(self) -> str:
        return str(self._info.get("name") or self.version_dir.parent.name)

    @property
    def splits(self) -> dict[str, list[int]]:
        return {s["name"]: [int(n) for n in s.get("shardLengths", [])] for s in self._info.get("splits", [])}

    @property
    def identity(self) -> str:
        if self._identity is None:
            payload = {
                "dataset": self.name, "path": str(self.version_dir), "builder": self.builder_name,
                "version": self._info.get("version"), "layout": asdict(self.layout),
                "max_episodes": self.max_episodes, "skip_unlabeled": self.skip_unlabeled,
                "strict": self.strict,  # strict statistics exist only for data without NaN/inf
                "content": content_fingerprint(self.version_dir),
            }
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True,
                                               default=str).encode()).hexdigest()[:16]
            self._identity = f"{self.name}:{self.builder_name}:{self._info.get('version')}:{digest}"
        return self._identity

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise UsageError(f"Split '{split}' not in {self.version_dir}. Available: "
                             f"{', '.join(sorted(self.splits))}")

    # -- reading -------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pipelines": {}}  # tf.data pipelines do not pickle; rebuilt on use

    def _tf_episodes(self, split: str, images: bool) -> Iterator[tuple[int, dict, dict]]:
        """(ordinal, flat steps, flat episode-level fields) as NumPy, straight from tfds."""
        tf, _ = tensorflow()
        key = (split, images)
        if key not in self._pipelines:  # built once: tracing its functions cost ~0.3 s per epoch
            self._pipelines[key] = self._pipeline(split, images)
        seen = 0
        try:
            for ordinal, steps, rest in self._pipelines[key].as_numpy_iterator():
                seen = int(ordinal) + 1
                yield int(ordinal), _flatten(steps), _flatten(rest)
        except tf.errors.OpError as exc:
            raise self._read_error(split, seen, exc) from None

    def _pipeline(self, split: str, images: bool):
        """The tf.data pipeline of whole episodes. tfds's decoder would decode every camera's
        JPEGs on reading; instead they are read as bytes and decoded by `_decode_images`, in a
        parallel map (off the Python thread) and only for cameras an episode has (Bridge pads
        absent views with blank frames)."""
        tf, tfds = tensorflow()
        builder = tfds.builder_from_directory(str(self.version_dir))
        encoded = {path for path in self._image_paths
                   if getattr(self._features.get(f"steps/{path}"), "kind", None) == "image"}
        decoders: dict = {}
        for path in encoded:  # {"steps": {"observation": {"image_0": SkipDecoding()}}}
            node = decoders
            *parents, leaf = ["steps", *path.split("/")]
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = tfds.decode.SkipDecoding()
        ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders or None)

        def whole_episode(ordinal, episode):
            rest = {k: v for k, v in episode.items() if k != "steps"}
            return episode["steps"].batch(_ALL_STEPS).map(lambda steps: (ordinal, steps, rest))

        ds = ds.enumerate().flat_map(whole_episode)
        if encoded:
            decode = self._decode_images(builder.info.features["steps"], encoded, images, tf)
            ds = ds.map(tf.autograph.experimental.do_not_convert(decode),  # plain Python: no autograph
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(2)

    def _decode_images(self, step_features, encoded: set[str], images: bool, tf):
        """The tf.data map function decoding one episode's encoded cameras with tfds's own
        decoder (so frames are exactly what tfds yields); a camera whose `has_<camera>` episode
        flag is false (and dropped anyway) becomes an empty stack; without `images`, the encoded
        bytes are removed (statistics never look at pixels)."""
        wanted, seen = [], set()
        for position, (camera, path) in enumerate(zip(self.cameras, self._image_paths)):
            if path in encoded and path not in seen:  # a key listed twice is decoded once
                wanted.append((position, camera, path))
                seen.add(path)

        def none_decoded(feature):
            return tf.zeros([0, *(d or 0 for d in feature.shape)], feature.tf_dtype)

        def decode_all(feature, data):
            # tfds's per-image decode over the episode (as its Sequence decoding does)
            spec = tf.TensorSpec(feature.shape, feature.tf_dtype)
            return tf.cond(tf.size(data) == 0, lambda: none_decoded(feature),
                           lambda: tf.map_fn(feature.decode_example, data, fn_output_signature=spec,
                                             parallel_iterations=10))

        def decode(ordinal, steps, rest):
            steps = tf.nest.map_structure(lambda t: t, steps)  # a copy we may change
            flags = rest.get("episode_metadata", {})
            for position, camera, path in wanted:
                *parents, leaf = path.split("/")
                node, feature = steps, step_features
                for part in parents:
                    node, feature = node[part], feature[part]
                if not images or (position > 0 and self.primary_camera_only):
                    del node[leaf]
                    continue
                feature, data = feature[leaf], node[leaf]
                flag = flags.get(f"has_{camera}")
                optional = position > 0 and self.layout.drop_blank_cameras and flag is not None
                if optional and (flag.dtype.is_bool or flag.dtype.is_integer or flag.dtype.is_floating):
                    node[leaf] = tf.cond(tf.cast(flag, tf.bool), lambda f=feature, d=data: decode_all(f, d),
                                         lambda f=feature: none_decoded(f))
                else:
                    node[leaf] = decode_all(feature, data)
            return ordinal, steps, rest

        return decode

    def _read_error(self, split: str, seen: int, exc: Exception) -> RefineError:
        tf, _ = tensorflow()

        shards = sorted(self.version_dir.glob(f"{self.builder_name}-{split}.tfrecord*"))
        bounds = np.cumsum(self.splits.get(split, []))
        first = int(np.searchsorted(bounds, seen, side="right")) if len(bounds) == len(shards) else 0
        for shard in shards[first:] + shards[:first]:  # the shard being read when it failed, first
            try:
                for _ in tf.data.TFRecordDataset(str(shard)):
                    pass
            except tf.errors.OpError as bad:
                return UsageError(f"Corrupt TFRecord file {shard}: {_tf_reason(bad)}")
        return RefineError(f"Reading {self.version_dir} ({split}) failed: {_tf_reason(exc)}")

    def trajectories(self, split: str = "train", images: bool = True) -> Iterator[Trajectory]:
        """Converted episodes as arrays, in file order (`max_episodes` counts yielded ones)."""
        self._check_split(split)
        self.skipped = {"nonfinite_steps": 0, "unlabeled_episodes": 0, "empty_episodes": 0}
        yielded = 0
        for ordinal, steps, rest in self._tf_episodes(split, images):
            if self.max_episodes is not None and yielded >= self.max_episodes:
                break
            traj = self._convert(ordinal, steps, rest, images)
            if traj is not None:
                yielded += 1
                yield traj
        if self.skipped["nonfinite_steps"]:
            log.warning("%s: skipped %d steps with NaN/inf actions (set dataset.strict=true to fail instead)",
                        self.name, self.skipped["nonfinite_steps"])

    def _convert(self, ordinal: int, steps: dict, rest: dict, images: bool) -> Trajectory | None:
        layout, paths = self.layout, self._paths
        metadata = {k.split("/",
                            1)[-1]: _plain(v) for k, v in rest.items() if k.startswith("episode_metadata/")}
        where = f"episode {ordinal}" + (f" ({metadata['file_path']})" if metadata.get("file_path") else "")
        parts = []
        for text in layout.action_keys:
            part = parse_action_part(text)
            values = np.asarray(steps[paths[part.key]], dtype=np.float32)
            values = values.reshape(len(values), -1)
            parts.append(values[:, part.start:part.stop])
        actions = np.concatenate(parts, axis=1)
        length = len(actions)
        states = None
        if layout.state_keys:
            states = np.concatenate([np.asarray(steps[paths[k]], dtype=np.float32).reshape(length, -1)
                                     for k in layout.state_keys], axis=1)
        instructions = _text(steps[paths[layout.instruction_key]])
        index = np.arange(length)
        bad = ~np.isfinite(actions).all(axis=1)

        if layout.drop_first_step:
            actions, index, bad = actions[1:], index[1:], bad[1:]
            states = states[1:] if states is not None else None
        gripper = actions[:, GRIPPER]
        if layout.gripper == "closed_is_1":
            gripper = conversions.invert_gripper(gripper)
        elif layout.gripper == "closedness_relative":
            gripper = conversions.rel2abs_gripper(gripper)
        if layout.binarize_gripper:
            gripper = conversions.binarize_gripper(gripper)
        actions = np.concatenate([actions[:, :GRIPPER], gripper[:, None]], axis=1).astype(np.float32)
        if layout.relabel_from_state and states is not None:
            movement = conversions.relabel_from_state(states)
            actions = np.concatenate([movement, actions[:-1, GRIPPER:]], axis=1)
            bad = bad[:-1] | ~np.isfinite(states[1:, :6]).all(axis=1)
            index, states = index[:-1], states[:-1]
        bad |= ~np.isfinite(actions).all(axis=1)
        if bad.any():
            if self.strict:
                step = int(index[np.flatnonzero(bad)[0]])
                raise UsageError(f"NaN/inf action in {self.version_dir} {where} step {step}; "
                                 f"fix the data, or set dataset.strict=false to skip such steps")
            self.skipped["nonfinite_steps"] += int(bad.sum())
        keep = ~bad
        texts = [instructions[i] for i in index[keep]]
        if not keep.any():
            self.skipped["empty_episodes"] += 1
            return None
        if self.skip_unlabeled and not any(t.strip() for t in texts):
            self.skipped["unlabeled_episodes"] += 1
            return None
        frames = self._images(steps, metadata, index[keep], where) if images else {}
        return Trajectory(
            ordinal=ordinal, actions=actions[keep], instructions=texts,
            states=states[keep] if states is not None else None, images=frames,
            metadata=metadata, source_steps=index[keep],
        )

    def _images(self, steps: dict, metadata: dict, index: np.ndarray, where: str) -> dict[str, np.ndarray]:
        frames: dict[str, np.ndarray] = {}
        for position, (camera, path) in enumerate(zip(self.cameras, self._image_paths)):
            if position > 0 and self.primary_camera_only:
                break
            optional = position > 0 and self.layout.drop_blank_cameras
            # Bridge pads views a robot did not have with all-zero frames (and says so in has_image_N);
            # such cameras were not decoded (an empty stack, see `_decode_images`)
            if optional and metadata.get(f"has_{camera}") in (False, 0):
                continue
            stack = np.asarray(steps[path])
            if stack.ndim != 4 or stack.shape[-1] != 3 or stack.dtype != np.uint8:
                raise UsageError(f"Image '{path}' in {self.version_dir} {where} has shape "
                                 f"{list(stack.shape[1:])} "
                                 f"and dtype {stack.dtype} per step; refine needs H x W x 3 uint8 RGB images")
            if len(index) and index[-1] - index[0] == len(index) - 1:
                stack = stack[index[0]:index[-1] + 1]  # kept steps are a run: a view, not a copy
            else:
                stack = stack[index]
            if optional and not stack.any():
                continue
            frames[camera] = stack
        return frames

    def episodes(self, split: str = "train") -> Iterator[Episode]:
        for traj in self.trajectories(split, images=True):
            yield self._episode(split, traj)

    def _episode(self, split: str, traj: Trajectory) -> Episode:
        episode_id = f"{split}-{traj.ordinal:06d}"
        primary = self.cameras[0]
        n = len(traj.actions)
        steps = [
            Step(
                images={cam: frames[t] for cam, frames in traj.images.items()},
                instruction=traj.instructions[t],
                action=traj.actions[t], primary_camera=primary, episode_id=episode_id, step_index=t,
                state=traj.states[t] if traj.states is not None else None, is_first=t == 0,
                is_last=t == n - 1,
                metadata={**traj.metadata, "source_step": int(traj.source_steps[t])},
            )
            for t in range(n)
        ]
        return Episode(episode_id, steps, metadata={**traj.metadata, "dataset": self.name, "split": split})

    # -- statistics ----------------------------------------------------------------------------
    def statistics(self) -> DatasetStatistics:
        """Training-split statistics, cached next to the data (or in the user cache) by identity."""
        stats, self.statistics_path = cached_statistics(
            self.identity, self._compute_statistics, [self.version_dir, cache_dir("stats")]
        )
        return stats

    def _compute_statistics(self) -> DatasetStatistics:
        accumulator = StatisticsAccumulator()
        for traj in self.trajectories("train", images=False):
            accumulator.add(traj.actions, traj.states, traj.instructions)
        if accumulator.num_episodes == 0:
            raise UsageError(f"No usable episodes in the train split of {self.version_dir}")
        mask = np.arange(ACTION_DIM) != GRIPPER  # the gripper is already 0/1: not normalised
        extra = {"split": "train", "identity": self.identity,
                 **{f"skipped_{k}": v for k, v in self.skipped.items()}}
        return accumulator.finish(action_mask=mask, extra=extra)


def build_rlds_dataset(options) -> RldsDataset:
    """Factory of the `rlds` plugin: an `RldsOptions` → `RldsDataset`."""
    layout = RldsLayout(
        image_keys=tuple(options.image_keys), instruction_key=options.instruction_key,
        action_keys=tuple(options.action_keys), gripper=options.gripper,
        binarize_gripper=options.binarize_gripper, drop_first_step=options.drop_first_step,
        relabel_from_state=options.relabel_from_state, state_keys=tuple(options.state_keys),
        builder=options.builder, robot=options.robot, control_frequency=options.control_frequency,
        drop_blank_cameras=options.drop_blank_cameras,
    )
    return RldsDataset(layout, options.data_dir, name="rlds", max_episodes=options.max_episodes,
                       strict=options.strict, skip_unlabeled=options.skip_unlabeled,
                       primary_camera_only=options.primary_camera_only)
