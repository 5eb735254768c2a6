"""Write small RLDS datasets in the exact on-disk schemas of `bridge_dataset` and
`fractal20220817_data` — for tests, demos and anyone writing an RLDS plugin.

The folders are what tfds itself writes (`<root>/<name>/<version>/` with `dataset_info.json`,
`features.json` and TFRecord shards), so `tfds.builder_from_directory` and every refine RLDS
plugin read them exactly as they read the real datasets. Callers pass episodes as arrays, which
makes episodes with known answers easy to write by hand; frames that are not given are smooth
synthetic pictures (JPEG files stay small).

Episode dicts:
- bridge: `actions` [T, 7]; optional `states` [T, 7] (zeros), `instruction` (str, or one per
  step), `images` {"image_0".."image_3": [T, H, W, 3] uint8} (image_0 and image_1 synthetic,
  image_2/3 blank padding with `has_image_N = False`, as Bridge pads absent views),
  `file_path`, `episode_id`.
- fractal: `world_vector` [T, 3], `rotation_delta` [T, 3], `gripper_closedness_action` [T] or
  [T, 1]; optional `terminate_episode` [T, 3] int32, `base_pose_tool_reached` [T, 7],
  `gripper_closed` [T, 1], `instruction`, `image` [T, H, W, 3].
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .tensorflow_import import tensorflow

BRIDGE_NAME, BRIDGE_VERSION, BRIDGE_IMAGE = "bridge_dataset", "1.0.0", (256, 256)
FRACTAL_NAME, FRACTAL_VERSION, FRACTAL_IMAGE = "fractal20220817_data", "0.1.0", (256, 320)
BRIDGE_CAMERAS = ("image_0", "image_1", "image_2", "image_3")

Episodes = Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]]


def synthetic_frames(num_steps: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """[T, H, W, 3] uint8: a colour gradient with a soft disc drifting across it."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    tilt = rng.uniform(-60, 60, size=(2, 3)).astype(np.float32)
    background = base + (yy / height)[..., None] * tilt[0] + (xx / width)[..., None] * tilt[1]
    colour = rng.uniform(0, 255, size=3).astype(np.float32)
    start, end = rng.uniform(0.2, 0.8, size=(2, 2))
    frames = np.empty((num_steps, height, width, 3), dtype=np.uint8)
    for t in range(num_steps):
        cy, cx = (start + (end - start) * t / max(num_steps - 1, 1)) * (height, width)
        weight = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / (0.12 * min(height, width)), 0, 1)[..., None]
        frames[t] = np.clip(background * (1 - weight) + colour * weight, 0, 255).astype(np.uint8)
    return frames


def _episode_splits(episodes: Episodes) -> dict[str, Sequence[Mapping[str, Any]]]:
    return dict(episodes) if isinstance(episodes, Mapping) else {"train": episodes}


def _instructions(episode: Mapping[str, Any], num_steps: int) -> list[str]:
    text = episode.get("instruction", "")
    return [text] * num_steps if isinstance(text, str) else [str(t) for t in text]


def write_rlds(root: str | Path, name: str, version: str, features: Any,
               splits: Mapping[str, Sequence[dict]], overwrite: bool = True) -> Path:
    """Write examples (dicts shaped like `features`, a `tfds.features.FeaturesDict`) with tfds;
    returns `<root>/<name>/<version>`."""
    _, tfds = tensorflow()

    target = Path(root) / name / version
    if target.exists() and overwrite:
        shutil.rmtree(target)
    tfds.display_progress_bar(False)
    # tfds narrates a write: absl warnings about the folder it is creating, "Downloading and
    # preparing…" printed on stdout. Nothing is downloaded and the caller reports what it wrote.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            tfds.dataset_builders.store_as_tfds_dataset(
                name=name, version=version, features=features, data_dir=str(root), disable_shuffling=True,
                split_datasets={split: [(f"{split}-{i:06d}", ex) for i, ex in enumerate(examples)]
                                for split, examples in splits.items()},
            )
    finally:
        absl.setLevel(level)
    return target


# -- bridge_dataset ------------------------------------------------------------------------
def bridge_features(image_size: tuple[int, int] = BRIDGE_IMAGE, image_encoding: str = "jpeg") -> Any:
    """Bridge's schema; `image_encoding` "png" stores frames losslessly (Bridge itself uses JPEG)."""
    _, tfds = tensorflow()

    F = tfds.features
    image = F.Image(shape=(*image_size, 3), dtype=np.uint8, encoding_format=image_encoding)
    return F.FeaturesDict({
        "steps": F.Dataset({
            "observation": F.FeaturesDict({**{cam: image for cam in BRIDGE_CAMERAS},
                                           "state": F.Tensor(shape=(7,), dtype=np.float32)}),
            "action": F.Tensor(shape=(7,), dtype=np.float32),
            "language_instruction": F.Text(),
            "language_embedding": F.Tensor(shape=(512,), dtype=np.float32),
            "reward": F.Scalar(dtype=np.float32),
            "discount": F.Scalar(dtype=np.float32),
            "is_first": F.Scalar(dtype=np.bool_),
            "is_last": F.Scalar(dtype=np.bool_),
            "is_terminal": F.Scalar(dtype=np.bool_),
        }),
        "episode_metadata": F.FeaturesDict({
            "file_path": F.Text(),
            "episode_id": F.Scalar(dtype=np.int32),
            **{f"has_{cam}": F.Scalar(dtype=np.bool_) for cam in BRIDGE_CAMERAS},
            "has_language": F.Scalar(dtype=np.bool_),
        }),
    })


def _bridge_example(episode: Mapping[str, Any], index: int, image_size: tuple[int, int]) -> dict:
    actions = np.asarray(episode["actions"], dtype=np.float32)
    num_steps = len(actions)
    states = np.asarray(episode.get("states", np.zeros((num_steps, 7))), dtype=np.float32)
    texts = _instructions(episode, num_steps)
    given = dict(episode.get("images") or {})
    images, has = {}, {}
    for k, cam in enumerate(BRIDGE_CAMERAS):
        if cam in given:
            images[cam], has[cam] = np.asarray(given[cam], dtype=np.uint8), True
        elif k < 2:
            images[cam], has[cam] = synthetic_frames(num_steps, image_size, seed=index * 10 + k), True
        else:
            images[cam], has[cam] = np.zeros((num_steps, *image_size, 3), np.uint8), False
    steps = [{
        "observation": {**{cam: images[cam][t] for cam in BRIDGE_CAMERAS}, "state": states[t]},
        "action": actions[t], "language_instruction": texts[t],
        "language_embedding": np.zeros(512, np.float32),
        "reward": np.float32(t == num_steps - 1), "discount": np.float32(1.0),
        "is_first": t == 0, "is_last": t == num_steps - 1, "is_terminal": t == num_steps - 1,
    } for t in range(num_steps)]
    metadata = {
        "file_path": str(episode.get("file_path", f"/bridge/raw/traj{index}")),
        "episode_id": int(episode.get("episode_id", index)),
        **{f"has_{cam}": has[cam] for cam in BRIDGE_CAMERAS},
        "has_language": any(t.strip() for t in texts),
    }
    return {"steps": steps, "episode_metadata": metadata}


def write_bridge_dataset(root: str | Path, episodes: Episodes, *, image_size: tuple[int, int] = BRIDGE_IMAGE,
                         version: str = BRIDGE_VERSION, image_encoding: str = "jpeg") -> Path:
    """`bridge_dataset` under `root`; `episodes` is a list (train split) or {split: list}; frames are
    stored as `image_encoding` ("jpeg" as Bridge, or lossless "png")."""
    splits = {split: [_bridge_example(ep, i, image_size) for i, ep in enumerate(eps)]
              for split, eps in _episode_splits(episodes).items()}
    return write_rlds(root, BRIDGE_NAME, version, bridge_features(image_size, image_encoding), splits)


# -- fractal20220817_data ------------------------------------------------------------------
def fractal_features(image_size: tuple[int, int] = FRACTAL_IMAGE) -> Any:
    _, tfds = tensorflow()

    F = tfds.features
    vec = lambda n: F.Tensor(shape=(n,), dtype=np.float32)  # noqa: E731
    return F.FeaturesDict({
        "steps": F.Dataset({
            "observation": F.FeaturesDict({
                "image": F.Image(shape=(*image_size, 3), dtype=np.uint8, encoding_format="jpeg"),
                "natural_language_instruction": F.Text(),
                "natural_language_embedding": vec(512),
                "base_pose_tool_reached": vec(7),
                "gripper_closed": vec(1),
                "gripper_closedness_commanded": vec(1),
                "height_to_bottom": vec(1),
            }),
            "action": F.FeaturesDict({
                "world_vector": vec(3),
                "rotation_delta": vec(3),
                "gripper_closedness_action": vec(1),
                "terminate_episode": F.Tensor(shape=(3,), dtype=np.int32),
                "base_displacement_vector": vec(2),
                "base_displacement_vertical_rotation": vec(1),
            }),
            "reward": F.Scalar(dtype=np.float32),
            "is_first": F.Scalar(dtype=np.bool_),
            "is_last": F.Scalar(dtype=np.bool_),
            "is_terminal": F.Scalar(dtype=np.bool_),
        }),
    })


def _fractal_example(episode: Mapping[str, Any], index: int, image_size: tuple[int, int]) -> dict:
    world = np.asarray(episode["world_vector"], dtype=np.float32).reshape(-1, 3)
    num_steps = len(world)
    rotation = np.asarray(episode["rotation_delta"], dtype=np.float32).reshape(num_steps, 3)
    closedness = np.asarray(episode["gripper_closedness_action"], dtype=np.float32).reshape(num_steps, 1)
    # one-hot episode mode as RT-1 records it: [terminate, continue, …]; terminate on the last step
    terminate = np.tile(np.array([0, 1, 0], np.int32), (num_steps, 1))
    terminate[-1] = (1, 0, 0)
    terminate = np.asarray(episode.get("terminate_episode", terminate), dtype=np.int32)
    pose = np.asarray(episode.get("base_pose_tool_reached", np.zeros((num_steps, 7))), dtype=np.float32)
    closed = np.asarray(episode.get("gripper_closed", np.zeros((num_steps, 1))),
                        dtype=np.float32).reshape(num_steps, 1)
    images = episode.get("image")
    images = synthetic_frames(num_steps, image_size,
                              seed=1000 + index) if images is None else np.asarray(images, np.uint8)
    texts = _instructions(episode, num_steps)
    steps = [{
        "observation": {
            "image": images[t], "natural_language_instruction": texts[t],
            "natural_language_embedding": np.zeros(512, np.float32), "base_pose_tool_reached": pose[t],
            "gripper_closed": closed[t], "gripper_closedness_commanded": closedness[t],
            "height_to_bottom": np.zeros(1, np.float32),
        },
        "action": {
            "world_vector": world[t], "rotation_delta": rotation[t],
            "gripper_closedness_action": closedness[t],
            "terminate_episode": terminate[t], "base_displacement_vector": np.zeros(2, np.float32),
            "base_displacement_vertical_rotation": np.zeros(1, np.float32),
        },
        "reward": np.float32(t == num_steps - 1),
        "is_first": t == 0, "is_last": t == num_steps - 1, "is_terminal": t == num_steps - 1,
    } for t in range(num_steps)]
    return {"steps": steps}


def write_fractal_dataset(root: str | Path, episodes: Episodes, *,
                          image_size: tuple[int, int] = FRACTAL_IMAGE,
                          version: str = FRACTAL_VERSION) -> Path:
    """`fractal20220817_data` under `root`; `episodes` is a list (train split) or {split: list}."""
    splits = {split: [_fractal_example(ep, i, image_size) for i, ep in enumerate(eps)]
              for split, eps in _episode_splits(episodes).items()}
    return write_rlds(root, FRACTAL_NAME, version, fractal_features(image_size), splits)
