"""The scripted teacher: reasoning written by rules from what the data already says.

Sources, in order of preference:
- step metadata, when the dataset provides it (the demo dataset does):
    `step.metadata["objects"] = [{"name": "red block", "position": [x, y, z]}, …]`
    `step.metadata["gripper_position"] = [x, y, z]`
    `step.metadata["target"] = "red block"`        (the object to manipulate)
    `step.metadata["destination"] = "blue plate"`  (where it goes)
  Positions are metres in the robot base frame: x forward, y left, z up.
- the instruction ("put the red block on the blue plate" → target and destination);
- the actions of the whole episode: motion phases (approach, descend, grasp, lift, move,
  place, release) and each step's primitive move from its action deltas, as Embodied-CoT
  derives primitive moves (`refine_core.annotate.motion`).

Two styles (option `style`). `full`: sentences with distances in metres and the whole remaining
plan. `compact` (default): the same four sections as a short template per phase — what is on the
table and in the gripper, the phase and the next one, the direction of the current goal in words,
the instruction's fixed plan and the sub-action — about 60 tokens, so a small model learns to
write it in minutes (the demo's default run) while it stays ReFineVLA-shaped.

The same inputs always give the same text: no model, no network, no randomness.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from refine_core import (Annotation, AnnotationRequest, Reasoning, TaskPlanning, Teacher, TeacherIdentity,
    TrajectoryPlan, TrajectoryRequest, current_sub_actions, gripper_open, motion_phases)

RULES_VERSION = {"full": "scripted-v1", "compact": "scripted-compact-v1"}  # bump on a wording change

_PICK_PLACE = re.compile(
    r"^(?:please\s+)?(?:put|place|move|stack|drop|set|transfer)\s+(?:the\s+)?(?P<target>.+?)\s+"
    r"(?:on top of|onto|on|into|in|inside|to|next to|near)\s+(?:the\s+)?(?P<destination>.+?)\.?$",
    re.IGNORECASE)
_PICK = re.compile(
    r"^(?:please\s+)?(?:pick up|pick|grab|grasp|take|lift)\s+(?:up\s+)?(?:the\s+)?(?P<target>.+?)"
    r"(?:\s+(?:and\s+)?(?:put|place|move|drop)\s+(?:it\s+)?(?:on top of|onto|on|into|in|to)\s+(?:the\s+)?"
    r"(?P<destination>.+?))?\.?$", re.IGNORECASE)
_AXIS_WORDS = (("in front of", "behind"), ("to the left of", "to the right of"), ("above", "below"))
_COMPACT_WORDS = (("forward", "back"), ("left", "right"), ("up", "down"))
_NEAR = 0.01  # metres: a compact offset smaller than this reads as "at the gripper"


def objects_from_instruction(instruction: str) -> tuple[str | None, str | None]:
    text = " ".join(instruction.strip().split())
    for pattern in (_PICK_PLACE, _PICK):
        match = pattern.match(text)
        if match:
            return match.group("target"), match.groupdict().get("destination")
    return None, None


def _runs(phases: Sequence[str]) -> list[tuple[int, str]]:
    """(first step, phase) of each run of equal phases."""
    return [(t, p) for t, p in enumerate(phases) if t == 0 or p != phases[t - 1]]


def _plan_sentence(phase: str, target: str, destination: str, released: bool) -> str:
    if phase == "approach":
        return (
            f"Move the gripper away from the {destination}."
            if released
            else f"Move the gripper toward the {target}."
        )
    return {
        "descend": f"Lower the gripper to the {target}.",
        "grasp": f"Close the gripper on the {target}.",
        "lift": f"Lift the {target}.",
        "move": f"Carry the {target} toward the {destination}.",
        "place": f"Lower the {target} onto the {destination}.",
        "release": f"Open the gripper to release the {target}.",
    }[phase]


def _offset_text(name: str, offset: np.ndarray, decimals: int) -> str:
    parts = [f"{abs(v):.{decimals}f} m {words[0] if v > 0 else words[1]}"
             for v, words in zip(offset, _AXIS_WORDS) if round(abs(float(v)), decimals) > 0]
    if not parts:
        return f"The {name} is at the gripper."
    return f"The {name} is " + _join(parts) + " the gripper."


def _join(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]


class ScriptedTeacher(Teacher):
    """Deterministic reasoning from instruction, actions and metadata (see the module docstring)."""

    cacheable = False  # free to recompute, and it reads actions and metadata, not only pixels

    def __init__(self, options: Any = None) -> None:
        self.decimals = getattr(options, "decimals", 2)
        self.style = getattr(options, "style", "compact")

    @property
    def identity(self) -> TeacherIdentity:
        return TeacherIdentity(teacher="scripted", model="rules", prompt_version=RULES_VERSION[self.style])

    async def annotate(self, request: AnnotationRequest) -> Annotation:
        return Annotation(reasoning=self.reason(request))

    async def decompose(self, request: TrajectoryRequest, feedback: str | None = None) -> TrajectoryPlan:
        """The episode's VLM2VLA plan, split at gripper changes and motion phases (`decompose.py`).
        Deterministic, so `feedback` (a re-ask's reason) cannot change the answer."""
        from .decompose import decompose_trajectory

        meta = request.step_metadata[0] if request.step_metadata else {}
        parsed_target, parsed_destination = objects_from_instruction(request.instruction)
        target = str(meta.get("target") or parsed_target or "object")
        destination = meta.get("destination") or parsed_destination
        return decompose_trajectory(request, target, str(destination) if destination else None)

    def reason(self, request: AnnotationRequest) -> Reasoning:
        actions = request.episode_actions
        if actions is None or len(actions) == 0:
            actions = np.asarray(request.action if request.action is not None else np.ones(7),
                                 np.float32)[None]
            t = 0
        else:
            t = min(max(request.step_index, 0), len(actions) - 1)
        meta = request.metadata or {}
        parsed_target, parsed_destination = objects_from_instruction(request.instruction)
        target = str(meta.get("target") or parsed_target or "object")
        destination = str(meta.get("destination") or parsed_destination or "goal location")
        phases = motion_phases(actions)
        is_open = gripper_open(actions)
        holding = not is_open[t] and any(p == "grasp" for p in phases[: t + 1])

        runs = _runs(phases)
        current = max(i for i, (start, _) in enumerate(runs) if start <= t)
        done = [p for _, p in runs[:current]]
        if self.style == "compact":
            # what the frame shows: the state before step t's command (the full style reads the command)
            was_open = bool(is_open[t - 1]) if t > 0 else True
            in_hand = not was_open and "grasp" in phases[:t]
            released = "release" in phases[:t]
            return _compact(meta, actions, t, target, meta.get("destination") or parsed_destination, in_hand,
                            released, was_open, runs, current)
        observation = self._observation(request, meta, target, holding, bool(is_open[t]))
        situation = (f"Step {t + 1} of {len(actions)} of \"{' '.join(request.instruction.split())}\": "
                     f"the robot is in the {phases[t]} phase"
                     + (f" after {', '.join(done)}." if done else ", at the start of the task.")
                     + (f" It holds the {target}." if holding else "")
                     + (" The remaining plan finishes here." if current == len(runs) - 1 else
                        f" Still to do: {', '.join(p for _, p in runs[current + 1:])}."))
        spatial = self._spatial(meta, actions, t, target, destination, holding)
        steps: list[str] = []
        seen_release = any(p == "release" for p in done)
        for _, phase in runs[current:]:
            sentence = _plan_sentence(phase, target, destination, seen_release)
            seen_release = seen_release or phase == "release"
            if not steps or steps[-1] != sentence:
                steps.append(sentence)
        return Reasoning(observation=observation, situation_analysis=situation, spatial_reasoning=spatial,
                         task_planning=TaskPlanning(logical_steps=steps,
                                                    sub_action=current_sub_actions(actions)[t]))

    def _observation(self, request: AnnotationRequest, meta: dict, target: str, holding: bool,
                     is_open: bool) -> str:
        names = [str(o.get("name")) for o in meta.get("objects", []) if isinstance(o, dict) and o.get("name")]
        scene = (f"The {request.primary_camera} camera shows " + _join([f"the {n}" for n in names]) + " on "
                                                                                                      "the "
                                                                                                      "table"
                 if names else f"The {request.primary_camera} camera shows the workspace of the task")
        grip = f"holding the {target}" if holding else ("open" if is_open else "closed")
        return f"{scene}; the gripper is {grip}."

    def _spatial(self, meta: dict, actions: np.ndarray, t: int, target: str, destination: str,
                 holding: bool) -> str:
        positions = {str(o.get("name")): o.get("position") for o in meta.get("objects", [])
                     if isinstance(o, dict) and o.get("name") and o.get("position") is not None}
        gripper = meta.get("gripper_position")
        goal = destination if holding else target
        if gripper is not None and positions.get(goal) is not None:
            offset = np.asarray(positions[goal], np.float64)[:3] - np.asarray(gripper, np.float64)[:3]
            text = _offset_text(goal, offset, self.decimals)
            other = target if holding else destination
            if positions.get(other) is not None and other != goal:
                text += " " + _offset_text(other, np.asarray(positions[other], np.float64)[:3]
                                           - np.asarray(gripper, np.float64)[:3], self.decimals)
            return text
        # No positions: the motion still to come until the next gripper change says where the goal is.
        is_open = gripper_open(actions)
        end = next((k for k in range(t + 1, len(actions)) if is_open[k] != is_open[t]), len(actions))
        ahead = actions[t:end, :3].sum(axis=0)
        words = _direction_words(ahead)
        if not words:
            return (f"The gripper is already at the {goal}; no further translation is needed before the next "
                    "gripper action.")
        return f"The {goal} lies {' and '.join(words)} of the gripper, judging by the motion still to come."


def _direction_words(delta: np.ndarray) -> list[str]:
    size = float(np.abs(delta).max(initial=0.0))
    if size < 1e-6:
        return []
    names = (("forward", "backward"), ("left", "right"), ("up", "down"))
    return [names[i][0 if delta[i] > 0 else 1] for i in range(3) if abs(delta[i]) >= 0.5 * size]


def _compact(meta: dict, actions: np.ndarray, t: int, target: str, destination: str | None, holding: bool,
             released: bool, is_open: bool, runs: list[tuple[int, str]], current: int) -> Reasoning:
    """The compact style (see the module docstring): only words the instruction and the frame decide."""
    phase = runs[current][1]
    where = f"the {destination} on the table" if destination else "the table"
    if holding:
        observation = f"the gripper holds the {target}; {where}"
    elif released and destination:
        observation = f"the {target} is on the {destination}; the gripper is open"
    else:
        observation = f"the {target} on the table" + (f", the {destination} too" if destination else "") + (
            "; the gripper is open" if is_open else "; the gripper is closed")
    following = runs[current + 1][1] if current + 1 < len(runs) else None
    situation = f"{phase} phase; " + (f"next {following}" if following else "last phase")
    goal = destination if holding and destination else target
    positions = {str(o.get("name")): o.get("position") for o in meta.get("objects", [])
                 if isinstance(o, dict) and o.get("name") and o.get("position") is not None}
    gripper = meta.get("gripper_position")
    if gripper is not None and positions.get(goal) is not None:
        offset = np.asarray(positions[goal], np.float64)[:3] - np.asarray(gripper, np.float64)[:3]
        if holding:
            offset[2] = 0.0  # a held object is below the fingers by construction: only where to carry it
        words = [pair[0 if v > 0 else 1] for v, pair in zip(offset, _COMPACT_WORDS) if abs(v) >= _NEAR]
    else:  # no positions: the motion still to come until the next gripper change
        opened = gripper_open(actions)
        end = next((k for k in range(t + 1, len(actions)) if opened[k] != opened[t]), len(actions))
        words = _direction_words(actions[t:end, :3].sum(axis=0))
    spatial = f"the {goal} is " + (" ".join(words) if words else "at the gripper")
    plan = [f"reach the {target}", f"grasp the {target}"]
    plan += [f"carry it to the {destination}", "release it"] if destination else [f"lift the {target}"]
    return Reasoning(observation=observation, situation_analysis=situation, spatial_reasoning=spatial,
                     task_planning=TaskPlanning(logical_steps=plan,
                                                sub_action=current_sub_actions(actions)[t]))
