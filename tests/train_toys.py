"""A small in-memory robot dataset and annotation set for the training tests, and a script entry
point the distributed test starts under `accelerate launch`.

    export PYTHONPATH=.:tests ACCELERATE_USE_CPU=1
    accelerate launch --multi_gpu --num_processes 2 tests/train_toys.py OUT --set train.batch_size=2 ...

(each worker checks that it imports the checkout's code: `check_imports_the_checkout`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from refine_core import DatasetStatistics, Episode, RobotDataset, Statistics, Step
from refine_core.data.annotation_set import episode_filename
from refine_core.config import resolve_config

OBJECTS = ("red block", "blue cup", "green sponge", "yellow banana", "white towel", "orange carrot")


class ToyDataset(RobotDataset):
    """Episodes whose frames, instructions and actions differ; deterministic."""

    name = "toy"
    robot = "toy-arm"
    control_frequency = 5.0
    cameras = ("cam",)

    def __init__(self, episodes: int = 6, steps: int = 4, image: int = 32):
        self.n_episodes, self.n_steps, self.image = episodes, steps, image

    @property
    def identity(self) -> str:
        return f"toy-{self.n_episodes}-{self.n_steps}-{self.image}"

    def episodes(self, split: str = "train"):
        for e in range(self.n_episodes):
            rng = np.random.default_rng(e)
            steps = []
            for t in range(self.n_steps):
                action = np.r_[rng.uniform(-0.05, 0.05, 6), float((e + t) % 2)]
                frame = rng.integers(0, 255, (self.image, self.image, 3), dtype=np.uint8)
                steps.append(Step(images={"cam": frame},
                                  instruction=f"put the {OBJECTS[e % len(OBJECTS)]} in the bowl",
                                  action=action, primary_camera="cam", episode_id=f"ep{e}", step_index=t))
            yield Episode(episode_id=f"ep{e}", steps=steps)

    def statistics(self) -> DatasetStatistics:
        actions = np.concatenate([episode.actions() for episode in self.episodes()])
        return DatasetStatistics(action=Statistics.from_array(actions), num_episodes=self.n_episodes,
                                 num_steps=len(actions))


def reasoning_text(episode: int, step: int) -> str:
    """Reasoning of varying length, so token counts differ between samples."""
    steps = " ".join(
        f"<{i + 1}> reach the {OBJECTS[(episode + i) % len(OBJECTS)]}"
        for i in range(1 + (episode + step) % 3)
    )
    return (f"<Observation>: the {OBJECTS[episode % len(OBJECTS)]} is left. <Task Planning>: <logical_steps> "
            f"{steps} <sub_action> move left")


def write_annotations(directory: Path, dataset: RobotDataset, identity: str | None = None) -> Path:
    """An annotation directory in `refine annotate`'s format, every other step annotated."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for e, episode in enumerate(dataset.episodes()):
        name = episode_filename(episode.episode_id)
        steps = [{"step": s.step_index, "text": reasoning_text(e, s.step_index), "teacher": "toy"}
                 for s in episode.steps if s.step_index % 2 == 0]
        (directory / name).write_text(json.dumps({"episode_id": episode.episode_id, "steps": steps}))
        files[episode.episode_id] = name
    (directory / "manifest.json").write_text(json.dumps({
        "format": 1, "dataset": dataset.name, "dataset_identity": identity or dataset.identity,
        "teacher": "toy/none/1", "episodes": files}))
    return directory


BASE_SETTINGS = ["data.val_fraction=0", "data.shuffle_buffer=64", "train.log_every=1", "train.lr=3e-3"]


def toy_config(*sets: str):
    return resolve_config(sets=[*BASE_SETTINGS, *sets])


CHECKOUT = Path(__file__).resolve().parents[1]
# import name → the checkout folder it is installed from (pyproject's package-dir)
PACKAGE_DIRS = {"refine_core": "refine_core", "refine_plugins": "plugins", "refine_teachers": "teachers",
                "refine_benchmarks": "benchmarks"}


def trained_checkpoint(folder: Path) -> Path:
    """A one-step toy training run in `folder/train` (a checkpoint to evaluate or serve)."""
    from refine_core.training import prepare_run, train

    out = Path(folder) / "train"
    train(prepare_run(toy_config("train.max_steps=1", "train.batch_size=1"),
                      dataset=ToyDataset(episodes=2, steps=2)), out)
    return out


def check_imports_the_checkout() -> None:
    """Refuse to run on code other than the checkout these tests belong to (a worker process started
    with another PYTHONPATH, or a non-editable install, would test what is installed instead)."""
    import importlib

    for name, folder in PACKAGE_DIRS.items():
        imported = Path(importlib.import_module(name).__file__).resolve()
        if imported.parent != CHECKOUT / folder:
            raise SystemExit(f"this worker imports {name} from {imported}, not from the checkout under test "
                             f"({CHECKOUT / folder}): put {CHECKOUT} first on PYTHONPATH and install it "
                             "editable (pip install -e .)")
    print(f"worker imports refine from {CHECKOUT}", flush=True)


def main(argv: list[str]) -> None:
    """OUT [--annotations DIR] [--set k=v ...]: train the tiny backbone on ToyDataset."""
    import torch

    from refine_core.training import prepare_run, train

    check_imports_the_checkout()
    torch.set_num_threads(1)
    out, rest = Path(argv[0]), argv[1:]
    sets, annotations = [], None
    while rest:
        flag, value, rest = rest[0], rest[1], rest[2:]
        if flag == "--set":
            sets.append(value)
        elif flag == "--annotations":
            annotations = value
    setup = prepare_run(toy_config(*sets), dataset=ToyDataset(), annotations_dir=annotations)
    train(setup, out)


if __name__ == "__main__":
    main(sys.argv[1:])
