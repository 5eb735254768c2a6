"""The structured reasoning a teacher writes for one step (ReFineVLA's four questions).

`Reasoning.render()` gives the tagged text the model is trained on:

    <Observation>: … <Situation Analysis>: … <Spatial Reasoning>: … <Task Planning>:
    <logical_steps><1> … <2> … <sub_action> …

and `Reasoning.parse(text)` reads it back: parse(render(r)) == r for every valid r. Field text is
normalised on construction (whitespace collapsed, a leading ":" dropped) so that identity holds;
the tags themselves cannot appear inside a field. Parsing is tolerant of spacing, case and step numbering
("<1>", "1.", "1)", "-"), strict about missing sections. Other training texts of the same
reasoning (Embodied-CoT's tags) are in `reasoning_formats.py`.
"""
from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, field_validator

SECTIONS = {  # field -> tag, in render order
    "observation": "Observation",
    "situation_analysis": "Situation Analysis",
    "spatial_reasoning": "Spatial Reasoning",
    "task_planning": "Task Planning",
}
_TAG_TEXT = re.compile(
    r"<\s*(observation|situation analysis|spatial reasoning|task planning|logical_steps|sub_action|\d+)\s*>",
    re.IGNORECASE,
)
_SECTION_RE = re.compile(
    r"<\s*(observation|situation[ _]analysis|spatial[ _]reasoning|task[ _]planning)\s*>\s*:?", re.IGNORECASE
)
# Step numbering styles, most specific first; the first style present in the text is used.
_STEP_MARKS = [
    re.compile(r"<\s*\d+\s*>\s*:?"),
    re.compile(r"(?:^|\s)\d+\s*[.)]\s+"),
    re.compile(r"(?:^|\n)\s*[-*•]\s+"),
]


def _clean(text: str) -> str:
    if _TAG_TEXT.search(text):
        raise ValueError(f"reasoning text may not contain a section tag: {text[:80]!r}")
    # a leading ":" would read as the tag's own colon ("<sub_action>: …") and be lost on parse
    return re.sub(r"^[:\s]+", "", " ".join(text.split()))


class TaskPlanning(BaseModel):
    model_config = ConfigDict(frozen=True)

    logical_steps: list[str]
    sub_action: str

    @field_validator("logical_steps")
    @classmethod
    def _steps(cls, steps: list[str]) -> list[str]:
        cleaned = [_clean(s) for s in steps]
        if not cleaned or any(not s for s in cleaned):
            raise ValueError("task_planning.logical_steps needs at least one non-empty step")
        return cleaned

    @field_validator("sub_action")
    @classmethod
    def _sub_action(cls, text: str) -> str:
        cleaned = _clean(text)
        if not cleaned:
            raise ValueError("task_planning.sub_action is empty")
        return cleaned


class Reasoning(BaseModel):
    model_config = ConfigDict(frozen=True)

    observation: str
    situation_analysis: str
    spatial_reasoning: str
    task_planning: TaskPlanning

    @field_validator("observation", "situation_analysis", "spatial_reasoning")
    @classmethod
    def _text(cls, text: str, info) -> str:
        cleaned = _clean(text)
        if not cleaned:
            raise ValueError(f"{info.field_name} is empty")
        return cleaned

    def render(self) -> str:
        steps = " ".join(f"<{i}> {s}" for i, s in enumerate(self.task_planning.logical_steps, 1))
        return (
            f"<Observation>: {self.observation}\n"
            f"<Situation Analysis>: {self.situation_analysis}\n"
            f"<Spatial Reasoning>: {self.spatial_reasoning}\n"
            f"<Task Planning>: <logical_steps> {steps} <sub_action> {self.task_planning.sub_action}"
        )

    @classmethod
    def parse(cls, text: str) -> "Reasoning":
        """Read tagged reasoning text; raises ValueError naming any missing section."""
        found: dict[str, str] = {}
        marks = list(_SECTION_RE.finditer(text))
        for i, mark in enumerate(marks):
            key = re.sub(r"[ _]+", "_", mark.group(1).lower())
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            found.setdefault(key, text[mark.end():end].strip())
        missing = [SECTIONS[k] for k in SECTIONS if k not in found]
        if missing:
            raise ValueError(f"reasoning text is missing section(s): {', '.join(missing)}")
        plan = found["task_planning"]
        parts = re.split(r"<\s*sub_action\s*>\s*:?", plan, maxsplit=1, flags=re.IGNORECASE)
        if len(parts) != 2:
            raise ValueError("reasoning text is missing <sub_action> in Task Planning")
        steps_text = re.sub(r"<\s*logical_steps\s*>\s*:?", " ", parts[0], flags=re.IGNORECASE)
        style = next((m for m in _STEP_MARKS if m.search(steps_text)), None)
        pieces = style.split(steps_text) if style else [steps_text]
        steps = [s.strip() for s in pieces if s.strip()]
        return cls(
            observation=found["observation"],
            situation_analysis=found["situation_analysis"],
            spatial_reasoning=found["spatial_reasoning"],
            task_planning=TaskPlanning(logical_steps=steps, sub_action=parts[1]),
        )
