"""RLDS datasets: bridge, fractal and generic rlds plugins, statistics, `refine data`, bad input.

The RLDS folders are written once per session in the real tfds on-disk format
(tests/rlds_fixtures.py). CLI runs that import TensorFlow are started together, since each one
pays the TensorFlow import.
"""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import importorskip_or_fail

importorskip_or_fail("tensorflow_datasets")

from conftest import run_refine  # noqa: E402
from refine_plugins.rlds import RldsOptions, conversions, fixtures  # noqa: E402
from refine_plugins.rlds.reader import RldsDataset, build_rlds_dataset  # noqa: E402
from refine_core.errors import UsageError  # noqa: E402
from refine_core.registry import get_registry  # noqa: E402

from rlds_fixtures import BRIDGE_GRIPPERS, BRIDGE_INSTRUCTION, FRACTAL_GRIPPERS, write_all  # noqa: E402


@pytest.fixture(scope="session")
def rlds(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("rlds"))


@pytest.fixture(autouse=True)
def _user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINE_CACHE_DIR", str(tmp_path / "user-cache"))


def bridge(data_dir, **options):
    return get_registry().build("dataset", "bridge", {"data_dir": str(data_dir), **options})


def fractal(data_dir, **options):
    return get_registry().build("dataset", "fractal", {"data_dir": str(data_dir), **options})


# -- conversions with known answers ------------------------------------------------------------
def test_gripper_rules_known_answers():
    assert conversions.binarize_gripper([1.0, 0.5, 0.02, 0.01, 0.99]).tolist() == [1, 0, 0, 0, 1]
    # in-between values take the state reached after them; a trailing run keeps the last raw value
    assert conversions.binarize_gripper([0.0, 0.7, 1.0, 0.4]).tolist() == pytest.approx([0, 1, 1, 0.4])
    for closedness, expected in FRACTAL_GRIPPERS.values():
        assert conversions.rel2abs_gripper(closedness).tolist() == expected
    assert conversions.invert_gripper([1.0, 0.0, -1.0, 2.0]).tolist() == [0.0, 1.0, 1.0, 0.0]
    states = np.array([[0, 0, 0, 0, 0, 0, 1], [1, 2, 3, 4, 5, 6, 0], [1, 2, 3, 4, 5, 7, 0]], np.float32)
    assert conversions.relabel_from_state(states).tolist() == [[1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 1]]


# -- bridge ---------------------------------------------------------------------------------------
def test_bridge_episodes_follow_openvla_conversion(rlds):
    episodes = list(bridge(rlds.root / "data").episodes())
    assert len(episodes) == 2  # the unlabeled third episode is skipped
    for k, episode in enumerate(episodes):
        raw = rlds.bridge_inputs[k]
        recorded_gripper, expected_gripper = BRIDGE_GRIPPERS[k]
        n = len(recorded_gripper)
        assert len(episode) == n - 2  # first step dropped, last dropped by relabelling
        actions = episode.actions()
        states = raw["states"]
        np.testing.assert_allclose(actions[:, :6], states[2:, :6] - states[1:-1, :6], atol=1e-6)
        np.testing.assert_allclose(actions[:, 6], expected_gripper, atol=1e-6)
        for t, step in enumerate(episode):
            assert step.metadata["source_step"] == t + 1
            assert step.metadata["file_path"] == raw["file_path"]
            assert step.metadata["episode_id"] == raw["episode_id"]
            np.testing.assert_allclose(step.state, states[t + 1])
        assert episode.instruction == (BRIDGE_INSTRUCTION if k == 0 else f"open drawer {k}")
        assert [s.is_first for s in episode][0] and [s.is_last for s in episode][-1]


def test_bridge_images_are_uint8_rgb_and_aligned(rlds):
    episode = next(bridge(rlds.root / "data").episodes())
    step = episode.steps[0]
    # image_2/3 are padding in Bridge (has_image_N false, all zeros) and are left out
    assert list(step.images) == ["image_0", "image_1"] and step.primary_camera == "image_0"
    for image in step.images.values():
        assert image.dtype == np.uint8 and image.shape == (256, 256, 3)
    given = rlds.bridge_inputs[0]["images"]["image_0"].astype(np.float32)
    for t, s in enumerate(episode):
        errors = [np.abs(s.image.astype(np.float32) - frame).mean() for frame in given]
        assert int(np.argmin(errors)) == t + 1 and errors[t + 1] < 4  # JPEG-close to recorded frame t+1


def test_bridge_frames_equal_tfds_decoding_and_absent_cameras_stay_encoded(rlds):
    """The reader decodes JPEGs itself (parallel tf.data map, used cameras only): frames must be
    byte-identical to tfds's decoder, and cameras flagged has_image_N false never decoded."""
    import tensorflow_datasets as tfds

    dataset = bridge(rlds.root / "data")
    reference = tfds.builder_from_directory(str(dataset.version_dir)).as_dataset(split="train",
                                                                                shuffle_files=False)
    reference = reference.flat_map(lambda episode: episode["steps"].batch(1000))
    compared = 0
    for expected, (_, steps, rest) in zip(reference.as_numpy_iterator(), dataset._tf_episodes("train", True)):
        for camera in ("image_0", "image_1", "image_2", "image_3"):
            frames, decoded = expected["observation"][camera], steps[f"observation/{camera}"]
            if rest[f"episode_metadata/has_{camera}"]:
                assert decoded.dtype == np.uint8 and np.array_equal(decoded, frames)
                compared += 1
            else:
                assert decoded.shape[0] == 0 and len(frames) > 0
    assert compared >= 6  # three episodes, image_0 and image_1 each
    first = next(reference.as_numpy_iterator())["observation"]["image_0"]
    for t, step in enumerate(next(dataset.episodes())):  # episodes yield those frames (step t+1 recorded)
        np.testing.assert_array_equal(step.images["image_0"], first[t + 1])


def test_primary_camera_only_returns_the_same_primary_frames_and_decodes_no_other_camera(rlds):
    full, primary = bridge(rlds.root / "data"), bridge(rlds.root / "data", primary_camera_only=True)
    for (_, steps, _), (_, all_steps, _) in zip(primary._tf_episodes("train", True),
                                                full._tf_episodes("train", True)):
        assert [k for k in steps if "image" in k] == ["observation/image_0"]  # the rest never leaves tf.data
        np.testing.assert_array_equal(steps["observation/image_0"], all_steps["observation/image_0"])
    seen = 0
    for a, b in zip(primary.episodes(), full.episodes()):
        np.testing.assert_array_equal(a.actions(), b.actions())
        for x, y in zip(a, b):
            assert list(x.images) == ["image_0"] and x.primary_camera == "image_0"
            np.testing.assert_array_equal(x.images["image_0"], y.images["image_0"])
            seen += len(y.images) > 1
    assert seen > 0  # the full read does have a second camera there
    assert primary.identity == full.identity  # statistics and annotations are the same data's


def test_bridge_relabel_off_keeps_recorded_actions(rlds):
    episode = next(bridge(rlds.root / "data", relabel_actions=False).episodes())
    raw = rlds.bridge_inputs[0]["actions"]
    assert len(episode) == len(raw) - 1
    np.testing.assert_allclose(episode.actions()[:, :6], raw[1:, :6])
    np.testing.assert_allclose(episode.actions()[:, 6], [1, 0, 0, 0, 1])


def test_data_dir_may_name_version_builder_or_parent_folder_and_splits(rlds):
    ids = {bridge(d).identity for d in (rlds.bridge, rlds.bridge.parent, rlds.root / "data")}
    assert len(ids) == 1
    ds = bridge(rlds.bridge)
    assert len(list(ds.episodes("val"))) == 1
    with pytest.raises(UsageError, match="Split 'test' not in .*Available: train, val"):
        next(ds.episodes("test"))


# -- fractal and generic rlds ---------------------------------------------------------------------
def test_fractal_episodes_convert_relative_closedness(rlds):
    episodes = list(fractal(rlds.root / "data").episodes())
    assert len(episodes) == len(FRACTAL_GRIPPERS)
    for k, episode in enumerate(episodes):
        raw = rlds.fractal_inputs[k]
        actions = episode.actions()
        np.testing.assert_allclose(actions[:, :3], raw["world_vector"], atol=1e-6)
        np.testing.assert_allclose(actions[:, 3:6], raw["rotation_delta"], atol=1e-6)
        assert actions[:, 6].tolist() == FRACTAL_GRIPPERS[k][1]
        np.testing.assert_allclose(episode.steps[0].state, np.concatenate([raw["base_pose_tool_reached"][0],
                                                                           raw["gripper_closed"][0]]),
                                   atol=1e-6)
        assert episode.steps[0].image.shape == (256, 320, 3) and episode.steps[0].image.dtype == np.uint8
        assert episode.instruction == f"pick coke can {k}"


def test_generic_rlds_reads_fractal_with_options_and_slices(rlds):
    options = RldsOptions(
        data_dir=str(rlds.fractal), image_keys="image", instruction_key="natural_language_instruction",
        action_keys=["action/world_vector", "action/rotation_delta[0:3]", "action/gripper_closedness_action"],
        gripper="closedness_relative", state_keys="base_pose_tool_reached",
    )
    generic = list(build_rlds_dataset(options).episodes())
    reference = list(fractal(rlds.fractal).episodes())
    for a, b in zip(generic, reference, strict=True):
        np.testing.assert_array_equal(a.actions(), b.actions())
        assert a.steps[0].state.shape == (7,)
    inverted = build_rlds_dataset(options.model_copy(update={"gripper": "closed_is_1"}))
    raw = np.clip(np.asarray(FRACTAL_GRIPPERS[0][0], np.float32), 0, 1)
    np.testing.assert_allclose(next(inverted.episodes()).actions()[:, 6], 1 - raw)


# -- statistics ---------------------------------------------------------------------------------
def test_statistics_equal_numpy_on_the_same_arrays(rlds, tmp_path):
    shutil.copytree(rlds.bridge, tmp_path / "bridge_dataset" / "1.0.0")
    ds = bridge(tmp_path)
    episodes = list(ds.episodes())
    actions = np.concatenate([e.actions() for e in episodes]).astype(np.float64)
    states = np.concatenate([np.stack([s.state for s in e]) for e in episodes]).astype(np.float64)
    stats = ds.statistics()
    for got, values in ((stats.action, actions), (stats.state, states)):
        np.testing.assert_allclose(got.mean, values.mean(0), atol=1e-7)
        np.testing.assert_allclose(got.std, values.std(0), atol=1e-7)
        np.testing.assert_allclose(got.min, values.min(0), atol=1e-7)
        np.testing.assert_allclose(got.max, values.max(0), atol=1e-7)
        np.testing.assert_allclose(got.q01, np.quantile(values, 0.01, axis=0), atol=1e-7)
        np.testing.assert_allclose(got.q99, np.quantile(values, 0.99, axis=0), atol=1e-7)
    assert stats.action.mask.tolist() == [True] * 6 + [False]
    assert (stats.num_episodes, stats.num_steps, stats.num_instructions) == (2, len(actions), 2)
    assert stats.extra["skipped_unlabeled_episodes"] == 1


def test_statistics_cache_is_reused_and_invalidated_on_change(rlds, tmp_path, monkeypatch):
    root = tmp_path / "copy"
    shutil.copytree(rlds.bridge, root / "bridge_dataset" / "1.0.0")
    first = bridge(root)
    before = first.statistics()
    assert first.statistics_path.parent == root / "bridge_dataset" / "1.0.0"  # next to the data

    def no_recompute(self):
        raise AssertionError("statistics recomputed although cached")

    monkeypatch.setattr(RldsDataset, "_compute_statistics", no_recompute)
    np.testing.assert_array_equal(bridge(root).statistics().action.q99, before.action.q99)
    # options that change the data change the key
    with pytest.raises(AssertionError, match="recomputed"):
        bridge(root, relabel_actions=False).statistics()
    monkeypatch.undo()
    monkeypatch.setenv("REFINE_CACHE_DIR", str(tmp_path / "user-cache"))

    changed = [dict(ep) for ep in rlds.bridge_inputs]
    changed[0]["states"] = changed[0]["states"] * 3
    fixtures.write_bridge_dataset(root, changed)  # same path, new content
    after = bridge(root)
    assert after.identity != first.identity
    assert not np.allclose(after.statistics().action.std[:6], before.action.std[:6])


def test_statistics_cached_for_another_dataset_identity_are_recomputed(rlds, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(rlds.bridge, root / "bridge_dataset" / "1.0.0")
    ds = bridge(root)
    truth = ds.statistics()
    cache = ds.statistics_path
    # the file this identity reads now records another dataset's identity and statistics
    forged = json.loads(cache.read_text())
    forged["key"] = ds.identity + "-another-dataset"
    forged["statistics"]["action"]["q99"] = [123.0] * 7
    cache.write_text(json.dumps(forged))
    again = bridge(root)
    stats = again.statistics()
    np.testing.assert_array_equal(stats.action.q99, truth.action.q99)
    assert again.statistics_path == cache and json.loads(cache.read_text())["key"] == ds.identity


def test_statistics_fall_back_to_user_cache_when_data_folder_refuses(rlds, tmp_path):
    root = tmp_path / "ro"
    shutil.copytree(rlds.fractal, root / "fractal20220817_data" / "0.1.0")
    ds = fractal(root)
    from refine_core.statistics import stats_file_name

    # a directory where the file should go: the data folder cannot take it (works as root too)
    (root / "fractal20220817_data" / "0.1.0" / stats_file_name(ds.identity)).mkdir()
    stats = ds.statistics()
    assert ds.statistics_path.parent == tmp_path / "user-cache" / "stats"
    assert stats.num_episodes == len(FRACTAL_GRIPPERS)


def test_nan_actions_are_skipped_and_counted(rlds):
    ds = bridge(rlds.nan_root)
    episodes = list(ds.episodes())
    assert [len(e) for e in episodes] == [3, 3]  # episode 0 lost the step with the NaN (4 without)
    assert [s.metadata["source_step"] for s in episodes[0]] == [1, 2, 4]
    assert ds.skipped["nonfinite_steps"] == 1
    assert all(np.isfinite(e.actions()).all() for e in episodes)
    assert ds.statistics().extra["skipped_nonfinite_steps"] == 1


# -- CLI ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli(rlds, tmp_path_factory):
    """The CLI runs that read TFRecords, started concurrently; each test checks one result."""
    base = tmp_path_factory.mktemp("cli")
    fresh = base / "fresh"
    shutil.copytree(rlds.bridge, fresh / "bridge_dataset" / "1.0.0")
    corrupt = base / "corrupt" / "bridge_dataset" / "1.0.0"
    shutil.copytree(rlds.bridge, corrupt)
    shard = sorted(corrupt.glob("*.tfrecord*"))[0]
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])  # always a change
    shard.write_bytes(bytes(data))
    env = {"REFINE_CACHE_DIR": str(base / "user-cache")}
    runs = {
        "stats": ("data", "stats", "--dataset", "bridge", "--set", f"dataset.data_dir={fresh}", "--json"),
        "show": ("data", "show", "--dataset", "fractal", "--set", f"dataset.data_dir={rlds.fractal}",
                 "--episode", "2", "--out", str(base / "sheet.png")),
        "corrupt": ("data", "stats", "--dataset", "bridge", "--set", f"dataset.data_dir={corrupt}"),
        "nan_strict": ("data", "stats", "--dataset", "bridge", "--set", f"dataset.data_dir={rlds.nan_root}",
                       "--set", "dataset.strict=true"),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run_refine, *args, env=env) for name, args in runs.items()}
        results = {name: f.result() for name, f in futures.items()}
    return results, base, shard


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in " ".join(result.stderr.split()), result.stderr


def test_cli_data_stats_json(cli, rlds):
    result = cli[0]["stats"]
    assert result.returncode == 0, result.stderr
    # TensorFlow's native start-up lines (absl I0000/E0000, "could not find cuda drivers") stay hidden
    assert (
        "I0000" not in result.stderr and "E0000" not in result.stderr and "InitializeLog" not in result.stderr
    )
    payload = json.loads(result.stdout)
    assert (
        payload["dataset"] == "bridge" and payload["num_episodes"] == 2 and payload["num_instructions"] == 2
    )
    assert set(payload["action"]) >= {"mean", "std", "min", "max", "q01", "q99", "mask", "count"}
    assert len(payload["action"]["q99"]) == 7 and len(payload["state"]["mean"]) == 7
    assert payload["action"]["mask"] == [True] * 6 + [False]
    assert payload["cache"].endswith(".json")
    # the second run reads the cache (no TensorFlow needed) and agrees
    again = run_refine("data", "stats", "--dataset", "bridge", "--set",
                       f"dataset.data_dir={cli[1] / 'fresh'}", "--json")
    assert json.loads(again.stdout)["action"] == payload["action"]


def test_cli_data_show_writes_png(cli):
    result = cli[0]["show"]
    assert result.returncode == 0, result.stderr
    png = cli[1] / "sheet.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_cli_corrupt_tfrecord_names_the_file(cli):
    assert_usage_error(cli[0]["corrupt"], "Corrupt TFRecord file", cli[2].name)


def test_cli_nan_action_with_strict_fails(cli, rlds):
    assert_usage_error(cli[0]["nan_strict"], "NaN/inf action", "episode 0", "step 3", "dataset.strict=false")


def test_cli_missing_data_dir():
    assert_usage_error(run_refine("data", "stats", "--dataset", "fractal"), "needs a data directory",
                       "--set dataset.data_dir=DIR")


def test_cli_directory_without_builder_files(tmp_path):
    (tmp_path / "bridge_dataset" / "1.0.0").mkdir(parents=True)
    assert_usage_error(run_refine("data", "stats", "--dataset", "bridge", "--set",
                                  f"dataset.data_dir={tmp_path}"),
                       "No RLDS builder files in", "dataset_info.json")


def test_cli_features_not_matching_the_plugin(rlds):
    result = run_refine("data", "stats", "--dataset", "bridge", "--set", f"dataset.data_dir={rlds.fractal}")
    assert_usage_error(result, "needs step key 'observation/image_0'", "Found:", "observation/image,")


def test_cli_image_of_wrong_rank(rlds):
    result = run_refine("data", "show", "--dataset", "rlds", "--set",
                        f"dataset.data_dir={rlds.wrong_rank_root}",
                        "--out", "x.png")  # a parent holding one builder folder needs no builder name
    assert_usage_error(result, "Image 'observation/image'", "[16, 16]", "H x W x 3")
