"""The teacher contract: a step's frames + instruction in, structured reasoning out.

`annotate` is async so the annotation pipeline can keep many requests in flight; a teacher
without real I/O simply returns. `identity` (teacher, model, prompt version) keys the cache:
changing any of them means the cached answers no longer apply.

A teacher may also offer a batch API (`Teacher.batch`, a `BatchTeacher`): many requests
submitted as one asynchronous job, answered later at a lower price. The pipeline uses it when
present (see `refine_core.annotate.batch`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refine_core.reasoning import Reasoning


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
    # The whole episode's actions [T, 7] (teachers that reason from the trajectory use it).
    episode_actions: np.ndarray | None = None


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0

    def cost(self, usage: TokenUsage) -> float:
        return (
            usage.input_tokens * self.input_per_million + usage.output_tokens * self.output_per_million
        ) / 1e6


class TeacherError(Exception):
    """A teacher could not answer one request. The pipeline decides what happens next."""


class TransientTeacherError(TeacherError):
    """Worth asking again later: rate limited (429), server error (5xx), timeout, lost connection.

    `retry_after` (seconds) is the server's Retry-After when it sent one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class MalformedAnswer(TeacherError):
    """The teacher answered, but not with usable reasoning (bad JSON, a missing section,
    no candidates). The same request is asked again a bounded number of times."""


class PermanentTeacherError(TeacherError):
    """This request cannot succeed (e.g. 400 Bad Request, content refused): recorded as failed."""


@dataclass(frozen=True)
class Annotation:
    reasoning: Reasoning
    usage: TokenUsage = TokenUsage()


class Teacher(ABC):
    @property
    @abstractmethod
    def identity(self) -> TeacherIdentity:
        """Who answers and with which prompt (the cache key)."""

    # False for teachers whose answers cost nothing or depend on more than image + instruction
    # (the content cache keys on those only).
    cacheable: bool = True

    @property
    def price(self) -> Price:
        """What one million tokens cost with this teacher's model (zero: free or unknown)."""
        return Price()

    def estimate_usage(self, request: AnnotationRequest) -> TokenUsage:
        """A rough token count for one request, for `--dry-run` and the tokens/min limiter.

        Default: the primary frame at 258 tokens (Gemini's count for an image up to 384 px;
        other providers' counts are of the same order), ~4 characters per text token for the
        instruction plus a ~1200-character prompt, ~350 output tokens.
        """
        return TokenUsage(input_tokens=258 + (len(request.instruction) + 1200) // 4, output_tokens=350)

    @property
    def batch(self) -> "BatchTeacher | None":
        """This teacher's batch API when it is to be used (e.g. a `mode: batch` option); None: online."""
        return None

    @abstractmethod
    async def annotate(self, request: AnnotationRequest) -> Annotation:
        """Reasoning for one step.

        Raise `TransientTeacherError` (retried with backoff), `MalformedAnswer` (asked again a
        few times) or `PermanentTeacherError` (recorded as failed); a `RefineError` such as a
        rejected API key stops the whole run.
        """


# -- optional: a batch API -------------------------------------------------------------------
BATCH_STATES = ("pending", "running", "succeeded", "failed", "cancelled", "expired")


@dataclass(frozen=True)
class BatchStatus:
    """Where a submitted batch job stands.

    `state` is one of `BATCH_STATES`. When it is "succeeded", `results` holds one entry per
    submitted request, in submission order: an `Annotation`, or the `TeacherError` that says why
    that request got no usable answer. "failed", "cancelled" and "expired" end a job without
    answers; `message` says why when the vendor does.
    """

    state: str
    results: list[Annotation | TeacherError] | None = None
    message: str = ""

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled", "expired")


class BatchTeacher(ABC):
    """A teacher's batch API: submit many requests as one job, poll it until it ends.

    `submit` and `status` raise `TransientTeacherError` (the pipeline retries with backoff),
    `PermanentTeacherError` (the run stops with its message) or a `RefineError`.
    """

    max_requests: int = 100  # requests per job: the pipeline submits chunks of at most this many
    poll_interval: float = 30.0  # seconds between status checks
    price_factor: float = 0.5  # the batch price as a fraction of the online price

    @abstractmethod
    async def submit(self, requests: list[AnnotationRequest], label: str) -> str:
        """Submit one job (`label`: a unique name for it); returns the vendor's job name."""

    @abstractmethod
    async def status(self, job: str) -> BatchStatus:
        """The job's state, with every request's answer once it has succeeded."""
