"""The demo dataset: a seeded generator written as bridge RLDS and read back through the bridge
reader, its metadata, its cache, `refine data` on it, and that the tiny backbone learns it."""
from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import importorskip_or_fail

importorskip_or_fail("tensorflow_datasets")

from conftest import run_refine  # noqa: E402
from refine_plugins.demo import DemoOptions  # noqa: E402
from refine_plugins.demo import dataset as demo_data  # noqa: E402
from refine_plugins.demo.render import render_episode  # noqa: E402
from refine_plugins.demo.scene import CELL, generate_episodes  # noqa: E402
from refine_core.annotate.motion import motion_phases  # noqa: E402
from refine_core.registry import get_registry  # noqa: E402

EPISODES = 24
# learnability run: steps, batch, learning rate, and the held-out action-token accuracy to reach
LEARN_STEPS, LEARN_BATCH, LEARN_LR, LEARN_MIN_ACCURACY = 100, 8, 1e-3, 0.6


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="module")
def demo(cache):
    ds = get_registry().build("dataset", "demo", {"episodes": EPISODES, "cache_dir": str(cache)})
    return ds, list(ds.episodes()), generate_episodes(EPISODES, 0)


@pytest.fixture(autouse=True)
def _user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINE_CACHE_DIR", str(tmp_path / "user-cache"))


def test_generator_is_deterministic():
    first, again, other = generate_episodes(3, 7), generate_episodes(3, 7), generate_episodes(3, 8)
    for a, b in zip(first, again):
        assert a.instruction == b.instruction
        np.testing.assert_array_equal(a.actions(), b.actions())
        np.testing.assert_array_equal(render_episode(a), render_episode(b))
    assert [e.instruction for e in first] != [e.instruction for e in other]
    # episode i depends only on (seed, i): a longer run extends a shorter one
    np.testing.assert_array_equal(generate_episodes(5, 7)[2].actions(), first[2].actions())


def test_expert_moves_one_cell_per_axis_through_the_documented_phases():
    for episode in generate_episodes(20, 3):
        actions = episode.actions()
        assert set(np.unique(actions[:, :3])) <= {-CELL, 0.0, CELL}
        assert not actions[:, 3:6].any()
        assert set(np.unique(actions[:, 6])) <= {0.0, 1.0}
        # the phases we record are the ones refine reads back from the actions alone
        assert motion_phases(actions) == episode.phases
        runs = [p for p, _ in itertools.groupby(episode.phases)]
        tail = ["move", "place", "release"] if episode.destination else []
        assert runs[-len(["descend", "grasp", "lift", *tail]):] == ["descend", "grasp", "lift", *tail]


def test_round_trip_through_the_bridge_reader(demo):
    ds, episodes, generated = demo
    assert ds.cameras == ("image_0",) and len(episodes) == EPISODES
    for episode, source in zip(episodes, generated):
        # the bridge reader drops the still first and last recorded steps and relabels movement
        # from observation/state: that gives back exactly the expert's steps
        np.testing.assert_array_equal(episode.actions(), source.actions())
        assert episode.instruction == source.instruction and list(episode.steps[0].images) == ["image_0"]
        frames = np.stack([s.image for s in episode]).astype(int)
        assert np.abs(frames - render_episode(source)[:-1]).mean() < 3  # JPEG, same frames
        states = np.stack([s.state for s in episode])
        np.testing.assert_array_equal(states[:, :3], source.cells[:-1] * CELL)


def test_metadata_describes_the_frames_and_agrees_with_the_actions(demo):
    _, episodes, _ = demo
    for episode in episodes:
        steps = episode.steps
        meta = [s.metadata for s in steps]
        target, destination = meta[0]["target"], meta[0]["destination"]
        assert target in episode.instruction and (destination is None or destination in episode.instruction)
        names = {o["name"] for o in meta[0]["objects"]}
        assert target in names and (destination is None or destination in names)
        assert [m["phase"] for m in meta] == motion_phases(episode.actions())
        for t in range(len(steps) - 1):
            reached = np.add(meta[t]["gripper_position"], steps[t].action[:3])
            np.testing.assert_allclose(reached, meta[t + 1]["gripper_position"])
        for m, step in zip(meta, steps):
            goal_name = target if m["phase"] in ("approach", "descend") else destination or target
            goal = next(o["position"] for o in m["objects"] if o["name"] == goal_name)
            if m["phase"] == "approach":  # each move shrinks the distance to the target on every axis it uses
                before = np.abs(np.subtract(goal[:2], m["gripper_position"][:2]))
                after = np.abs(np.subtract(goal[:2], np.add(m["gripper_position"][:2], step.action[:2])))
                assert (after <= before).all() and (after < before).any()
            if m["phase"] == "descend":
                assert step.action[2] < 0 and np.allclose(m["gripper_position"][:2], goal[:2])
            if m["phase"] in ("lift", "move", "place"):  # the held object travels with the gripper
                held = next(o["position"] for o in m["objects"] if o["name"] == target)
                np.testing.assert_allclose(held[:2], m["gripper_position"][:2])


def test_cache_is_reused_and_interrupted_writes_leave_nothing(tmp_path, monkeypatch):
    options = DemoOptions(episodes=2, cache_dir=str(tmp_path))
    folder = demo_data.ensure_generated(options)
    sidecar = folder / demo_data.METADATA_FILE
    stamp = sidecar.stat().st_mtime_ns

    def must_not_write(*args):
        raise AssertionError("the cached demo was written again")

    monkeypatch.setattr(demo_data, "write_demo", must_not_write)
    assert demo_data.ensure_generated(options) == folder and sidecar.stat().st_mtime_ns == stamp

    # a writer interrupted half way: no dataset folder appears and its temp folder is removed
    other = DemoOptions(episodes=3, cache_dir=str(tmp_path))

    def interrupted(folder, options, identity):
        (folder / "bridge_dataset").mkdir(parents=True)
        (folder / "bridge_dataset" / "half.tfrecord").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_data, "write_demo", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo_data.ensure_generated(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]

    # a writer that died without cleaning up (killed): its temp folder is removed by the next build
    identity = demo_data.generator_identity(other)
    dead = tmp_path / f".{identity}.tmp-{2**22 + 12345}-deadbeef"
    (dead / "bridge_dataset").mkdir(parents=True)
    monkeypatch.undo()
    built = demo_data.ensure_generated(other)
    assert not dead.exists() and (built / demo_data.METADATA_FILE).is_file()
    assert len(list(get_registry().build("dataset", "demo", {"episodes": 3,
                                                             "cache_dir": str(tmp_path)}).episodes())) == 3


def test_refine_data_stats_and_show(demo, cache, tmp_path):
    sets = ["--dataset", "demo", "--set", f"dataset.episodes={EPISODES}", "--set",
            f"dataset.cache_dir={cache}"]
    png = tmp_path / "sheet.png"
    with ThreadPoolExecutor(2) as pool:  # each run pays the TensorFlow import
        stats = pool.submit(run_refine, "data", "stats", *sets, "--json")
        show = pool.submit(run_refine, "data", "show", *sets, "--out", str(png))
        stats, show = stats.result(), show.result()
    assert stats.returncode == 0, stats.stderr
    payload = json.loads(stats.stdout)
    assert (
        payload["dataset"] == "demo"
        and payload["num_episodes"] == EPISODES
        and payload["cameras"] == ["image_0"]
    )
    assert payload["num_steps"] == sum(len(e) for e in demo[1])
    assert payload["action"]["q01"][:3] == [-CELL] * 3 and payload["action"]["q99"][:3] == [CELL] * 3
    assert show.returncode == 0, show.stderr
    assert png.stat().st_size > 20_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_writing_the_demo_data_prints_nothing_but_refines_own_output(tmp_path):
    result = run_refine("data", "stats", "--dataset", "demo", "--set", "dataset.episodes=2", "--set",
                        f"dataset.cache_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("demo (demo-gripper")  # the table, nothing before it
    # absl's "Variant folder … has no dataset_info.json" and tfds' "Downloading and preparing …"
    assert "absl" not in result.stderr and "dataset_info" not in result.stderr
    assert "Downloading" not in result.stdout + result.stderr


def test_tiny_backbone_learns_the_demo(demo):
    """Held-out action-token accuracy after a short CPU run is far above chance (1/256)."""
    import torch

    from refine_core.loss import reasoning_aware_loss
    from refine_core.data.samples import SampleStream

    ds = demo[0]
    registry = get_registry()
    torch.manual_seed(0)
    backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny"})
    backbone.attach_codec(registry.build("codec", "bins", {}), ds.statistics().action)
    train = iter(SampleStream(ds, split="train", val_fraction=0.25, shuffle_buffer=500, seed=0))
    held_out = list(SampleStream(ds, split="val", val_fraction=0.25).samples())
    assert held_out, "the validation split must hold episodes"
    params = [p for p in backbone.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARN_LR)
    for _ in range(LEARN_STEPS):
        batch = backbone.collate(list(itertools.islice(train, LEARN_BATCH)))
        out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"], 0.3)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    backbone.model.eval()
    hits = total = 0
    with torch.no_grad():
        for i in range(0, len(held_out), 16):
            batch = backbone.collate(held_out[i:i + 16])
            out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"], 0.3)
            hits += float(out.action_accuracy) * out.num_action_tokens
            total += out.num_action_tokens
    assert hits / total >= LEARN_MIN_ACCURACY, hits / total

