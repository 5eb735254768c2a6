"""The on-disk facts of a LeRobotDataset v3 folder (read from huggingface/lerobot, 2026-11):

    meta/info.json                  codebase_version "v3.0", fps, features {key: {dtype, shape, names}},
                                    data_path / video_path templates, chunks_size, splits {"train": "0:N"},
                                    robot_type, total_episodes, total_frames
    meta/tasks.parquet              one row per task: the task text is the (pandas) index, plus `task_index`
    meta/episodes/chunk-XXX/file-XXX.parquet
                                    one row per episode: episode_index, length, tasks, data/chunk_index,
                                    data/file_index, dataset_from_index, dataset_to_index and, per video
                                    key, videos/<key>/chunk_index, file_index, from_timestamp, to_timestamp
    data/chunk-XXX/file-XXX.parquet frames of several episodes: the features plus timestamp, frame_index,
                                    episode_index, index, task_index; `image` features are structs
                                    {bytes, path} (PNG/JPEG bytes)
    videos/<key>/chunk-XXX/file-XXX.mp4
                                    several episodes back to back; a frame of an episode sits at
                                    from_timestamp + its own timestamp in the file

Feature dtypes: "video" and "image" are cameras; the rest are arrays of `shape`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refine_core import UsageError

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
DEFAULT_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
CAMERA_DTYPES = ("image", "video")
IMAGE_PREFIX = "observation.images."


@dataclass
class EpisodeRecord:
    """Where one episode's frames live."""

    index: int
    length: int
    data_file: Path
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # key -> (mp4, from_timestamp)


def read_info(root: Path) -> dict[str, Any]:
    """meta/info.json of a v3 folder, or a one-line UsageError saying what is wrong."""
    path = root / INFO_PATH
    if not root.is_dir():
        raise UsageError(f"LeRobot dataset.root {root} is not a folder")
    if not path.is_file():
        raise UsageError(f"{root} is not a LeRobotDataset folder: {INFO_PATH} is missing")
    try:
        info = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"Cannot read {path}: {exc}") from None
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version != CODEBASE_VERSION:
        raise UsageError(f"{root} is a LeRobotDataset of codebase_version {version!r}; the lerobot plugin "
                         "reads "
                         f"{CODEBASE_VERSION!r} (convert older folders with lerobot's v2.1 → v3.0 converter)")
    if not isinstance(info.get("features"), dict) or not info.get("fps"):
        raise UsageError(f"{path} lacks 'features' or 'fps'; keys found: {', '.join(sorted(info))}")
    return info


def missing_key(what: str, key: str, found, where: Path | str) -> UsageError:
    return UsageError(f"{what} '{key}' not found in {where}. Found: {', '.join(sorted(found)) or '(none)'}")


def read_tasks(root: Path) -> dict[int, str]:
    """task_index → task text. The text is the pandas index (named 'task' or unnamed)."""
    import pyarrow.parquet as pq

    path = root / TASKS_PATH
    if not path.is_file():
        raise UsageError(f"{root} is not a complete LeRobotDataset: {TASKS_PATH} is missing")
    table = pq.read_table(path)
    names = table.column_names
    pandas_meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    index_columns = [c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)]
    text_column = next((c for c in [*index_columns, "task", "__index_level_0__"] if c in names), None)
    if "task_index" not in names or text_column is None:
        raise UsageError(f"{path} needs a 'task_index' column and the task text; columns found: "
                         f"{', '.join(names)}")
    return {int(i): str(t) for i, t in zip(table.column("task_index").to_pylist(),
                                           table.column(text_column).to_pylist())}


def read_episode_records(root: Path, info: dict[str, Any], video_keys: list[str]) -> list[EpisodeRecord]:
    """Every episode's data file and video segments, by episode_index."""
    import pyarrow.parquet as pq

    files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not files:
        raise UsageError(f"{root} is not a complete LeRobotDataset: no "
                         f"{EPISODES_DIR}/chunk-XXX/file-XXX.parquet")
    data_path = info.get("data_path") or DEFAULT_DATA_PATH
    video_path = info.get("video_path") or DEFAULT_VIDEO_PATH
    needed = ["episode_index", "data/chunk_index", "data/file_index"]
    for key in video_keys:
        needed += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
    records: list[EpisodeRecord] = []
    for path in files:
        names = pq.read_schema(path).names
        absent = [k for k in needed if k not in names]
        if absent:
            raise missing_key("Episode column", absent[0], [n for n in names if not n.startswith("stats/")],
                              path)
        columns = needed + [c for c in ("length",) if c in names]
        rows = pq.read_table(path, columns=columns).to_pylist()
        for row in rows:
            data_file = root / data_path.format(chunk_index=row["data/chunk_index"],
                                                file_index=row["data/file_index"])
            videos = {
                key: (root / video_path.format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                               file_index=row[f"videos/{key}/file_index"]),
                      float(row[f"videos/{key}/from_timestamp"]))
                for key in video_keys
            }
            records.append(EpisodeRecord(int(row["episode_index"]), int(row.get("length") or 0), data_file,
                                         videos))
    return sorted(records, key=lambda r: r.index)


def split_range(info: dict[str, Any], split: str, total: int) -> range:
    """Episode indices of a split ("train": "0:50"); a folder without `splits` is all train."""
    splits = info.get("splits") or {"train": f"0:{total}"}
    if split not in splits:
        raise UsageError(f"Split '{split}' not in this LeRobot dataset. Available: "
                         f"{', '.join(sorted(splits))}")
    try:
        start, stop = (int(v) for v in str(splits[split]).split(":"))
    except ValueError:
        raise UsageError(
            f"meta/info.json split '{split}' is {splits[split]!r}; expected 'start:stop'"
        ) from None
    return range(start, stop)
