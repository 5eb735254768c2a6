"""The teacher contract: a step's frames + instruction in, structured reasoning out.

`annotate` is async so the annotation pipeline can keep many requests in flight; a teacher
without real I/O simply returns. `identity` (teacher, model, prompt version) keys the cache:
changing any of them means the cached answers no longer apply.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .reasoning import Reasoning


@dataclass(frozen=True)
class TeacherIdentity:
    teacher: str
    model: str
    prompt_version: str

    def key(self) -> str:
        return f"{self.teacher}/{self.model}/{self.prompt_version}"


@dataclass
class AnnotationRequest:
    """One step to annotate: what the teacher may look at."""

    instruction: str
    images: dict[str, np.ndarray]
    primary_camera: str
    episode_id: str = ""
    step_index: int = 0
    action: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class Annotation:
    reasoning: Reasoning
    usage: TokenUsage = TokenUsage()


class Teacher(ABC):
    @property
    @abstractmethod
    def identity(self) -> TeacherIdentity:
        """Who answers and with which prompt (the cache key)."""

    @abstractmethod
    async def annotate(self, request: AnnotationRequest) -> Annotation:
        """Reasoning for one step; raise on failure (the pipeline retries and records it)."""
