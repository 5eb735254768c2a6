"""Core contracts: Reasoning render/parse, Step validation, Statistics normalisation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refine_core import Reasoning, Statistics, Step, TaskPlanning

words = st.text(alphabet=st.characters(whitelist_categories=("L", "N", "Zs"),
                                       whitelist_characters=".,;:'()-"),
                min_size=1,
                max_size=40).filter(lambda s: s.strip().lstrip(":").strip())  # empty fields are invalid


@settings(max_examples=60, deadline=None)
@given(obs=words, sit=words, spa=words, steps=st.lists(words, min_size=1, max_size=5), sub=words)
def test_parse_of_render_is_identity(obs, sit, spa, steps, sub):
    reasoning = Reasoning(observation=obs, situation_analysis=sit, spatial_reasoning=spa,
                          task_planning=TaskPlanning(logical_steps=steps, sub_action=sub))
    assert Reasoning.parse(reasoning.render()) == reasoning


def test_render_is_the_tagged_format():
    text = Reasoning(observation="A red block.", situation_analysis="Gripper open.",
                     spatial_reasoning="Block left of plate.",
                     task_planning=TaskPlanning(logical_steps=["Reach.", "Grasp."],
                                                sub_action="move left")).render()
    assert text == ("<Observation>: A red block.\n<Situation Analysis>: Gripper open.\n"
                    "<Spatial Reasoning>: Block left of plate.\n"
                    "<Task Planning>: <logical_steps> <1> Reach. <2> Grasp. <sub_action> move left")


@pytest.mark.parametrize("plan", [
    "<logical_steps> 1. reach the cup 2. grasp it <sub_action> move down",
    "<logical_steps>\n- reach the cup\n- grasp it\n<sub_action>: move down",
    "<logical_steps><1>reach the cup<2>   grasp it <SUB_ACTION> move down",
])
def test_parse_tolerates_teacher_spacing_and_numbering(plan):
    text = (f"<observation>:  a cup\n\n<Situation_Analysis> open <spatial reasoning>: cup ahead "
            f"<Task Planning>: {plan}")
    parsed = Reasoning.parse(text)
    assert parsed.observation == "a cup" and parsed.situation_analysis == "open"
    assert parsed.task_planning.logical_steps == ["reach the cup", "grasp it"]
    assert parsed.task_planning.sub_action == "move down"


def test_parse_is_strict_about_missing_sections():
    with pytest.raises(ValueError, match="missing section.*Spatial Reasoning"):
        Reasoning.parse("<Observation>: a <Situation Analysis>: b <Task Planning>: 1. x <sub_action> y")
    with pytest.raises(ValueError, match="sub_action"):
        Reasoning.parse("<Observation>: a <Situation Analysis>: b <Spatial Reasoning>: c <Task Planning>: 1. "
                        "x")


def test_a_leading_colon_is_not_content():
    # "<sub_action>: go" and "<sub_action> go" mean the same, so the colon cannot be part of a field
    plan = TaskPlanning(logical_steps=[": reach"], sub_action=":  go left")
    assert plan.logical_steps == ["reach"] and plan.sub_action == "go left"
    with pytest.raises(ValueError, match="sub_action is empty"):
        TaskPlanning(logical_steps=["reach"], sub_action=" : ")


def test_fields_cannot_smuggle_tags():
    with pytest.raises(ValueError, match="section tag"):
        TaskPlanning(logical_steps=["go <sub_action> there"], sub_action="x")


def _step(**kw):
    args = dict(images={"cam": np.zeros((4, 4, 3), np.uint8)}, instruction="go", action=np.zeros(7),
                primary_camera="cam", episode_id="e", step_index=3)
    args.update(kw)
    return Step(**args)


def test_step_validates_shapes_with_location():
    assert _step().action.dtype == np.float32
    with pytest.raises(ValueError, match=r"episode 'e' step 3: action has shape \(6,\)"):
        _step(action=np.zeros(6))
    with pytest.raises(ValueError, match=r"image 'cam' has shape \(4, 4\), expected \(H, W, 3\)"):
        _step(images={"cam": np.zeros((4, 4), np.uint8)})
    with pytest.raises(ValueError, match="dtype float64, expected uint8"):
        _step(images={"cam": np.zeros((4, 4, 3))})
    with pytest.raises(ValueError, match="primary camera 'wrist' not among"):
        _step(primary_camera="wrist")


def test_statistics_normalise_q01_q99_and_skip_masked_dims():
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(500, 7))
    actions[:, 6] = rng.integers(0, 2, 500)
    stats = Statistics.from_array(actions, mask=np.array([True] * 6 + [False]))
    assert np.allclose(stats.q01, np.quantile(actions, 0.01, axis=0))
    normalised = stats.normalize(actions)
    assert normalised[:, :6].min() == -1.0 and normalised[:, :6].max() == 1.0
    assert np.array_equal(normalised[:, 6], actions[:, 6])
    inside = (actions > stats.q01) & (actions < stats.q99)
    assert np.allclose(stats.unnormalize(normalised)[inside], actions[inside])
    assert Statistics.from_dict(stats.to_dict()).to_dict() == stats.to_dict()
