"""The demo dataset on disk: generated once as real RLDS (`bridge_dataset` schema) plus a
metadata sidecar, then always read back through the `bridge` plugin's reader.

Recorded episode layout (what Bridge's conversion expects, so it gives back the expert's steps):
the expert's M steps become M + 2 recorded steps — a still first step with an all-zero action
(the bridge reader drops it, as OpenVLA does), the M steps, and a final still step showing the
state the last action reached (its state is what the relabelling needs; the reader drops it).
`observation/state` is the gripper pose [x, y, z, roll, pitch, yaw, opening] before each step,
so `state[t+1, :6] − state[t, :6]` is exactly the expert's movement, and `action` holds the
same movement with the commanded opening (1 open, 0 closed).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from refine_core import DatasetStatistics, Episode, RobotDataset, UsageError, cache_dir

from .render import IMAGE_SIZE, object_boxes, render_episode
from .scene import CELL, DemoEpisode, SceneObject, generate_episodes

# Bump whenever scenes, rendering or the on-disk layout change: it is part of the cache key.
GENERATOR_VERSION = 4
METADATA_FILE = "demo_metadata.json"
# the state before these actions has the target between the fingers (grasp closes on it, release opens)
HELD_PHASES = ("lift", "move", "place", "release")


def generator_identity(options) -> str:
    """Cache key of the generated data: generator version + every option that shapes it."""
    shaping = {"version": GENERATOR_VERSION, "episodes": options.episodes, "seed": options.seed,
               "pick_only_fraction": options.pick_only_fraction}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]
    return f"v{GENERATOR_VERSION}-{options.episodes}ep-seed{options.seed}-{digest}"


def default_cache_dir() -> Path:
    """The demo's folder under refine's cache root (`refine_core.cache_dir`)."""
    return cache_dir("demo")


def recorded_episode(episode: DemoEpisode, index: int, frames: np.ndarray, source: str) -> dict[str, Any]:
    """The bridge fixture writer's episode dict (see the module docstring for the layout)."""
    steps = episode.num_steps
    poses = np.zeros((steps + 1, 7), dtype=np.float32)
    poses[:, :3] = episode.cells * CELL
    poses[:, 6] = episode.gripper_opening()
    order = np.r_[0, np.arange(steps + 1)]  # recorded step i shows expert state max(i - 1, 0)
    actions = np.zeros((steps + 2, 7), dtype=np.float32)
    actions[1:steps + 1] = episode.actions()
    actions[steps + 1, 6] = poses[-1, 6]
    return {
        "actions": actions, "states": poses[order], "instruction": episode.instruction,
        # image_1 blank: the bridge reader leaves all-zero views out, so image_0 is the only camera
        "images": {"image_0": frames[order], "image_1": np.zeros_like(frames[order])},
        "file_path": f"{source}/episode_{index:05d}", "episode_id": index,
    }


def sidecar_steps(episode: DemoEpisode) -> list[dict[str, Any]]:
    """Metadata per recorded step (index = the bridge reader's `source_step`)."""
    first = {**episode.metadata(0), "phase": "start"}
    return [first] + [episode.metadata(t) for t in range(episode.num_steps + 1)]


def held_object(metadata: dict[str, Any]) -> str | None:
    """The object in the gripper in the state a sidecar entry describes (the sidecar predates a `held`
    key, so it is read from the phase: after the grasp and until the release; a pick-only task ends
    holding it)."""
    phase = metadata.get("phase")
    if phase in HELD_PHASES or (phase == "done" and metadata.get("destination") is None):
        return metadata.get("target")
    return None


def metadata_boxes(metadata: dict[str, Any]) -> dict[str, list[float]]:
    """The `boxes` step metadata: each object's drawn extent in the step's frame (render geometry)."""
    objects, cells = [], {}
    for entry in metadata["objects"]:
        colour, kind = entry["name"].split(" ", 1)  # names are "<colour> <kind>" (SceneObject.name)
        x, y, _ = entry["position"]
        objects.append(SceneObject(colour, kind, (round(x / CELL), round(y / CELL))))
        cells[entry["name"]] = objects[-1].cell
    gripper = [round(v / CELL) for v in metadata["gripper_position"]]
    return object_boxes(objects, cells, held_object(metadata), gripper)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned(parent: Path, identity: str) -> None:
    """Temp folders of this identity left by writers that died (interrupted writes)."""
    for tmp in parent.glob(f".{identity}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_generated(options) -> Path:
    """The folder holding this configuration's data, written first if absent.

    Written into a private temp folder and renamed into place in one step, so readers and
    concurrent builders see either no folder or a complete one; the loser of a race discards its copy.
    """
    identity = generator_identity(options)
    parent = Path(options.cache_dir).expanduser() if options.cache_dir else default_cache_dir()
    final = parent / identity
    if (final / METADATA_FILE).is_file():
        return final
    if final.exists():  # writes are atomic, so only a hand-edited folder can be incomplete
        raise UsageError(f"The demo cache folder {final} is incomplete (no {METADATA_FILE}); delete it to "
                         "regenerate")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"Cannot create the demo cache folder {parent}: {exc.strerror}; "
                         f"set dataset.cache_dir to a writable folder") from None
    _remove_abandoned(parent, identity)
    tmp = parent / f".{identity}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_demo(tmp, options, identity)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / METADATA_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_demo(folder: Path, options, identity: str) -> None:
    """RLDS under `folder/bridge_dataset/1.0.0` and the metadata sidecar (written last)."""
    from refine_plugins.rlds.fixtures import write_bridge_dataset

    episodes = generate_episodes(options.episodes, options.seed, options.pick_only_fraction)
    recorded, sidecar = [], {}
    for index, episode in enumerate(episodes):
        recorded.append(recorded_episode(episode, index, render_episode(episode), f"demo/{identity}"))
        sidecar[str(index)] = sidecar_steps(episode)
    # PNG, not Bridge's JPEG: the simulator hands the policy lossless renders, so training frames must be
    # those same pixels (JPEG's ringing and chroma subsampling move colours by up to 88 levels at edges)
    write_bridge_dataset(folder, recorded, image_size=(IMAGE_SIZE, IMAGE_SIZE),  # quiet: see write_rlds
                         image_encoding="png")
    shutil.rmtree(folder / "downloads", ignore_errors=True)  # tfds' empty download area
    payload = {"generator_version": GENERATOR_VERSION, "identity": identity, "episodes": sidecar}
    (folder / METADATA_FILE).write_text(json.dumps(payload))


class DemoDataset(RobotDataset):
    """The generated demo task, read through the `bridge` reader with the sidecar merged in."""

    name = "demo"
    robot = "demo-gripper"
    control_frequency = 5.0
    cameras = ("image_0",)

    def __init__(self, options):
        self.options = options
        self._reader = None
        self._sidecar: dict[str, list[dict[str, Any]]] | None = None

    @property
    def identity(self) -> str:
        return f"demo:{generator_identity(self.options)}:max{self.options.max_episodes}"

    @property
    def folder(self) -> Path:
        return self.reader.version_dir.parent.parent

    @property
    def reader(self):
        """The bridge reader over the cached folder (generated on first use)."""
        if self._reader is None:
            from refine_plugins.bridge import BridgeOptions
            from refine_plugins.bridge.dataset import BridgeDataset

            folder = ensure_generated(self.options)
            self._reader = BridgeDataset(BridgeOptions(data_dir=str(folder), primary_camera_only=True,
                                                       max_episodes=self.options.max_episodes))
            self._sidecar = json.loads((folder / METADATA_FILE).read_text())["episodes"]
        return self._reader

    @property
    def statistics_path(self) -> Path | None:
        return self.reader.statistics_path

    def episodes(self, split: str = "train") -> Iterator[Episode]:
        reader = self.reader
        for episode in reader.episodes(split):
            steps_meta = self._sidecar.get(str(episode.steps[0].metadata["episode_id"]), [])
            for step in episode.steps:
                source = step.metadata["source_step"]
                if source < len(steps_meta):
                    step.metadata.update(steps_meta[source])
                    step.metadata["boxes"] = metadata_boxes(steps_meta[source])
            episode.metadata["dataset"] = self.name
            yield episode

    def statistics(self) -> DatasetStatistics:
        return self.reader.statistics()
