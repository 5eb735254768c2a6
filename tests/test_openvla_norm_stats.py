"""OpenVLA action statistics: config.json `norm_stats` → refine Statistics for an `unnorm_key`,
`predict_action` against upstream's decode, key errors, and norm_stats through save → reload."""
from __future__ import annotations

import json

import numpy as np
import pytest

from refine_core.errors import UsageError

from conftest import OPENVLA_FIXTURE as FIXTURE, require_fixture

# a second dataset in the full upstream layout (RLDS loader statistics + the normalisation mask)
MY_ROBOT = {
    "action": {"mean": [0.0] * 7, "std": [0.01] * 7, "max": [0.1] * 6 + [1.0], "min": [-0.1] * 6 + [0.0],
               "q01": [-0.05, -0.04, -0.03, -0.2, -0.2, -0.2, 0.0], "q99": [0.05, 0.04, 0.03, 0.2, 0.2, 0.2,
                                                                            1.0],
               "mask": [True] * 6 + [False]},
    "proprio": {k: [0.0] * 7 for k in ("mean", "std", "max", "min", "q01", "q99")},
    "num_transitions": 1234, "num_trajectories": 56,
}


@pytest.fixture(scope="module")
def reference():
    require_fixture(FIXTURE)
    from safetensors.torch import load_file

    return {k: v.numpy() for k, v in load_file(str(FIXTURE / "reference_io.safetensors")).items()}


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory):
    """The upstream fixture with a second norm_stats entry added to its config.json."""
    from refine_plugins.openvla.tiny import build_tokenizer

    directory = tmp_path_factory.mktemp("openvla_two_datasets")
    (directory / "model.safetensors").symlink_to(FIXTURE / "model.safetensors")
    config = json.loads((FIXTURE / "config.json").read_text())
    config["norm_stats"]["my_robot"] = MY_ROBOT
    (directory / "config.json").write_text(json.dumps(config))
    build_tokenizer().save_pretrained(directory)  # the fixture has weights only
    return directory


@pytest.fixture(scope="module")
def registry():
    from refine_core.registry import Registry

    return Registry(entry_points=False)


@pytest.fixture(scope="module")
def backbone(registry, checkpoint):
    return registry.build("backbone", "openvla", {"path": str(checkpoint), "unnorm_key": "bridge_orig"})


def upstream_decode(ids, action_stats, vocab_size=32064 - 64):
    """openvla modeling_prismatic.py `predict_action`, by hand: bin centres, then un-normalise where mask."""
    centres = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    normalized = centres[np.clip(vocab_size - np.asarray(ids) - 1, 0, 254)]
    q01, q99 = np.asarray(action_stats["q01"]), np.asarray(action_stats["q99"])
    return np.where(action_stats.get("mask", [True] * 7), 0.5 * (normalized + 1) * (q99 - q01) + q01,
                    normalized)


def snapped(actions):
    out = np.array(actions, dtype=np.float64)
    out[6] = float(out[6] >= 0.5)  # refine's gripper: a binary command, 1 = open
    return out


def test_statistics_come_from_norm_stats_with_the_mask(backbone):
    stats = backbone.action_statistics()
    assert stats.q01.tolist() == [-0.03] * 6 + [0.0] and stats.q99.tolist() == [0.03] * 6 + [1.0]
    assert stats.mask.tolist() == [True] * 6 + [False]
    assert np.isnan(stats.mean).all()  # the fixture carries q01/q99/mask only
    mine = backbone.action_statistics("my_robot")
    assert mine.q99.tolist() == MY_ROBOT["action"]["q99"] and mine.std.tolist() == [0.01] * 7
    assert mine.count == 1234


def test_the_fixture_decode_case_matches_upstream(backbone, reference):
    """reference_io's fixed ids → upstream's actions under norm_stats['bridge_orig']."""
    from refine_plugins.action_codecs.bins import BinsCodec

    ids = reference["decode_test_token_ids"][0].tolist()
    expected = reference["decode_test_actions"]
    entry = json.loads((FIXTURE / "config.json").read_text())["norm_stats"]["bridge_orig"]["action"]
    np.testing.assert_allclose(upstream_decode(ids, entry), expected, atol=1e-12)
    # the raw gripper bin (no binarising) equals upstream on all 7 dimensions
    raw = BinsCodec(BinsCodec.options_model(binarize_gripper=False, clip_out_of_range=True))
    raw.bind(backbone.tokenizer, backbone.action_statistics())
    np.testing.assert_allclose(raw.decode(ids)[0], expected, atol=1e-6)
    # refine's convention snaps the gripper: upstream's -0.93 → 0 (closed)
    actions = backbone.decode_action_ids(ids)
    assert actions.dtype == np.float32 and actions.shape == (7,)
    np.testing.assert_allclose(actions, snapped(expected), atol=1e-6)
    np.testing.assert_allclose(backbone.decode_action_ids(ids, unnorm_key="my_robot"),
                               snapped(upstream_decode(ids, MY_ROBOT["action"])), atol=1e-6)


def test_upstream_generation_decodes_to_upstreams_predicted_actions(backbone, reference):
    """Upstream's greedy ids (out of the action range: random weights) clip to the last bin, as upstream."""
    actions = backbone.decode_action_ids(reference["generated_ids"][0].tolist())
    np.testing.assert_allclose(actions, snapped(reference["predicted_actions"]), atol=1e-6)


def test_predict_action_is_the_greedy_ids_decoded_by_hand(backbone):
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    instruction = "put the carrot on the plate"
    ids = backbone.generate_ids(image, instruction, 7)
    assert len(ids) == 7
    entry = backbone.norm_stats()["my_robot"]["action"]
    actions = backbone.predict_action(image, instruction, unnorm_key="my_robot")
    assert actions.dtype == np.float32 and actions.shape == (7,)
    np.testing.assert_allclose(actions, snapped(upstream_decode(ids, entry)), atol=1e-6)


def test_unknown_or_ambiguous_unnorm_key_is_one_line_listing_the_keys(registry, checkpoint, backbone):
    with pytest.raises(UsageError) as unknown:
        backbone.predict_action(np.zeros((8, 8, 3), np.uint8), "x", unnorm_key="bridge")
    assert str(unknown.value) == ("unnorm_key 'bridge' is not in the OpenVLA norm_stats; "
                                  "available: bridge_orig, my_robot")
    ambiguous = registry.build("backbone", "openvla", {"path": str(checkpoint)})
    with pytest.raises(UsageError,
                       match=r"several datasets; set backbone.unnorm_key .* bridge_orig, my_robot$"):
        ambiguous.action_statistics()
    with pytest.raises(UsageError, match="carries no action statistics"):
        registry.build("backbone", "openvla", {"preset": "tiny"}).action_statistics()


def test_save_writes_the_training_statistics_under_the_dataset_name(backbone, registry, tmp_path):
    from refine_core import Statistics

    rng = np.random.default_rng(1)
    actions = rng.uniform(-0.02, 0.02, (300, 7))
    actions[:, 6] = rng.integers(0, 2, 300)
    train_stats = Statistics.from_array(actions)
    backbone.attach_codec(registry.build("codec", "bins", {}), train_stats)
    backbone.statistics_key = "new_task"  # what refine's training setup sets: the dataset's name
    try:
        backbone.save(tmp_path)
    finally:
        backbone.codec, backbone.statistics_key = None, None
    saved = json.loads((tmp_path / "config.json").read_text())["norm_stats"]
    original = json.loads((FIXTURE / "config.json").read_text())["norm_stats"]
    assert (
        saved["bridge_orig"] == original["bridge_orig"] and saved["my_robot"] == MY_ROBOT
    )  # carried unchanged
    action = saved["new_task"]["action"]
    assert sorted(action) == ["mask", "max", "mean", "min", "q01", "q99", "std"]
    assert action["mask"] == [True] * 6 + [False] and saved["new_task"]["num_transitions"] == 300
    np.testing.assert_allclose(action["q99"], train_stats.q99)

    reloaded = registry.build("backbone", "openvla", {"path": str(tmp_path), "unnorm_key": "new_task"})
    stats = reloaded.action_statistics()
    np.testing.assert_allclose(stats.q01, train_stats.q01)
    ids = [31744, 31800, 31872, 31900, 31950, 31999, 31744]
    # upstream-style code reading only config.json decodes as we do
    np.testing.assert_allclose(reloaded.decode_action_ids(ids),
                               snapped(upstream_decode(ids, action)), atol=1e-6)


def test_training_setup_names_the_statistics_and_applies_the_reasoning_format(registry, tmp_path):
    from refine_core import DatasetStatistics, Episode, RobotDataset, Statistics, Step
    from refine_core.config import resolve_config
    from refine_core.training.setup import prepare_run

    class Tiny(RobotDataset):
        name, cameras = "tiny_table", ("cam",)
        identity = "tiny-table-1"

        def episodes(self, split="train"):
            steps = [Step(images={"cam": np.zeros((8, 8, 3), np.uint8)}, instruction="lift the cup",
                          action=[0.01 * t, 0, 0, 0, 0, 0, 1], primary_camera="cam", episode_id="e",
                          step_index=t)
                     for t in range(4)]
            yield Episode(episode_id="e", steps=steps)

        def statistics(self):
            return DatasetStatistics(action=Statistics.from_array(next(self.episodes()).actions()))

    from refine_core import Reasoning, TaskPlanning
    from refine_core.data.annotation_set import episode_filename
    from refine_core.data.samples import SampleStream

    reasoning = Reasoning(observation="a cup", situation_analysis="not held", spatial_reasoning="cup below",
                          task_planning=TaskPlanning(logical_steps=["grasp", "lift"], sub_action="move down"))
    annotations = tmp_path / "ann"
    annotations.mkdir()
    (annotations / episode_filename("e")).write_text(json.dumps(
        {"episode_id": "e", "steps": [{"step": 1, "text": reasoning.render(), "teacher": "x"}]}))
    (annotations / "manifest.json").write_text(json.dumps({"format": 1, "dataset": "tiny_table",
                                                            "dataset_identity": "tiny-table-1",
                                                            "episodes": {"e": episode_filename("e")}}))

    config = resolve_config(None, ["backbone.name=openvla", "backbone.preset=tiny", "codec.name=bins",
                                   "train.reasoning_format=ecot"])
    setup = prepare_run(config, registry, annotations_dir=annotations, dataset=Tiny())
    assert setup.backbone.statistics_key == "tiny_table"
    assert list(setup.backbone.norm_stats()) == ["tiny_table"]
    np.testing.assert_allclose(setup.backbone.action_statistics().q99, setup.action_stats.q99)
    # train.reasoning_format reaches the samples the trainer streams
    samples = list(SampleStream(setup.dataset, val_fraction=0, annotations=setup.annotations).samples())
    assert samples[1].reasoning == ("TASK: lift the cup PLAN: 1. grasp 2. lift VISIBLE OBJECTS: a cup "
                                    "SUBTASK REASONING: not held MOVE REASONING: cup below MOVE: move down")
    assert [s.reasoning for s in samples if s is not samples[1]] == [None] * 3
