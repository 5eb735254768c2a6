"""Write small LeRobotDataset v3 folders (the layout in `plugins.lerobot.layout`) — for tests and
plugin authors. Cameras are embedded PNG images in the data parquet, or mp4 videos (PyAV, H.264)
with several episodes back to back per file, so episode offsets inside files are exercised.

Episode dicts: `actions` [T, D]; optional `states` [T, S], `task` (str), `images`
{camera: [T, H, W, 3] uint8} (synthetic smooth frames when absent).
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .layout import CODEBASE_VERSION, DEFAULT_DATA_PATH, DEFAULT_VIDEO_PATH, IMAGE_PREFIX


def synthetic_frames(num_steps: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """[T, H, W, 3] uint8 smooth gradients that change every frame (codecs keep them well)."""
    rng = np.random.default_rng(seed)
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3).astype(np.float32)
    frames = np.empty((num_steps, height, width, 3), np.uint8)
    for t in range(num_steps):
        shade = (
            60 * np.sin(rows / height * 3 + t * 0.4)[..., None]
            + 40 * np.cos(cols / width * 2 - t * 0.3)[..., None]
        )
        frames[t] = np.clip(base + shade, 0, 255).astype(np.uint8)
    return frames


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """H.264 mp4 with a short keyframe interval (seeks land near any episode)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "8", "g": "4"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _write_parquet(path: Path, columns: Mapping[str, Any], metadata: dict | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(dict(columns))
    if metadata:
        table = table.replace_schema_metadata(
            {k.encode(): json.dumps(v).encode() for k, v in metadata.items()}
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _vectors(values: np.ndarray):
    import pyarrow as pa

    values = np.asarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def write_lerobot_dataset(root: str | Path, episodes: Sequence[Mapping[str, Any]], *, fps: int = 10,
                          video: bool = False, cameras: Sequence[str] = ("front",),
                          image_size: tuple[int, int] = (48, 64), episodes_per_file: int = 2,
                          robot_type: str = "toy_arm", codebase_version: str = CODEBASE_VERSION) -> Path:
    """A v3 folder under `root` (returned); every episode in the train split."""
    import pyarrow as pa

    root = Path(root)
    tasks: dict[str, int] = {}
    for ep in episodes:
        tasks.setdefault(str(ep.get("task", "")), len(tasks))
    keys = [IMAGE_PREFIX + c for c in cameras]
    first = episodes[0]
    action_dim = np.asarray(first["actions"]).shape[1]
    state_dim = np.asarray(first["states"]).shape[1] if "states" in first else None
    index = 0
    episode_rows: list[dict[str, Any]] = []
    groups = [list(range(i, min(i + episodes_per_file, len(episodes)))) for i in range(0, len(episodes),
                                                                                       episodes_per_file)]
    for file_index, group in enumerate(groups):
        data: dict[str, list] = {k: [] for k in ("action", "observation.state", "timestamp", "frame_index",
                                                 "episode_index", "index", "task_index", *keys)}
        videos: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        offsets = dict.fromkeys(keys, 0.0)
        for e in group:
            ep = episodes[e]
            actions = np.asarray(ep["actions"], dtype=np.float32)
            n = len(actions)
            given = dict(ep.get("images") or {})
            frames = {k: np.asarray(given[c],
                                    np.uint8) if c in given else synthetic_frames(n, image_size,
                                                                                  seed=e * 7 + j)
                      for j, (c, k) in enumerate(zip(cameras, keys))}
            row = {"episode_index": e, "tasks": [str(ep.get("task", ""))], "length": n,
                   "data/chunk_index": 0, "data/file_index": file_index,
                   "dataset_from_index": index, "dataset_to_index": index + n,
                   "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
            data["action"].append(actions)
            data["observation.state"].append(np.asarray(ep.get("states", np.zeros((n, state_dim or 1))),
                                                        np.float32))
            data["timestamp"] += [t / fps for t in range(n)]
            data["frame_index"] += list(range(n))
            data["episode_index"] += [e] * n
            data["index"] += list(range(index, index + n))
            data["task_index"] += [tasks[str(ep.get("task", ""))]] * n
            for k in keys:
                if video:
                    videos[k].append(frames[k])
                    row.update({f"videos/{k}/chunk_index": 0, f"videos/{k}/file_index": file_index,
                                f"videos/{k}/from_timestamp": offsets[k],
                                f"videos/{k}/to_timestamp": offsets[k] + n / fps})
                    offsets[k] += n / fps
                else:
                    data[k] += [{"bytes": _png(f),
                                 "path": f"frame-{index + t:06d}.png"} for t, f in enumerate(frames[k])]
            episode_rows.append(row)
            index += n
        columns: dict[str, Any] = {
            "action": _vectors(np.concatenate(data["action"])),
            "timestamp": pa.array(data["timestamp"], pa.float32()),
            **{k: pa.array(data[k], pa.int64()) for k in ("frame_index", "episode_index", "index",
                                                          "task_index")},
        }
        if state_dim is not None:
            columns["observation.state"] = _vectors(np.concatenate(data["observation.state"]))
        if not video:
            image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            columns.update({k: pa.array(data[k], image_type) for k in keys})
        _write_parquet(root / DEFAULT_DATA_PATH.format(chunk_index=0, file_index=file_index), columns)
        for k in keys if video else []:
            write_mp4(root / DEFAULT_VIDEO_PATH.format(video_key=k, chunk_index=0, file_index=file_index),
                      np.concatenate(videos[k]), fps)
    _write_parquet(root / "meta/episodes/chunk-000/file-000.parquet",
                   {k: [r.get(k) for r in episode_rows] for k in episode_rows[0]})
    # the task text is the pandas index of tasks.parquet, as lerobot writes it
    _write_parquet(root / "meta/tasks.parquet", {"task_index": pa.array(list(tasks.values()), pa.int64()),
                                                 "task": list(tasks)},
                   metadata={"pandas": {"index_columns": ["task"], "columns": []}})
    height, width = image_size
    camera_feature = {"dtype": "video" if video else "image", "shape": [height, width, 3],
                      "names": ["height", "width", "channels"]}
    features = {
        "action": {"dtype": "float32", "shape": [action_dim], "names": None},
        **({"observation.state": {"dtype": "float32", "shape": [state_dim],
                                  "names": None}} if state_dim else {}),
        **{k: dict(camera_feature) for k in keys},
        **{k: {"dtype": "int64", "shape": [1], "names": None} for k in ("frame_index", "episode_index",
                                                                        "index", "task_index")},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    }
    info = {
        "codebase_version": codebase_version, "robot_type": robot_type, "total_episodes": len(episodes),
        "total_frames": index, "total_tasks": len(tasks), "chunks_size": 1000, "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"}, "data_path": DEFAULT_DATA_PATH,
        "video_path": DEFAULT_VIDEO_PATH if video else None, "features": features,
    }
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    return root
