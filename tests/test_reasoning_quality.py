"""Free-running reasoning is scored against the teacher's per section, with numbers worked by hand."""
from __future__ import annotations

import pytest

from refine_core import Reasoning, TaskPlanning, compare_reasoning, get_reasoning_format, summarise_reasoning
from refine_core.evaluate.reasoning_quality import phase_of, token_f1

TEACHER = Reasoning(observation="the red cup on the table; the gripper is open",
                    situation_analysis="approach phase; next descend",
                    spatial_reasoning="the red cup is forward left down",
                    task_planning=TaskPlanning(logical_steps=["reach the red cup", "grasp the red cup",
                                                              "lift the red cup"],
                                               sub_action="approach: move forward left"))


def test_token_f1_is_squads_word_multiset_f1():
    # 5 shared words; 5 predicted, 6 in the reference: P = 1, R = 5/6, F1 = 10/11
    assert token_f1("the red cup is left", "the red cup is forward left") == pytest.approx(10 / 11)
    assert token_f1("The red cup, is LEFT.", "the red cup is left") == 1.0  # case and punctuation ignored
    assert token_f1("0.06 m", "0.07 m") == pytest.approx(0.5)  # numbers are words of their own
    assert token_f1("blue plate", "red cup") == 0.0 and token_f1("", "") == 1.0


@pytest.mark.parametrize("name", ["refinevla", "ecot"])
def test_each_section_is_compared_on_its_own(name):
    fmt = get_reasoning_format(name)
    reference = fmt.render(TEACHER, "pick up the red cup")
    assert compare_reasoning(reference, reference, fmt)["exact"] == dict.fromkeys(
        ("observation", "situation_analysis", "spatial_reasoning", "logical_steps", "sub_action"), True)
    wrong_way = TEACHER.model_copy(update={
        "spatial_reasoning": "the red cup is forward right down",
        "task_planning": TaskPlanning(logical_steps=TEACHER.task_planning.logical_steps,
                                      sub_action="approach: move forward right")})
    scores = compare_reasoning(fmt.render(wrong_way, "pick up the red cup"), reference, fmt)
    assert scores["parsed"] and scores["phase"] is True  # the phase is right, the direction is not
    assert scores["exact"] == {"observation": True, "situation_analysis": True, "spatial_reasoning": False,
                               "logical_steps": True, "sub_action": False}
    assert scores["f1"]["spatial_reasoning"] == pytest.approx(6 / 7)  # 6 of 7 words on both sides
    assert scores["f1"]["sub_action"] == pytest.approx(3 / 4)


def test_unreadable_reasoning_scores_zero_and_a_wrong_phase_is_caught():
    fmt = get_reasoning_format("refinevla")
    reference = fmt.render(TEACHER)
    loop = "<Observation>: Step Step Step Step"
    scores = compare_reasoning(loop, reference, fmt)
    assert scores["parsed"] is False and scores["phase"] is False
    assert set(scores["f1"].values()) == {0.0} and not any(scores["exact"].values())
    lifted = TEACHER.model_copy(update={"task_planning": TaskPlanning(
        logical_steps=TEACHER.task_planning.logical_steps, sub_action="lift: move up")})
    assert compare_reasoning(fmt.render(lifted), reference, fmt)["phase"] is False
    assert phase_of("approach: move left") == "approach" and phase_of("move left") is None


def test_summary_rates_and_intervals_match_a_hand_count():
    fmt = get_reasoning_format("refinevla")
    reference = fmt.render(TEACHER)
    other = fmt.render(TEACHER.model_copy(update={"observation": "the gripper holds the red cup"}))
    steps = [compare_reasoning(reference, reference, fmt), compare_reasoning(other, reference, fmt),
             compare_reasoning("garbage", reference, fmt), compare_reasoning(reference, reference, fmt)]
    summary = summarise_reasoning(steps)
    assert summary["steps"] == 4 and summary["parsed_rate"] == 0.75
    assert summary["sections"]["observation"]["exact_match"] == 0.5  # 2 of 4
    assert summary["sections"]["sub_action"]["exact_match"] == 0.75  # 3 of 4
    assert summary["all_sections_exact"] == 0.5
    # Wilson 95% for 2 of 4, worked out: centre (0.5 + z²/8)/(1 + z²/4), half z·sqrt(1/16 + z²/64)/(1 + z²/4)
    z = 1.959964
    centre, half = (0.5 + z * z / 8) / (1 + z * z / 4), z * (1 / 16 + z * z / 64) ** 0.5 / (1 + z * z / 4)
    interval = summary["sections"]["observation"]["exact_match_ci95"]
    assert interval == pytest.approx([centre - half, centre + half])
    obs_f1 = token_f1("the gripper holds the red cup", TEACHER.observation)
    assert summary["sections"]["observation"]["token_f1"] == pytest.approx((1 + obs_f1 + 0 + 1) / 4)
    assert summary["phase_accuracy"] == 0.75 and summary["phase_steps"] == 4
    assert summarise_reasoning([]) is None
