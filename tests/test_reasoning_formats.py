"""Reasoning formats: ECoT's tagged text (render, parse, round trip), the config switch, and the
annotation → training-sample path carrying ECoT text."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from refine_core import Episode, Reasoning, Step, TaskPlanning
from refine_core.data.annotation_set import AnnotationSet, episode_filename
from refine_core.config import resolve_config
from refine_core.errors import UsageError
from refine_core.data.reasoning_formats import ECOT_TAGS, get_reasoning_format
from refine_core.data.samples import episode_samples

REASONING = Reasoning(
    observation="A red block and a blue plate on the table; the gripper is open.",
    situation_analysis="Nothing is held yet; the block must be picked up first.",
    spatial_reasoning="The block is left of and below the gripper.",
    task_planning=TaskPlanning(logical_steps=["Move above the red block.", "Grasp it.",
                                              "Place it on the plate."],
                               sub_action="move left and down"),
)
ECOT_TEXT = ("TASK: Put the red block on the plate "
             "PLAN: 1. Move above the red block. 2. Grasp it. 3. Place it on the plate. "
             "VISIBLE OBJECTS: A red block and a blue plate on the table; the gripper is open. "
             "SUBTASK REASONING: Nothing is held yet; the block must be picked up first. "
             "MOVE REASONING: The block is left of and below the gripper. "
             "MOVE: move left and down")


def test_ecot_render_is_ecots_tagged_text():
    ecot = get_reasoning_format("ecot")
    assert ecot.render(REASONING, "Put the  red block\non the plate") == ECOT_TEXT
    assert ecot.render(REASONING) == ECOT_TEXT[ECOT_TEXT.index("PLAN:"):]  # no instruction: no TASK
    assert get_reasoning_format("refinevla").render(REASONING, "ignored") == REASONING.render()


def test_ecot_parse_of_render_is_identity_and_tolerates_real_ecot_text():
    ecot = get_reasoning_format("ecot")
    assert ecot.parse(ECOT_TEXT) == REASONING
    assert ecot.parse(ecot.render(REASONING)) == REASONING
    # the shape of Embodied-CoT's Bridge reasonings: sentence plan, boxes, SUBTASK, gripper pixels, actions
    text = ("TASK: Move the wooden arch onto the table. PLAN: Reach for the arch. Grasp the arch. "
            "VISIBLE OBJECTS: wooden blocks [150, 4, 188, 100] SUBTASK REASONING: It must be reached first. "
            "SUBTASK: Reach for the arch. MOVE REASONING: The arm is above it. MOVE: move down "
            "GRIPPER POSITION: [97, 45, 89, 52] ACTION: <a><b>")
    parsed = ecot.parse(text)
    assert parsed.task_planning.logical_steps == ["Reach for the arch.", "Grasp the arch."]
    assert (parsed.observation, parsed.task_planning.sub_action) == ("wooden blocks [150, 4, 188, 100]",
                                                                     "move down")
    assert ecot.parse(text.replace("MOVE: move down ", "")).task_planning.sub_action == "Reach for the arch."
    with pytest.raises(ValueError, match="missing tag.*MOVE REASONING:"):
        ecot.parse("PLAN: 1. a VISIBLE OBJECTS: b SUBTASK REASONING: c MOVE: d")
    with pytest.raises(ValueError, match="may not contain the tag 'MOVE:'"):
        ecot.render(REASONING.model_copy(update={"observation": "see MOVE: left"}))


words = st.text(alphabet=st.characters(whitelist_categories=("L", "N", "Zs"),
                                       whitelist_characters=".,;:'()-"),
                min_size=1, max_size=40).filter(lambda s: s.strip().lstrip(":").strip())
_TAG = re.compile(r"(?<!\S)(" + "|".join(re.escape(t) for t in ECOT_TAGS + ("ACTION:",)) + ")")


@settings(max_examples=60, deadline=None)
@given(obs=words, sit=words, spa=words, steps=st.lists(words, min_size=1, max_size=5), sub=words)
def test_ecot_round_trip_property(obs, sit, spa, steps, sub):
    reasoning = Reasoning(observation=obs, situation_analysis=sit, spatial_reasoning=spa,
                          task_planning=TaskPlanning(logical_steps=steps, sub_action=sub))
    fields = [obs, sit, spa, sub, *steps]
    assume(not any(_TAG.search(f) for f in fields))
    # the documented exception: a step holding a later step's number mark ("… 3. …")
    assume(not any(re.search(r"\s\d+\s*[.)]\s",
                             " " + s + " ") for s in reasoning.task_planning.logical_steps))
    ecot = get_reasoning_format("ecot")
    assert ecot.parse(ecot.render(reasoning, "do it")) == reasoning


def test_unknown_format_is_one_line_listing_the_choices():
    with pytest.raises(UsageError) as info:
        resolve_config(None, ["train.reasoning_format=cot"])
    message = str(info.value)
    assert "\n" not in message and "'train.reasoning_format'" in message and "ecot, refinevla" in message
    assert resolve_config(None, ["train.reasoning_format=ecot"]).train.reasoning_format == "ecot"
    assert resolve_config(None, []).train.reasoning_format == "refinevla"
    with pytest.raises(UsageError, match=r"Unknown reasoning format 'cot'\. Available: ecot, refinevla"):
        get_reasoning_format("cot")


def _episode(instruction="Put the red block on the plate"):
    steps = [Step(images={"cam": np.zeros((4, 4, 3), np.uint8)}, instruction=instruction,
                  action=[0, 0, 0, 0, 0, 0, 1], primary_camera="cam", episode_id="ep0", step_index=t)
             for t in range(2)]
    return Episode(episode_id="ep0", steps=steps)


def _write_annotations(directory, texts):
    directory.mkdir()
    steps = [{"step": t, "text": text, "teacher": "x"} for t, text in texts.items()]
    (directory / episode_filename("ep0")).write_text(json.dumps({"episode_id": "ep0", "steps": steps}))
    (directory / "manifest.json").write_text(json.dumps(
        {"format": 1, "dataset": "d", "dataset_identity": "d-1",
         "episodes": {"ep0": episode_filename("ep0")}}))


def test_training_samples_carry_ecot_text(tmp_path):
    _write_annotations(tmp_path / "ann", {0: REASONING.render()})
    stored = AnnotationSet.load(tmp_path / "ann")
    default = [s.reasoning for s in episode_samples(_episode(), 1, stored)]
    assert default == [REASONING.render(), None]
    ecot = stored.with_format("ecot")
    assert [s.reasoning for s in episode_samples(_episode(), 1, ecot)] == [ECOT_TEXT, None]
    assert stored.reasoning_format == "refinevla"  # with_format is a view; the stored set is unchanged


def test_annotations_that_cannot_be_converted_fail_up_front(tmp_path):
    _write_annotations(tmp_path / "ann", {0: REASONING.render(), 1: "free text, not tagged"})
    stored = AnnotationSet.load(tmp_path / "ann")
    with pytest.raises(UsageError, match=r"Annotation ep0/1 in .* cannot be written as 'ecot' reasoning: "
                                         r"reasoning text is missing section"):
        stored.with_format("ecot")
    assert stored.with_format("refinevla").text("ep0", 1) == "free text, not tagged"  # stored text, as before
