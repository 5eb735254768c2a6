"""What every vision-language teacher is asked, and the JSON shape it answers in.

The four questions follow ReFineVLA's annotation prompt (what is seen, where the task stands,
how things are placed relative to each other, what to do next), in our own words. Any change
to the wording or the answer shape must bump `PROMPT_VERSION`: it is part of every teacher's
identity, so cached answers to the old prompt stop applying.
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from refine_core.reasoning import Reasoning, TaskPlanning
from refine_core.teacher import MalformedAnswer

PROMPT_VERSION = "refine-4q-v1"

_PROMPT = """\
You are annotating a robot demonstration so that a robot policy can learn to reason before it acts.
The image is the robot's camera view at the current step. The robot was instructed: "{instruction}".

Answer four questions about this moment:
1. Observation: what is in the scene that matters for the instruction (objects, their colours and
   states, the gripper and whether it is open or holding something)?
2. Situation analysis: how far has the task progressed, and what still has to happen?
3. Spatial reasoning: where are the relevant objects relative to the gripper and to each other
   (left/right, in front/behind, above/below, near/far)?
4. Task planning: the ordered steps that complete the task from here, and the single sub-action
   the robot should perform next (e.g. "move the gripper down toward the red block").

Be concrete and brief: one or two sentences per answer, 2 to 6 plan steps, no step numbers inside
the step texts. Do not use angle brackets."""

_TEXT_FORMAT = """

Write the answer in exactly this format:
<Observation>: ...
<Situation Analysis>: ...
<Spatial Reasoning>: ...
<Task Planning>: <logical_steps> <1> ... <2> ... <sub_action> ..."""

_JSON_FORMAT = """

Reply with a JSON object with the keys observation, situation_analysis, spatial_reasoning,
logical_steps (a list of strings) and sub_action."""


class TeacherAnswer(BaseModel):
    """The structured answer (flat, so any JSON-schema-capable model can produce it)."""

    model_config = ConfigDict(extra="ignore")

    observation: str = Field(description="What is in the scene that matters for the instruction.")
    situation_analysis: str = Field(description="Task progress and what still has to happen.")
    spatial_reasoning: str = Field(description="Relevant objects relative to the gripper and each other.")
    logical_steps: list[str] = Field(description="Ordered plan steps that complete the task from here.")
    sub_action: str = Field(description="The single next sub-action of the robot.")


def build_prompt(instruction: str, answer_format: str = "json") -> str:
    """The prompt text; `answer_format` "json" (structured output) or "text" (tagged text)."""
    tail = _JSON_FORMAT if answer_format == "json" else _TEXT_FORMAT
    return _PROMPT.format(instruction=" ".join(instruction.split())) + tail


def answer_json_schema() -> dict[str, Any]:
    """A strict JSON schema of `TeacherAnswer` (no extra keys, every key required)."""
    schema = TeacherAnswer.model_json_schema()
    schema["additionalProperties"] = False
    schema["required"] = list(TeacherAnswer.model_fields)
    return schema


def reasoning_from_answer(answer: Any) -> Reasoning:
    """A `Reasoning` from a JSON text, dict or `TeacherAnswer`; anything unusable → MalformedAnswer."""
    try:
        if isinstance(answer, (str, bytes)):
            answer = json.loads(answer)
        parsed = answer if isinstance(answer, TeacherAnswer) else TeacherAnswer.model_validate(answer)
        return Reasoning(
            observation=parsed.observation, situation_analysis=parsed.situation_analysis,
            spatial_reasoning=parsed.spatial_reasoning,
            task_planning=TaskPlanning(logical_steps=parsed.logical_steps, sub_action=parsed.sub_action),
        )
    except (ValueError, TypeError, ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MalformedAnswer(f"unusable answer: {first[:200]}") from None
