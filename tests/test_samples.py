"""Episodes → training samples: chunks, split by episode, annotation join, shuffle, exact resume."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from refine_core import DatasetStatistics, Episode, RobotDataset, Statistics, Step
from refine_core.data.annotation_set import AnnotationSet, episode_filename
from refine_core.errors import UsageError
from refine_core.data.samples import SampleStream, action_chunks, episode_split


class CountingDataset(RobotDataset):
    """A small in-memory dataset: action[0] = episode index, action[1] = step index."""

    name = "counting"
    cameras = ("cam",)

    def __init__(self, episodes=12, steps=5):
        self.n_episodes, self.n_steps = episodes, steps

    @property
    def identity(self) -> str:
        return f"counting-{self.n_episodes}-{self.n_steps}"

    def episodes(self, split="train"):
        for e in range(self.n_episodes):
            steps = [Step(images={"cam": np.full((4, 4, 3), e, np.uint8)}, instruction=f"task {e}",
                          action=[e, t, 0, 0, 0, 0, 1], primary_camera="cam", episode_id=f"ep{e}",
                          step_index=t)
                     for t in range(self.n_steps)]
            yield Episode(episode_id=f"ep{e}", steps=steps)

    def statistics(self):
        acts = np.concatenate([ep.actions() for ep in self.episodes()])
        return DatasetStatistics(action=Statistics.from_array(acts))


def test_action_chunks_repeat_the_last_action():
    episode = next(CountingDataset(1, 3).episodes())
    chunks = action_chunks(episode, 4)
    assert chunks.shape == (3, 4, 7)
    assert chunks[0, :, 1].tolist() == [0, 1, 2, 2]
    assert chunks[2, :, 1].tolist() == [2, 2, 2, 2]


def test_split_is_by_whole_episode_and_disjoint():
    dataset = CountingDataset(40)
    train = {s.key.split("/")[0] for s in SampleStream(dataset, split="train", val_fraction=0.25).samples()}
    val = {s.key.split("/")[0] for s in SampleStream(dataset, split="val", val_fraction=0.25).samples()}
    assert train and val and not train & val and len(train | val) == 40
    assert all(episode_split(e, 0.25) == "val" for e in val)
    assert episode_split("anything", 0.0) == "train"


def test_shuffle_is_seeded_and_covers_each_epoch():
    dataset = CountingDataset(6, 4)
    first = [s.key for s in itertools.islice(iter(SampleStream(dataset, val_fraction=0, shuffle_buffer=5,
                                                               seed=3)), 24)]
    again = [s.key for s in itertools.islice(iter(SampleStream(dataset, val_fraction=0, shuffle_buffer=5,
                                                               seed=3)), 24)]
    other = [s.key for s in itertools.islice(iter(SampleStream(dataset, val_fraction=0, shuffle_buffer=5,
                                                               seed=4)), 24)]
    assert first == again and first != other
    assert sorted(first) == sorted(
        f"ep{e}/{t}" for e in range(6) for t in range(4)
    )  # one epoch = every step once


def test_restored_position_continues_exactly():
    dataset = CountingDataset(6, 4)
    reference = [s.key for s in itertools.islice(iter(SampleStream(dataset, val_fraction=0,
                                                                   shuffle_buffer=7)), 40)]
    stream = SampleStream(dataset, val_fraction=0, shuffle_buffer=7)
    it = iter(stream)
    head = [next(it).key for _ in range(30)]  # into the second epoch
    resumed = SampleStream(dataset, val_fraction=0, shuffle_buffer=7)
    resumed.load_state_dict(json.loads(json.dumps(stream.state_dict())))
    tail = [s.key for s in itertools.islice(iter(resumed), 10)]
    assert head + tail == reference


def write_annotations(directory, dataset_identity, texts):
    directory.mkdir()
    episodes = {}
    for episode_id in sorted({e for e, _ in texts}):
        name = episode_filename(episode_id)
        steps = [{"step": t, "text": text, "teacher": "x"} for (e,
                                                                t), text in texts.items() if e == episode_id]
        (directory / name).write_text(json.dumps({"episode_id": episode_id, "steps": steps}))
        episodes[episode_id] = name
    (directory / "manifest.json").write_text(json.dumps({"format": 1, "dataset": "counting",
                                                         "dataset_identity": dataset_identity,
                                                         "episodes": episodes}))


def test_annotations_join_and_missing_policy(tmp_path):
    dataset = CountingDataset(2, 3)
    write_annotations(tmp_path / "ann", dataset.identity, {("ep0", 0): "r00", ("ep0", 2): "r02",
                                                           ("ep1", 1): "r11"})
    annotations = AnnotationSet.load(tmp_path / "ann")
    annotations.check_matches(dataset.name, dataset.identity)
    action_only = SampleStream(dataset, val_fraction=0, annotations=annotations)
    got = {s.key: s.reasoning for s in action_only.samples()}
    assert got == {"ep0/0": "r00", "ep0/1": None, "ep0/2": "r02", "ep1/0": None, "ep1/1": "r11",
                   "ep1/2": None}
    assert action_only.counts.missing_reasoning == 3
    skip = SampleStream(dataset, val_fraction=0, annotations=annotations, missing_annotation="skip")
    assert [s.key for s in skip.samples()] == ["ep0/0", "ep0/2", "ep1/1"]
    assert skip.counts.skipped == 3


def test_annotations_of_another_dataset_are_refused(tmp_path):
    write_annotations(tmp_path / "ann", "someone-else", {("ep0", 0): "r"})
    with pytest.raises(UsageError, match="were made for dataset 'counting' \\(someone-else\\)"):
        AnnotationSet.load(tmp_path / "ann").check_matches("counting", "counting-2-3")
    with pytest.raises(UsageError, match="No annotations in"):
        AnnotationSet.load(tmp_path / "nothing")


def test_empty_split_is_an_error():
    with pytest.raises(ValueError, match="has no samples"):
        next(iter(SampleStream(CountingDataset(1, 2), split="val", val_fraction=0.0)))
