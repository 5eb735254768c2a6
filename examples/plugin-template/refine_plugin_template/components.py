"""The components the template registers. Factories receive their validated options model."""
from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np

from refine_core import (Annotation, AnnotationRequest, DatasetStatistics, Episode, Reasoning,
                         RobotDataset, Statistics, Step, TaskPlanning, Teacher, TeacherIdentity)


def fixed_reasoning(sub_action: str) -> Reasoning:
    return Reasoning(
        observation="A robot arm above a table.",
        situation_analysis="The task has not started.",
        spatial_reasoning="The target is in front of the gripper.",
        task_planning=TaskPlanning(logical_steps=["Approach the target.", "Finish the task."],
                                   sub_action=sub_action),
    )


class FixedTeacher(Teacher):
    def __init__(self, options) -> None:
        self.reasoning = fixed_reasoning(options.sub_action)

    @property
    def identity(self) -> TeacherIdentity:
        return TeacherIdentity(teacher="template-fixed", model="none", prompt_version="1")

    async def annotate(self, request: AnnotationRequest) -> Annotation:
        return Annotation(reasoning=self.reasoning)


class LineDataset(RobotDataset):
    name = "template-line"
    robot = "template-arm"
    control_frequency = 5.0
    cameras = ("front",)

    def __init__(self, options) -> None:
        self.options = options

    @property
    def identity(self) -> str:
        o = self.options
        return (
            "template-line-"
            + hashlib.sha1(f"{o.episodes}-{o.steps}-{o.image_size}".encode()).hexdigest()[:12]
        )

    def episodes(self, split: str = "train") -> Iterator[Episode]:
        o = self.options
        for e in range(o.episodes):
            steps = []
            for t in range(o.steps):
                frame = np.zeros((o.image_size, o.image_size, 3), dtype=np.uint8)
                frame[:, min(t * o.image_size // o.steps, o.image_size - 1)] = (255, 0, 0)
                action = np.array([0.01 * (e + 1), 0, 0, 0, 0, 0, 1.0 if t < o.steps - 1 else 0.0])
                steps.append(Step(images={"front": frame}, instruction="slide the gripper right",
                                  action=action, primary_camera="front", episode_id=f"{split}-{e}",
                                  step_index=t, is_first=t == 0, is_last=t == o.steps - 1))
            yield Episode(episode_id=f"{split}-{e}", steps=steps)

    def statistics(self) -> DatasetStatistics:
        episodes = list(self.episodes())
        actions = np.concatenate([ep.actions() for ep in episodes])
        mask = np.array([True] * 6 + [False])
        return DatasetStatistics(action=Statistics.from_array(actions, mask=mask), num_episodes=len(episodes),
                                 num_steps=len(actions), num_instructions=1)
