"""Data streaming at scale (issue 18): ranks read disjoint parts of the episodes, and a long stream
through the real RLDS reader keeps its resident memory flat.

The dataset is written once per module in the real `bridge_dataset` on-disk format (tfds).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import importorskip_or_fail

importorskip_or_fail("tensorflow_datasets")

from refine_core.data.samples import SampleStream  # noqa: E402
from refine_core.registry import get_registry  # noqa: E402
from refine_plugins.rlds import fixtures  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPISODES, STEPS = 23, 8  # an odd count: ranks cannot all get the same number of episodes
IMAGE = (96, 96)


@pytest.fixture(scope="module")
def bridge_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    episodes = []
    for k in range(EPISODES):
        actions = rng.normal(0, 0.05, (STEPS, 7)).astype(np.float32)
        actions[:, 6] = 1.0
        states = np.cumsum(rng.normal(0, 0.02, (STEPS, 7)), axis=0).astype(np.float32)
        episodes.append({"actions": actions, "states": states, "instruction": f"task {k}",
                         "episode_id": k})
    root = tmp_path_factory.mktemp("stream")
    fixtures.write_bridge_dataset(root, episodes, image_size=IMAGE)
    return root / fixtures.BRIDGE_NAME / fixtures.BRIDGE_VERSION


def bridge(data_dir):
    return get_registry().build("dataset", "bridge", {"data_dir": str(data_dir)})


def keys(stream: SampleStream) -> list[str]:
    return [sample.key for sample in stream.samples()]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_episodes_that_together_are_the_split(bridge_dir, world_size):
    dataset = bridge(bridge_dir)
    whole = keys(SampleStream(dataset, val_fraction=0.2, seed=3))
    ranks = [SampleStream(dataset, val_fraction=0.2, seed=3, rank=r, world_size=world_size)
             for r in range(world_size)]
    seen = [keys(stream) for stream in ranks]
    everything = Counter(key for part in seen for key in part)
    assert max(everything.values()) == 1  # no sample twice, on one rank or across ranks
    assert set(everything) == set(whole) and sum(everything.values()) == len(whole)
    episodes = [{key.split("/")[0] for key in part} for part in seen]
    assert all(not a & b for i, a in enumerate(episodes) for b in episodes[i + 1:])  # whole episodes
    sizes = [len(part) for part in episodes]
    assert max(sizes) - min(sizes) <= 1  # every N-th episode: balanced
    # The shuffled, endless stream a trainer reads: one epoch of each rank is exactly its part.
    for stream, part in zip(ranks, seen):
        epoch = [next(iter_) for iter_ in [iter(stream)] for _ in range(len(part))]
        assert sorted(sample.key for sample in epoch) == sorted(part)
    # The validation split is sharded the same way, and never meets the training split.
    val = [keys(SampleStream(dataset, split="val", val_fraction=0.2, rank=r, world_size=world_size))
           for r in range(world_size)]
    assert sorted(k for part in val for k in part) == sorted(keys(SampleStream(dataset, split="val",
                                                                                val_fraction=0.2)))
    assert not set(everything) & {k for part in val for k in part}


def test_max_episodes_caps_the_pool_before_sharding(bridge_dir):
    dataset = bridge(bridge_dir)
    capped = keys(SampleStream(dataset, val_fraction=0.0, max_episodes=5))
    parts = [keys(SampleStream(dataset, val_fraction=0.0, max_episodes=5, rank=r, world_size=2))
             for r in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(capped)
    assert len({k.split("/")[0] for k in parts[0]}) == 3 and len({k.split("/")[0] for k in parts[1]}) == 2


def test_a_rank_outside_the_world_is_refused(bridge_dir):
    with pytest.raises(ValueError, match="rank 2 of 2"):
        SampleStream(bridge(bridge_dir), rank=2, world_size=2)


def test_rss_stays_flat_over_a_stream_ten_times_the_shuffle_buffer(bridge_dir, tmp_path):
    # Its own process: the test session's other allocations do not move the numbers, and the
    # measurement runs the perf script exactly as a user runs it.
    env = {**os.environ, "REFINE_CACHE_DIR": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    buffer = 32
    done = subprocess.run([sys.executable, str(ROOT / "perf" / "stream_memory.py"), "--data-dir",
                           str(bridge_dir), "--buffer", str(buffer), "--times", "10", "--points", "8",
                           "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    epoch = EPISODES * (STEPS - 2)  # Bridge's conversion drops the first and last step
    assert result["epoch_samples"] == epoch and result["warmup_samples"] == 2 * epoch
    assert result["streamed"] == 10 * buffer > 2 * epoch and len(result["readings"]) == 8  # more epochs
    assert result["max_deviation"] <= 0.10, result
