"""LeRobotDataset v3 folder → refine Episodes and statistics (pyarrow for parquet, PyAV for mp4).

Per episode: its rows of the data file (filtered by `episode_index`, ordered by `frame_index`),
the action mapped onto refine's 7-D convention (see `plugins.lerobot`), the instruction from
`task_index` through meta/tasks.parquet, and each camera either decoded from the parquet's image
structs or from the episode's segment of the camera's mp4 (`from_timestamp + frame_index / fps`).
Steps with a NaN/inf action are skipped and counted.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from refine_core import (ACTION_DIM, DatasetStatistics, Episode, GRIPPER, MissingExtra, RobotDataset,
    StatisticsAccumulator, Step, UsageError, cache_dir, cached_statistics)

from .layout import (CAMERA_DTYPES, IMAGE_PREFIX, INFO_PATH, EpisodeRecord, missing_key, read_episode_records,
                     read_info, read_tasks, split_range)

log = logging.getLogger("refine.datasets")


def _matrix(column, rows: int) -> np.ndarray:
    """A (fixed-size) list column or a scalar column as float32 [rows, D]."""
    import pyarrow as pa

    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if (
        pa.types.is_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
        or pa.types.is_large_list(column.type)
    ):
        return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(rows, -1)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(rows, -1)


def _decode_image(value: Any, root: Path, where: str) -> np.ndarray:
    from PIL import Image

    if isinstance(value, dict) and value.get("bytes"):
        source: Any = io.BytesIO(value["bytes"])
    elif isinstance(value, dict) and value.get("path"):
        source = root / value["path"]
    else:
        raise UsageError(f"{where}: image has neither bytes nor a path")
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def camera_name(key: str) -> str:
    """observation.images.front → front (the name Steps use)."""
    return key[len(IMAGE_PREFIX):] if key.startswith(IMAGE_PREFIX) else key


class LeRobotDataset(RobotDataset):
    name = "lerobot"

    def __init__(self, options):
        if not options.root:
            raise UsageError("The lerobot dataset needs dataset.root=DIR (a LeRobotDataset v3 folder)")
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise MissingExtra("pyarrow", "lerobot", "the lerobot dataset") from None
        self.options = options
        self.root = Path(options.root).expanduser()
        self.info = read_info(self.root)
        features: dict[str, dict] = self.info["features"]
        self.features = features
        info_path = self.root / INFO_PATH
        cameras = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") in CAMERA_DTYPES]
        keys = list(options.image_keys or ([k for k in cameras if k.startswith(IMAGE_PREFIX)] or cameras))
        if not keys:
            raise UsageError(f"{self.root} has no image or video feature; features found: "
                             f"{', '.join(sorted(features))}")
        keys = [k if k in features else IMAGE_PREFIX + k for k in keys]  # short camera names allowed
        for key in keys:
            if key not in cameras:
                raise missing_key("Image key", key, cameras, info_path)
        if options.primary_camera:
            primary = next((k for k in keys if options.primary_camera in (k, camera_name(k))), None)
            if primary is None:
                raise missing_key("primary_camera", options.primary_camera, keys, "the image keys")
            keys = [primary] + [k for k in keys if k != primary]
        self.image_keys = keys
        self.video_keys = [k for k in keys if features[k]["dtype"] == "video"]
        self.cameras = tuple(camera_name(k) for k in keys)
        vectors = [k for k in features if k not in cameras]
        if options.action_key not in features:
            raise missing_key("Action key", options.action_key, vectors, info_path)
        self.action_size = int(np.prod(features[options.action_key].get("shape") or [1]))
        for dim in [*options.movement_dims, options.gripper_dim]:
            if not -self.action_size <= dim < self.action_size:
                raise UsageError(f"Action dim {dim} is outside '{options.action_key}' of size "
                                 f"{self.action_size}; "
                                 f"set dataset.movement_dims / dataset.gripper_dim")
        lo, hi = options.gripper_range
        if hi == lo:
            raise UsageError("dataset.gripper_range needs two different values")
        self.state_key = options.state_key if options.state_key and options.state_key in features else None
        if options.state_key and self.state_key is None and "state_key" in options.model_fields_set:
            raise missing_key("State key", options.state_key, vectors, info_path)
        self.robot = str(self.info.get("robot_type") or "unknown")
        self.control_frequency = float(self.info["fps"])
        self._records: list[EpisodeRecord] | None = None
        self._tasks: dict[int, str] | None = None
        self._table_cache: tuple[Path, tuple[str, ...], Any] | None = None
        self._identity: str | None = None
        self.statistics_path: Path | None = None
        self.skipped = {"nonfinite_steps": 0}

    # -- identity ---------------------------------------------------------------------------------
    @property
    def identity(self) -> str:
        if self._identity is None:
            files = sorted(p for p in self.root.rglob("*") if p.suffix in (".parquet", ".mp4",
                                                                           ".json") and p.is_file())
            content = [(str(p.relative_to(self.root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
            payload = {"root": str(self.root.resolve()), "info": self.info, "content": content,
                       "options": self.options.model_dump(mode="json")}
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True,
                                               default=str).encode()).hexdigest()[:16]
            self._identity = f"lerobot:{self.root.name}:{self.info.get('codebase_version')}:{digest}"
        return self._identity

    # -- metadata -----------------------------------------------------------------------------------
    @property
    def records(self) -> list[EpisodeRecord]:
        if self._records is None:
            self._records = read_episode_records(self.root, self.info, self.video_keys)
        return self._records

    @property
    def tasks(self) -> dict[int, str]:
        if self._tasks is None:
            self._tasks = read_tasks(self.root)
        return self._tasks

    def _split_records(self, split: str) -> Iterator[EpisodeRecord]:
        by_index = {r.index: r for r in self.records}
        wanted = split_range(self.info, split, len(by_index))
        yielded = 0
        for index in wanted:
            if self.options.max_episodes is not None and yielded >= self.options.max_episodes:
                return
            if index not in by_index:
                raise UsageError(
                    f"Episode {index} of split '{split}' has no row in {self.root}/meta/episodes"
                )
            yielded += 1
            yield by_index[index]

    # -- frames -------------------------------------------------------------------------------------
    def _rows(self, record: EpisodeRecord, columns: tuple[str, ...]):
        """The episode's rows of its data file (the file is kept while consecutive episodes use it)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if self._table_cache is None or self._table_cache[:2] != (record.data_file, columns):
            if not record.data_file.is_file():
                raise UsageError(f"LeRobot data file {record.data_file} (episode {record.index}) is missing")
            names = pq.read_schema(record.data_file).names
            for column in columns:
                if column not in names:
                    raise missing_key("Column", column, names, record.data_file)
            self._table_cache = (record.data_file, columns, pq.read_table(record.data_file,
                                                                          columns=list(columns)))
        table = self._table_cache[2]
        rows = table.filter(pc.equal(table["episode_index"], record.index))
        return rows.sort_by("frame_index") if "frame_index" in columns else rows

    def _columns(self, images: bool) -> tuple[str, ...]:
        columns = ["episode_index", "frame_index", "task_index", self.options.action_key]
        columns += [self.state_key] if self.state_key else []
        columns += ["timestamp", "index"] if images else []
        columns += [k for k in self.image_keys if k not in self.video_keys] if images else []
        return tuple(columns)

    def _actions(self, raw: np.ndarray) -> np.ndarray:
        opts = self.options
        actions = np.zeros((len(raw), ACTION_DIM), dtype=np.float32)
        actions[:, :len(opts.movement_dims)] = raw[:, opts.movement_dims]
        lo, hi = opts.gripper_range
        gripper = np.clip((raw[:, opts.gripper_dim] - lo) / (hi - lo), 0.0, 1.0)
        gripper = 1.0 - gripper if opts.gripper_open_at == "low" else gripper
        actions[:, GRIPPER] = (gripper > 0.5).astype(np.float32) if opts.binarize_gripper else gripper
        return actions

    def _arrays(self, record: EpisodeRecord, images: bool) -> dict[str, Any]:
        rows = self._rows(record, self._columns(images))
        n = rows.num_rows
        actions = self._actions(_matrix(rows[self.options.action_key], n))
        keep = np.isfinite(actions).all(axis=1)
        self.skipped["nonfinite_steps"] += int((~keep).sum())
        tasks = self.tasks
        out: dict[str, Any] = {
            "actions": actions[keep],
            "states": _matrix(rows[self.state_key], n)[keep] if self.state_key else None,
            "instructions": [tasks.get(int(i), "") for i, k in zip(rows["task_index"].to_pylist(),
                                                                   keep) if k],
            "frame_index": np.asarray(rows["frame_index"].to_pylist(), dtype=np.int64)[keep],
        }
        if images:
            out["index"] = np.asarray(rows["index"].to_pylist())[keep]
            out["timestamp"] = np.asarray(rows["timestamp"].to_pylist(), dtype=np.float64)[keep]
            out["images"] = {camera_name(k): self._camera(record, k, rows, keep, out["frame_index"])
                             for k in self.image_keys}
        return out

    def _camera(self, record: EpisodeRecord, key: str, rows, keep: np.ndarray,
                frame_index: np.ndarray) -> np.ndarray:
        if key in self.video_keys:
            from .video import decode_frames

            path, start = record.videos[key]
            # frame_index / fps: the grid the frames were encoded on (float32 timestamps drift)
            return decode_frames(path, start + frame_index / self.control_frequency,
                                 self.options.video_tolerance_s)
        where = f"{record.data_file} episode {record.index} '{key}'"
        values = [v for v, k in zip(rows[key].to_pylist(), keep) if k]
        return np.stack([_decode_image(v, self.root, where) for v in values])

    # -- the dataset contract -------------------------------------------------------------------------
    def episodes(self, split: str = "train") -> Iterator[Episode]:
        self.skipped = {"nonfinite_steps": 0}
        for record in self._split_records(split):
            arrays = self._arrays(record, images=True)
            n = len(arrays["actions"])
            if n == 0:
                continue
            episode_id = f"{split}-{record.index:06d}"
            steps = [
                Step(images={cam: frames[t] for cam, frames in arrays["images"].items()},
                     instruction=arrays["instructions"][t], action=arrays["actions"][t],
                     primary_camera=self.cameras[0], episode_id=episode_id, step_index=t,
                     state=arrays["states"][t] if arrays["states"] is not None else None,
                     is_first=t == 0, is_last=t == n - 1,
                     metadata={"episode_index": record.index, "frame_index": int(arrays["frame_index"][t]),
                               "index": int(arrays["index"][t]), "timestamp": float(arrays["timestamp"][t])})
                for t in range(n)
            ]
            yield Episode(episode_id, steps, metadata={"dataset": self.name, "split": split,
                                                       "episode_index": record.index})
        if self.skipped["nonfinite_steps"]:
            log.warning("%s: skipped %d steps with NaN/inf actions", self.name,
                        self.skipped["nonfinite_steps"])

    def statistics(self) -> DatasetStatistics:
        stats, self.statistics_path = cached_statistics(self.identity, self._compute_statistics,
                                                        [self.root / "meta", cache_dir("stats")])
        return stats

    def _compute_statistics(self) -> DatasetStatistics:
        accumulator = StatisticsAccumulator()
        self.skipped = {"nonfinite_steps": 0}
        for record in self._split_records("train"):
            arrays = self._arrays(record, images=False)
            accumulator.add(arrays["actions"], arrays["states"], arrays["instructions"])
        if accumulator.num_episodes == 0:
            raise UsageError(f"No usable episodes in the train split of {self.root}")
        mask = np.arange(ACTION_DIM) != GRIPPER  # the gripper is already in [0, 1]: not normalised
        return accumulator.finish(
            action_mask=mask,
            extra={
                "split": "train",
                "identity": self.identity,
                "skipped_nonfinite_steps": self.skipped["nonfinite_steps"],
            },
        )
