"""Reasoning formats: how a `Reasoning` is written as the text a model is trained on, and read back.

The teacher's answer is always a `Reasoning` (refine_core/reasoning.py); the format only decides
its training text. `train.reasoning_format` picks one (default `refinevla`):

- `refinevla` — ReFineVLA's tagged sections, `Reasoning.render()` / `Reasoning.parse()`.
- `ecot` — Embodied Chain-of-Thought (Zawalski et al. 2024; tags and their order from
  MichalZawalski/embodied-CoT `prismatic/util/cot_utils.py`: TASK, PLAN, VISIBLE OBJECTS,
  SUBTASK REASONING, SUBTASK, MOVE REASONING, MOVE, GRIPPER POSITION, then ACTION). ECoT joins
  "TAG value" pairs with single spaces. Each refine section goes to its closest tag:

      instruction (when given)    → TASK:              (ECoT restates the instruction)
      task_planning.logical_steps → PLAN:              "1. … 2. …"
      observation                 → VISIBLE OBJECTS:   (ECoT: object names with boxes)
      situation_analysis          → SUBTASK REASONING: (progress and what is left)
      spatial_reasoning           → MOVE REASONING:    (where things are, so which way to move)
      task_planning.sub_action    → MOVE:              (the next primitive motion)

  ECoT's SUBTASK (the current plan step) and GRIPPER POSITION (future gripper pixels) have no
  refine counterpart and are omitted; so is "ACTION:", because refine finds the action span by
  the codec's ids, not by a marker. Parsing takes ECoT text from either source: TASK, SUBTASK
  and GRIPPER POSITION are read and dropped (SUBTASK stands in for a missing MOVE), text from
  "ACTION:" on is ignored, and a PLAN written as sentences ("Reach the cup. Grasp it.") splits
  into one step per sentence. parse(render(r)) == r unless a plan step itself contains the next
  step's number mark ("… 3. …" inside step 2); a field may not contain an ECoT tag.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import ClassVar

from refine_core.errors import UsageError
from refine_core.reasoning import Reasoning, TaskPlanning

DEFAULT_FORMAT = "refinevla"


class ReasoningFormat(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    # what every training text of the format begins with; inference forces it when it asks for
    # reasoning, since a model trained with reasoning dropout may otherwise act at once
    opening: ClassVar[str]

    @abstractmethod
    def render(self, reasoning: Reasoning, instruction: str | None = None) -> str:
        """The training text of `reasoning` (`instruction`: the step's, for formats that restate it)."""

    @abstractmethod
    def parse(self, text: str) -> Reasoning:
        """Read the text back; ValueError naming what is missing or malformed."""


class RefineVLAFormat(ReasoningFormat):
    name = "refinevla"
    summary = "ReFineVLA's <Observation> <Situation Analysis> <Spatial Reasoning> <Task Planning> tags"
    opening = "<Observation>:"

    def render(self, reasoning: Reasoning, instruction: str | None = None) -> str:
        return reasoning.render()

    def parse(self, text: str) -> Reasoning:
        return Reasoning.parse(text)


ECOT_TAGS = ("TASK:", "PLAN:", "VISIBLE OBJECTS:", "SUBTASK REASONING:", "SUBTASK:", "MOVE REASONING:",
             "MOVE:",
             "GRIPPER POSITION:")
ECOT_ACTION_TAG = "ACTION:"
# ECoT writes its tags in upper case at the start of the text or after a space
_ECOT_TAG_RE = re.compile(r"(?<!\S)(" + "|".join(re.escape(t) for t in ECOT_TAGS + (ECOT_ACTION_TAG,)) + ")")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _numbered_steps(text: str) -> list[str] | None:
    """"1. a 2. b" → ["a", "b"], splitting only at the next expected number; None if not numbered."""
    first = re.match(r"\s*1\s*[.)]\s+", text)
    if first is None:
        return None
    steps, start, number = [], first.end(), 2
    while True:
        mark = re.compile(rf"\s{number}\s*[.)]\s+").search(text, start)
        if mark is None:
            steps.append(text[start:].strip())
            return steps
        steps.append(text[start:mark.start()].strip())
        start, number = mark.end(), number + 1


class ECoTFormat(ReasoningFormat):
    name = "ecot"
    summary = "Embodied-CoT's TASK: PLAN: VISIBLE OBJECTS: … MOVE REASONING: MOVE: tags"
    opening = "TASK:"  # training samples carry their instruction, which the format restates first

    def render(self, reasoning: Reasoning, instruction: str | None = None) -> str:
        plan = reasoning.task_planning
        parts = [("TASK:", _one_line(instruction))] if instruction and instruction.strip() else []
        parts += [
            ("PLAN:", " ".join(f"{i}. {step}" for i, step in enumerate(plan.logical_steps, 1))),
            ("VISIBLE OBJECTS:", reasoning.observation),
            ("SUBTASK REASONING:", reasoning.situation_analysis),
            ("MOVE REASONING:", reasoning.spatial_reasoning),
            ("MOVE:", plan.sub_action),
        ]
        for tag, value in parts:
            found = _ECOT_TAG_RE.search(value)
            if found:
                raise ValueError(
                    f"ECoT {tag} text may not contain the tag {found.group(1)!r}: {value[:80]!r}"
                )
        return " ".join(f"{tag} {value}" for tag, value in parts)

    @staticmethod
    def sections(text: str) -> dict[str, str]:
        """Tag → text of every ECoT tag present (first occurrence), up to "ACTION:"."""
        found: dict[str, str] = {}
        marks = list(_ECOT_TAG_RE.finditer(text))
        for i, mark in enumerate(marks):
            if mark.group(1) == ECOT_ACTION_TAG:
                break
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            found.setdefault(mark.group(1), text[mark.end():end].strip())
        return found

    def parse(self, text: str) -> Reasoning:
        found = self.sections(text)
        if "MOVE:" not in found and "SUBTASK:" in found:
            found["MOVE:"] = found["SUBTASK:"]
        needed = ("PLAN:", "VISIBLE OBJECTS:", "SUBTASK REASONING:", "MOVE REASONING:", "MOVE:")
        missing = [tag for tag in needed if tag not in found]
        if missing:
            raise ValueError(f"ECoT reasoning text is missing tag(s): {' '.join(missing)}")
        plan = found["PLAN:"]
        steps = _numbered_steps(plan) or [s for s in _SENTENCE_END.split(plan) if s.strip()]
        return Reasoning(
            observation=found["VISIBLE OBJECTS:"],
            situation_analysis=found["SUBTASK REASONING:"],
            spatial_reasoning=found["MOVE REASONING:"],
            task_planning=TaskPlanning(logical_steps=steps, sub_action=found["MOVE:"]),
        )


REASONING_FORMATS: dict[str, ReasoningFormat] = {f.name: f for f in (RefineVLAFormat(), ECoTFormat())}


def format_names() -> list[str]:
    return sorted(REASONING_FORMATS)


def get_reasoning_format(name: str) -> ReasoningFormat:
    try:
        return REASONING_FORMATS[name]
    except KeyError:
        raise UsageError(
            f"Unknown reasoning format '{name}'. Available: {', '.join(format_names())}"
        ) from None
