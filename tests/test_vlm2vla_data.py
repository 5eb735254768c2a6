"""VLM2VLA data side: the plan schema and its validator, decomposition (scripted teacher, re-ask,
journal), the chunk merge and direction labels, the sample builder and the decomposition score."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from refine_core import Episode, PlanStep, Step, TrajectoryPlan, TrajectoryRequest, validate_plan
from refine_core.annotate.decompose import PlanJournal, decompose_episodes, decompose_with_retries
from refine_core.data.vlm2vla import direction_label, format_actions, merge_moves, vlm2vla_samples
from refine_core.evaluate.closed_loop import wilson_interval
from refine_core.evaluate.decomposition import decomposition_score
from refine_core.plan import action_log_rows, log_tolerance
from refine_core.teacher import MalformedAnswer
from refine_plugins.demo.scene import CELL, generate_episodes
from refine_teachers.scripted.teacher import ScriptedTeacher

C = CELL  # 3.125 cm: one demo step on one axis


def demo_episode(index: int = 0, seed: int = 0) -> Episode:
    """A demo episode built straight from the generator (no RLDS round trip); frame t is filled with t,
    so a sample's frame says which step it shows."""
    demo = generate_episodes(index + 1, seed)[index]
    actions = demo.actions()
    return Episode(episode_id=f"demo-{index}", steps=[
        Step(images={"cam": np.full((4, 4, 3), t, np.uint8)}, instruction=demo.instruction, action=actions[t],
             primary_camera="cam", step_index=t, metadata=demo.metadata(t))
        for t in range(demo.num_steps)])


def rows(*values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def two_step_plan(log: np.ndarray, split: int) -> TrajectoryPlan:
    return TrajectoryPlan(steps=[
        PlanStep(subtask="reach the red block", reasoning="r", main_movements="m",
                 actions=log[:split].tolist()),
        PlanStep(subtask="grasp the red block", reasoning="r", main_movements="m",
                 actions=log[split:].tolist())])


LOG = rows([0.01, 0.0, 0.0, 1.0], [0.01, 0.0, -0.02, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.03, 0.0])


# -- plan schema and validator ------------------------------------------------------------------
def test_plan_text_round_trips_and_parses_what_teachers_write():
    plan = two_step_plan(LOG, 2)
    assert TrajectoryPlan.parse(plan.render()) == plan
    fenced = "```json\n" + plan.render() + "\n```"
    assert TrajectoryPlan.parse(fenced) == plan
    bare_list = plan.render()[len('{"steps": '):-1]
    assert TrajectoryPlan.parse(bare_list) == plan
    with pytest.raises(ValueError, match=r"\[dx, dy, dz, g\]"):
        TrajectoryPlan.parse('[{"subtask": "a", "reasoning": "b", "main_movements": "c", '
                             '"actions": [[1, 2]]}]')


def test_validator_accepts_exact_and_rounded_copies_and_names_the_first_mismatch():
    assert validate_plan(two_step_plan(LOG, 2), LOG) is None
    # the teacher saw 4 decimals: half a unit of the last digit is the rounding it may carry
    assert log_tolerance() == pytest.approx(5e-5, abs=1e-8)
    rounded = LOG.copy()
    rounded[1, 2] += 5e-5
    assert validate_plan(two_step_plan(rounded, 2), LOG) is None
    rounded[1, 2] += 1e-4
    mismatch = validate_plan(two_step_plan(rounded, 2), LOG)
    assert mismatch is not None and mismatch.index == 1 and mismatch.step == 0
    # one row dropped: the rows after it are shifted, and the message says where and in which subtask
    dropped = np.delete(LOG, 2, axis=0)
    mismatch = validate_plan(two_step_plan(dropped, 2), LOG)
    assert mismatch.index == 2 and mismatch.subtask == "grasp the red block"
    assert str(mismatch).startswith("action 2 (plan step 1, 'grasp the red block'): expected")
    extra = np.vstack([LOG, LOG[-1:]])
    assert "the plan has 5 actions, the log only 4" in str(validate_plan(two_step_plan(extra, 2), LOG))
    flipped = LOG.copy()
    flipped[2, 3] = 1.0
    assert "gripper should be closed" in str(validate_plan(two_step_plan(flipped, 2), LOG))


# -- decomposition ------------------------------------------------------------------------------
def test_scripted_decomposition_splits_a_demo_episode_and_reproduces_its_log():
    episode = demo_episode(0)
    assert episode.instruction == "put the orange block on the green plate"
    plan = asyncio.run(ScriptedTeacher().decompose(TrajectoryRequest.from_episode(episode)))
    assert plan.subtasks() == ["reach the orange block", "grasp the orange block", "lift it",
                               "move it above the green plate", "lower it onto the green plate", "release it"]
    # from cell (3, 0) two diagonal steps reach the block at (2, 2), three descend (hover 4 → grasp 1);
    # two steps carry it over the plate, three lower it
    scene = generate_episodes(1, 0)[0]
    assert scene.cells[0].tolist() == [3, 0, 4] and [o.cell for o in scene.objects][1] == (2, 2)
    assert [len(s.actions) for s in plan.steps] == [5, 1, 3, 2, 3, 1]
    assert validate_plan(plan, episode.actions()) is None
    assert plan.steps[1].main_movements == "close the gripper"
    assert plan.steps[2].main_movements == "up 0.094 m"
    # a pick-only task ends with the lift, and the same input gives the same plan
    for index in range(1, 6):
        other = demo_episode(index)
        first = asyncio.run(ScriptedTeacher().decompose(TrajectoryRequest.from_episode(other)))
        again = asyncio.run(ScriptedTeacher().decompose(TrajectoryRequest.from_episode(other)))
        assert first == again and validate_plan(first, other.actions()) is None
        if other.instruction.startswith("pick up"):
            assert first.subtasks()[-1] == "lift it"


class ScriptedAnswers:
    """A teacher answering from a list (a plan, or an exception to raise), recording the feedback."""

    def __init__(self, answers):
        self.answers, self.feedback = list(answers), []

    async def decompose(self, request, feedback=None):
        self.feedback.append(feedback)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _request(episode_id: str = "e0") -> TrajectoryRequest:
    actions = np.zeros((len(LOG), 7), np.float32)
    actions[:, :3], actions[:, 6] = LOG[:, :3], LOG[:, 3]
    return TrajectoryRequest(instruction="pick up the red block", actions=actions, episode_id=episode_id)


def test_a_mismatch_is_re_asked_with_the_reason_then_rejected_and_listed():
    good, bad = two_step_plan(LOG, 2), two_step_plan(np.delete(LOG, 2, axis=0), 2)
    teacher = ScriptedAnswers([bad, good])
    result = asyncio.run(decompose_with_retries(teacher, _request(), max_reasks=1))
    assert result.plan == good and result.attempts == 2
    assert teacher.feedback[0] is None and "action 2" in teacher.feedback[1]

    teacher = ScriptedAnswers([MalformedAnswer("no JSON"), bad])
    result = asyncio.run(decompose_with_retries(teacher, _request(), max_reasks=1))
    assert result.plan is None and result.attempts == 2
    assert "action 2 (plan step 1, 'grasp the red block')" in result.rejected
    assert "not a valid plan: no JSON" in teacher.feedback[1]


def test_decompositions_are_journaled_and_a_rerun_asks_only_what_is_unsettled(tmp_path):
    good, bad = two_step_plan(LOG, 2), two_step_plan(np.delete(LOG, 2, axis=0), 2)
    journal = PlanJournal(tmp_path / "plans.jsonl")
    teacher = ScriptedAnswers([good, bad, bad])
    report = asyncio.run(decompose_episodes(teacher, [_request("a"), _request("b")], journal, max_reasks=1))
    assert report.plans == {"a": good} and list(report.rejected) == ["b"] and report.resumed == 0
    with open(journal.path, "a") as handle:
        handle.write('{"episode_id": "c", "att')  # a torn line from a killed run
    nobody = ScriptedAnswers([])  # asking anything would fail
    again = asyncio.run(decompose_episodes(nobody, [_request("a"), _request("b")], journal))
    assert again.plans == {"a": good} and again.rejected == report.rejected and again.resumed == 2
    retried = asyncio.run(decompose_episodes(ScriptedAnswers([good]), [_request("a"), _request("b")], journal,
                                             retry_rejected=True))
    assert retried.plans == {"a": good, "b": good} and PlanJournal(journal.path).read()["b"].plan == good
    lines = journal.path.read_text().splitlines()  # the torn line was ended, not joined to the next record
    assert len(lines) == 4 and lines[2] == '{"episode_id": "c", "att' and '"episode_id": "b"' in lines[3]


# -- chunk post-processing and direction labels ---------------------------------------------------
def _merged(values) -> list[list[float]]:
    return [[round(float(v), 6) for v in m.values] for m in merge_moves(rows(*values))]


def test_merge_joins_one_axis_runs_until_2_5_cm_and_caps_at_5_cm():
    # a run along x broken by a sign change: +2 cm, then -3 cm (the third -1 cm step reaches 2.5 cm)
    assert _merged([[0.01, 0, 0, 1]] * 2 + [[-0.01, 0, 0, 1]] * 3) == [[0.02, 0, 0, 1], [-0.03, 0, 0, 1]]
    # a run crossing 2.5 cm: 1+1+1 cm reaches it, the next two start a new move
    moves = merge_moves(rows(*[[0, 0.01, 0, 1]] * 5))
    assert [(m.start, m.stop) for m in moves] == [(0, 3), (3, 5)]
    assert [round(float(m.values[1]), 6) for m in moves] == [0.03, 0.02]
    # exactly 2.5 cm ends a move
    assert _merged([[0, 0, 0.0125, 0]] * 3) == [[0, 0, 0.025, 0], [0, 0, 0.0125, 0]]
    # over 5 cm is capped, alone or after merging (2 + 4 cm -> 6 cm -> 5 cm)
    assert _merged([[0.08, 0, 0, 1], [0, -0.07, 0, 1]]) == [[0.05, 0, 0, 1], [0, -0.05, 0, 1]]
    assert _merged([[0, 0, 0.02, 1], [0, 0, 0.04, 1]]) == [[0, 0, 0.05, 1]]
    # mixed-axis steps, an axis change, a gripper change and still steps are not merged
    assert len(merge_moves(rows([0.01, 0.01, 0, 1], [0.01, 0.01, 0, 1]))) == 2
    assert len(merge_moves(rows([0.01, 0, 0, 1], [0, 0.01, 0, 1]))) == 2
    assert len(merge_moves(rows([0.01, 0, 0, 1], [0.01, 0, 0, 0]))) == 2
    assert len(merge_moves(rows([0, 0, 0, 0], [0, 0, 0, 0]))) == 2
    # sub-millimetre wobble on the other axes does not break a run, and is kept in the sum
    assert _merged([[0.01, 0.0004, 0, 1], [0.01, -0.0001, 0, 1]]) == [[0.02, 0.0003, 0, 1]]


def test_action_text_is_the_vlm2vla_list_of_numbers():
    assert format_actions(rows([0.03125, -0.0001, -0.02, 0.0], [0.0, 0.05, 0.0, 1.0])) == \
        "[[0.031, 0.000, -0.020, 0.0], [0.000, 0.050, 0.000, 1.0]]"


def test_direction_label_is_where_the_motion_goes_once_it_has_moved_2_5_cm():
    forward = rows(*[[0.01, 0, 0, 1]] * 3)
    assert direction_label(forward, 0) == "forward"
    assert direction_label(forward, 1) is None  # only 2 cm left before the rows end
    assert direction_label(rows([0.0125, 0, 0, 1], [0.0125, 0, 0, 1]), 0) == "forward"  # exactly 2.5 cm
    diagonal = rows(*[[0.01, -0.008, 0.002, 1]] * 3)
    assert direction_label(diagonal, 0) == "forward right"  # z (0.6 cm of 3 cm) is not a direction
    assert direction_label(rows([0, 0, -0.03, 0]), 0) == "down"
    assert direction_label(rows([-0.02, 0.02, 0, 1], [-0.02, 0.02, 0.01, 1]), 0) == "back left"
    assert direction_label(rows([0, 0, 0, 0]), 0) is None


# -- sample builder -------------------------------------------------------------------------------
def test_samples_of_a_demo_episode():
    episode = demo_episode(0)
    plan = asyncio.run(ScriptedTeacher().decompose(TrajectoryRequest.from_episode(episode)))
    samples = vlm2vla_samples(episode, plan, chunk_size=5)
    counts = {kind: sum(s.kind == kind for s in samples)
              for kind in ("subtasks", "motion", "actions", "direction", "completion")}
    # 6 subtasks of 5, 1, 3, 2, 3, 1 steps (0-4, 5, 6-8, 9-10, 11-13, 14); every demo move is one
    # 3.125 cm cell, so nothing merges: one chunk of at most 5 per subtask; directions on every moving
    # step (5+3+2+3); completion: "no" per subtask, "yes" for the 5 subtasks followed by a frame
    assert counts == {"subtasks": 1, "motion": 6, "actions": 6, "direction": 13, "completion": 11}
    first = samples[0]
    assert first.kind == "subtasks" and first.image[0, 0, 0] == 0
    assert first.answer == ("1. reach the orange block\n2. grasp the orange block\n3. lift it\n"
                            "4. move it above the green plate\n5. lower it onto the green plate\n"
                            "6. release it")
    lift = next(s for s in samples if s.kind == "actions" and "Subtask: lift it" in s.prompt)
    assert lift.key == "demo-0/6/actions" and lift.image[0, 0, 0] == 6
    assert lift.prompt == ("Instruction: put the orange block on the green plate\nSubtask: lift it\n"
                           "Plan: up 0.094 m\nWrite the next actions as [[dx, dy, dz, g], ...] (x forward, "
                           "y left, z up, in metres per step; g is the gripper command, 1 = open, "
                           "0 = closed).")
    assert lift.answer == ("[[0.000, 0.000, 0.031, 0.0], [0.000, 0.000, 0.031, 0.0], "
                           "[0.000, 0.000, 0.031, 0.0]]")
    reach_chunks = [s for s in samples if s.kind == "actions" and "reach" in s.prompt]
    assert [s.key for s in reach_chunks] == ["demo-0/0/actions"]
    assert {s.answer for s in samples if s.kind == "direction" and "Subtask: lift it" in s.prompt} == {"up"}
    completion = [(s.key, s.answer) for s in samples if s.kind == "completion" and "lift it" in s.prompt]
    assert completion == [("demo-0/6/completion", "no"), ("demo-0/9/completion", "yes")]
    # the plan must be the episode's: another episode's plan is refused
    other = asyncio.run(ScriptedTeacher().decompose(TrajectoryRequest.from_episode(demo_episode(1))))
    with pytest.raises(ValueError, match="does not match"):
        vlm2vla_samples(episode, other)


# -- decomposition score --------------------------------------------------------------------------
def test_decomposition_score_counts_plans_naming_object_and_destination():
    plan = TrajectoryPlan(steps=[PlanStep(subtask="reach the Red block.", reasoning="r", main_movements="m",
                                          actions=[[0, 0, 0, 1]]),
                                 PlanStep(subtask="move it above the green plate", reasoning="r",
                                          main_movements="m", actions=[[0, 0, 0, 1]])])
    score = decomposition_score([
        {"episode_id": "1", "decomposition": plan, "target": "red block", "destination": "green plate"},
        {"episode_id": "2", "decomposition": "1. grasp the red block\n2. release it", "target": "red block",
         "destination": "green plate"},  # destination missing
        {"episode_id": "3", "decomposition": "1. reach the blue cup\n2. lift it", "target": "blue cup",
         "destination": None},  # pick-only: the object is enough
        {"episode_id": "4", "decomposition": "1. pick the red cup", "target": "red block",
         "destination": None},
    ])
    assert [j.passed for j in score.judgements] == [True, False, True, False]
    assert score.judgements[1].destination_named is False and score.judgements[2].destination_named is None
    assert (score.passed, score.episodes, score.rate) == (2, 4, 0.5)
    assert score.interval == wilson_interval(2, 4)
    assert decomposition_score([]).rate == 0.0 and decomposition_score([]).interval == (0.0, 1.0)


def test_action_log_rows_binarise_the_gripper():
    actions = np.zeros((2, 7), np.float32)
    actions[:, 6] = [0.7, 0.2]
    assert action_log_rows(actions)[:, 3].tolist() == [1.0, 0.0]
