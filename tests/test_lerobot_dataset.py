"""The lerobot plugin on LeRobotDataset v3 folders the tests write themselves: embedded images and
mp4 videos, action/gripper mapping, statistics, `refine data stats`, and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import importorskip_or_fail

importorskip_or_fail("pyarrow")
importorskip_or_fail("av")

from conftest import run_refine  # noqa: E402
from refine_plugins.lerobot.fixtures import synthetic_frames, write_lerobot_dataset  # noqa: E402
from refine_core.errors import UsageError  # noqa: E402
from refine_core.registry import get_registry  # noqa: E402

LENGTHS = (5, 7, 4)  # two data/video files: episodes 0-1 share file-000, episode 2 is file-001
SIZE = (48, 64)


def source_episodes() -> list[dict]:
    """7-D actions in refine's convention already (gripper in [0, 1], 1 = open)."""
    rng = np.random.default_rng(0)
    episodes = []
    for i, n in enumerate(LENGTHS):
        actions = rng.uniform(-1, 1, (n, 7)).astype(np.float32)
        actions[:, 6] = rng.uniform(0, 1, n)
        episodes.append({"actions": actions, "states": rng.normal(size=(n, 8)).astype(np.float32),
                         "task": f"put the block in bowl {i % 2}"})
    return episodes


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    episodes = source_episodes()
    return {
        "episodes": episodes,
        "images": write_lerobot_dataset(root / "images", episodes, cameras=("front", "wrist"),
                                        image_size=SIZE),
        "video": write_lerobot_dataset(root / "video", episodes, video=True, cameras=("front", "wrist"),
                                       image_size=SIZE),
    }


@pytest.fixture(autouse=True)
def _user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINE_CACHE_DIR", str(tmp_path / "user-cache"))


def lerobot(root, **options):
    return get_registry().build("dataset", "lerobot", {"root": str(root), **options})


def frames_of(episode, camera):
    return np.stack([step.images[camera] for step in episode])


@pytest.mark.parametrize("variant", ["images", "video"])
def test_round_trip(folders, variant):
    ds = lerobot(folders[variant])
    assert ds.cameras == ("front", "wrist") and ds.control_frequency == 10 and ds.robot == "toy_arm"
    episodes = list(ds.episodes())
    assert [len(e) for e in episodes] == list(LENGTHS)
    for e, (episode, source) in enumerate(zip(episodes, folders["episodes"])):
        np.testing.assert_allclose(episode.actions(), source["actions"], atol=1e-6)
        np.testing.assert_allclose(np.stack([s.state for s in episode]), source["states"], atol=1e-6)
        assert episode.instruction == source["task"]
        assert [s.metadata["frame_index"] for s in episode] == list(range(len(episode)))
        for j, camera in enumerate(("front", "wrist")):
            expected = synthetic_frames(len(episode), SIZE, seed=e * 7 + j).astype(int)
            error = np.abs(frames_of(episode, camera).astype(int) - expected)
            if variant == "images":
                assert error.max() == 0  # PNG is lossless
            else:
                # lossy, but the right frames: a neighbouring frame would differ by tens of levels
                assert error.mean() < 3, (e, camera, error.mean())
    assert episodes[2].steps[0].metadata["index"] == LENGTHS[0] + LENGTHS[1]


def test_gripper_convention_and_layout_options(tmp_path):
    # a LIBERO-like 4-D action [dx, dy, dz, g] with -1 = open, +1 = closed
    actions = np.array([[0.1, 0.2, 0.3, -1.0], [0.0, -0.1, 0.0, 1.0], [0.2, 0.0, -0.3, 0.0], [0, 0, 0, 0.6]],
                       np.float32)
    root = write_lerobot_dataset(tmp_path / "libero", [{"actions": actions, "task": "open the drawer"}],
                                 cameras=("agentview", "wrist"))
    ds = lerobot(root, movement_dims=[0, 1, 2], gripper_dim=3, gripper_range=[-1, 1], gripper_open_at="low",
                 primary_camera="wrist")
    episode = next(ds.episodes())
    got = episode.actions()
    np.testing.assert_allclose(got[:, :3], actions[:, :3])
    assert np.all(got[:, 3:6] == 0)
    np.testing.assert_allclose(got[:, 6], [1.0, 0.0, 0.5, 0.2], atol=1e-6)
    assert ds.cameras == ("wrist", "agentview") and episode.steps[0].primary_camera == "wrist"
    binary = lerobot(root, movement_dims=[0, 1, 2], gripper_dim=3, gripper_range=[-1, 1],
                     gripper_open_at="low",
                     binarize_gripper=True)
    assert next(binary.episodes()).actions()[:, 6].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_statistics_match_numpy_and_max_episodes(folders):
    ds = lerobot(folders["video"], max_episodes=2)
    assert [len(e) for e in ds.episodes()] == list(LENGTHS[:2])
    stats = ds.statistics()
    actions = np.concatenate([e["actions"] for e in folders["episodes"][:2]])
    np.testing.assert_allclose(stats.action.mean, actions.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats.action.q01, np.quantile(actions, 0.01, axis=0), atol=1e-6)
    assert stats.num_episodes == 2 and stats.num_steps == len(actions) and stats.num_instructions == 2
    assert stats.action.mask.tolist() == [True] * 6 + [False]
    assert ds.statistics_path is not None and ds.statistics_path.is_file()


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_bad_input_names_the_problem(folders, tmp_path):
    with pytest.raises(UsageError) as exc:
        lerobot(tmp_path / "nowhere")
    assert "is not a folder" in _one_line(exc)
    with pytest.raises(UsageError) as exc:
        lerobot(tmp_path)
    assert "meta/info.json is missing" in _one_line(exc)
    with pytest.raises(UsageError) as exc:
        get_registry().build("dataset", "lerobot", {})
    assert "dataset.root" in _one_line(exc)

    old = write_lerobot_dataset(tmp_path / "old", source_episodes()[:1], codebase_version="v2.1")
    with pytest.raises(UsageError) as exc:
        lerobot(old)
    assert "codebase_version 'v2.1'" in _one_line(exc) and "v3.0" in str(exc.value)

    with pytest.raises(UsageError) as exc:
        lerobot(folders["images"], action_key="actions")
    assert "Action key 'actions'" in _one_line(exc) and "action" in str(exc.value).split("Found:")[1]
    with pytest.raises(UsageError) as exc:
        lerobot(folders["images"], image_keys=["observation.images.top"])
    assert "observation.images.front, observation.images.wrist" in _one_line(exc)
    with pytest.raises(UsageError) as exc:
        lerobot(folders["images"], state_key="observation.joints")
    assert "State key 'observation.joints'" in _one_line(exc)
    with pytest.raises(UsageError) as exc:
        lerobot(folders["images"], gripper_dim=9)
    assert "outside 'action' of size 7" in _one_line(exc)


def test_missing_data_file_and_column(folders, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folders["video"], broken)
    (broken / "videos/observation.images.wrist/chunk-000/file-001.mp4").unlink()
    with pytest.raises(UsageError) as exc:
        list(lerobot(broken).episodes())
    assert "file-001.mp4 is missing" in _one_line(exc)
    info = json.loads((broken / "meta/info.json").read_text())
    info["features"]["observation.velocity"] = {"dtype": "float32", "shape": [7], "names": None}
    (broken / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(UsageError) as exc:
        list(lerobot(broken, action_key="observation.velocity", image_keys=["front"]).episodes())
    assert "Column 'observation.velocity' not found" in _one_line(exc) and "episode_index" in str(exc.value)


def test_cli_stats_and_bad_root(folders, tmp_path):
    ok = run_refine("data", "stats", "--dataset", "lerobot", "--set", f"dataset.root={folders['images']}",
                    "--json")
    assert ok.returncode == 0, ok.stderr
    payload = json.loads(ok.stdout)
    assert (
        payload["num_episodes"] == 3
        and payload["num_steps"] == sum(LENGTHS)
        and payload["cameras"] == ["front", "wrist"]
    )
    sheet = tmp_path / "sheet.png"
    shown = run_refine("data", "show", "--dataset", "lerobot", "--set", f"dataset.root={folders['video']}",
                       "--episode", "1", "--out", str(sheet))
    assert shown.returncode == 0, shown.stderr
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sheet.stat().st_size > 10_000
    bad = run_refine("data", "stats", "--dataset", "lerobot", "--set", f"dataset.root={tmp_path}")
    assert bad.returncode == 2
    assert "meta/info.json is missing" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
