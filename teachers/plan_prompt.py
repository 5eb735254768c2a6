"""What an API teacher is asked to decompose a trajectory (VLM2VLA), and the JSON shape it answers in.

Shared by the Gemini and OpenAI-compatible teachers: the key frames go before the prompt, each
after its `frame_label`; `decompose_prompt` states the instruction, the axis conventions, the
numbered action log and the rule the answer is held to (`refine_core.validate_plan`: the steps'
actions, concatenated, are the log row for row). Any change to the wording or the answer shape
bumps `PLAN_PROMPT_VERSION`.
"""
from __future__ import annotations

from typing import Any

from refine_core import AXIS_CONVENTIONS, MalformedAnswer, TrajectoryPlan, TrajectoryRequest

PLAN_PROMPT_VERSION = "refine-plan-v1"
STEP_FIELDS = ("subtask", "reasoning", "main_movements", "actions")

_PROMPT = """\
You are annotating a robot demonstration so that a robot policy can learn to plan before it acts.
The robot was instructed: "{instruction}".
The images above are key frames of the demonstration, in time order, each labelled with the step it shows.

Action log: one row per step, [dx, dy, dz, g] ({axes}). Row t is the action the robot took at step t.
{log}

Split the demonstration into its consecutive subtasks (such as "reach the red block", "grasp it",
"lift it", "move it above the plate"). For each subtask give:
- subtask: a short imperative phrase;
- reasoning: one or two sentences on why this subtask comes next, from what the frames show;
- main_movements: the subtask's movement in words (directions, rough distances, the gripper opening
  or closing);
- actions: the subtask's rows of the action log, copied exactly as written, in order.

The steps' actions, concatenated in order, must reproduce the action log row for row: all {rows} rows,
each exactly once, in order, with their numbers unchanged. Leave no row out; do not repeat, merge,
reorder, round or invent rows. Every step holds at least one row and every row has 4 numbers.

Reply with a JSON object {{"steps": [{{"subtask": ..., "reasoning": ..., "main_movements": ...,
"actions": [[dx, dy, dz, g], ...]}}, ...]}}."""

_FEEDBACK = """

Your previous answer was refused: {feedback}.
Answer again, with this corrected."""


def frame_labels(request: TrajectoryRequest) -> list[str]:
    """One label per key frame: the step it shows (its position when `key_steps` does not say)."""
    steps = request.key_steps if len(request.key_steps) == len(request.key_frames) else None
    return [f"Key frame {k + 1} of {len(request.key_frames)}: step {steps[k] if steps else k}"
            for k in range(len(request.key_frames))]


def decompose_prompt(request: TrajectoryRequest, feedback: str | None = None) -> str:
    """The prompt text (after the key frames); `feedback`: why the previous answer was refused."""
    text = _PROMPT.format(instruction=" ".join(request.instruction.split()), axes=AXIS_CONVENTIONS,
                          log=request.log_text(), rows=len(request.actions))
    return text + (_FEEDBACK.format(feedback=" ".join(feedback.split()).rstrip(".")) if feedback else "")


def plan_json_schema() -> dict[str, Any]:
    """A strict JSON schema of `TrajectoryPlan` (every key required, no extra keys, no numeric or
    length constraints: the subset every schema-enforcing server accepts)."""
    text = {"type": "string"}
    step = {"type": "object", "additionalProperties": False, "required": list(STEP_FIELDS),
            "properties": {"subtask": text, "reasoning": text, "main_movements": text,
                           "actions": {"type": "array",
                                       "items": {"type": "array", "items": {"type": "number"}}}}}
    return {"type": "object", "additionalProperties": False, "required": ["steps"],
            "properties": {"steps": {"type": "array", "items": step}}}


def plan_output_tokens(request: TrajectoryRequest, floor: int) -> int:
    """An output-token limit that fits the whole plan: the answer copies every log row (about 16
    tokens each, doubled for margin) plus a few sentences per step."""
    return max(floor, 1024 + 32 * len(request.actions))


def plan_from_text(text: str) -> TrajectoryPlan:
    """The answer text → plan; anything unusable → MalformedAnswer saying what is wrong."""
    try:
        return TrajectoryPlan.parse(text)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise MalformedAnswer(" ".join(lines[:3])[:300] or type(exc).__name__) from None
