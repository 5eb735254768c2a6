"""Trajectory decomposition: ask a teacher for an episode's VLM2VLA plan, check it, keep it.

A teacher that decomposes offers `async decompose(request, feedback=None) -> TrajectoryPlan`
(`feedback`: why its previous answer was refused, for the re-ask). `decompose_with_retries`
validates every answer against the action log (`refine_core.plan.validate_plan`); a mismatch is
re-asked with the mismatch as feedback up to `max_reasks` times, then the episode is rejected
with that reason. A transient failure (429, 5xx, timeout: `TransientTeacherError`) is asked again
after the reasoning path's backoff (`RetryPolicy`, honouring Retry-After); past its `max_retries` the
error propagates, leaving the episode unsettled for the next run. `PlanJournal` appends each
outcome to a JSON-lines file, fsynced, so an interrupted run resumes with the episodes it has not
settled.
"""
from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

from refine_core.annotate.asking import RetryPolicy
from refine_core.plan import TrajectoryPlan, TrajectoryRequest, validate_plan
from refine_core.teacher import MalformedAnswer, TransientTeacherError

# A whole trajectory's answer takes longer than one step's: a longer limit per attempt.
DECOMPOSE_POLICY = RetryPolicy(request_timeout=600.0)


class Decomposer(Protocol):
    async def decompose(self, request: TrajectoryRequest, feedback: str | None = None) -> TrajectoryPlan:
        ...


@dataclass
class DecompositionResult:
    episode_id: str
    plan: TrajectoryPlan | None
    attempts: int
    rejected: str | None = None  # why no plan was accepted

    def record(self) -> dict[str, Any]:
        return {"episode_id": self.episode_id, "attempts": self.attempts, "rejected": self.rejected,
                "plan": self.plan.model_dump() if self.plan is not None else None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "DecompositionResult":
        plan = TrajectoryPlan.model_validate(record["plan"]) if record.get("plan") is not None else None
        return cls(str(record["episode_id"]), plan, int(record["attempts"]), record.get("rejected"))


async def _ask(teacher: Decomposer, request: TrajectoryRequest, feedback: str | None,
               policy: RetryPolicy) -> TrajectoryPlan:
    """One answer, transient failures asked again with `policy`'s backoff."""
    retries = 0
    while True:
        try:
            call = teacher.decompose(request, feedback)
            return await (asyncio.wait_for(call, policy.request_timeout) if policy.request_timeout else call)
        except (TimeoutError, asyncio.TimeoutError):
            error = TransientTeacherError(f"no answer within {policy.request_timeout:g} s")
        except TransientTeacherError as exc:
            error = exc
        if retries >= policy.max_retries:
            raise error
        await asyncio.sleep(policy.delay(retries, error.retry_after))
        retries += 1


async def decompose_with_retries(teacher: Decomposer, request: TrajectoryRequest, max_reasks: int = 1,
                                 tolerance: float | None = None,
                                 policy: RetryPolicy = DECOMPOSE_POLICY) -> DecompositionResult:
    """Ask, validate, re-ask on a mismatch or a malformed answer; reject after `max_reasks` re-asks."""
    feedback: str | None = None
    for attempt in range(1, max_reasks + 2):
        try:
            plan = await _ask(teacher, request, feedback, policy)
        except MalformedAnswer as exc:
            feedback = f"the answer was not a valid plan: {exc}"
            continue
        mismatch = validate_plan(plan, request.action_log(), tolerance)
        if mismatch is None:
            return DecompositionResult(request.episode_id, plan, attempt)
        feedback = (f"the concatenated actions do not reproduce the action log at {mismatch}. Split the "
                    "log itself: every row once, in order")
    return DecompositionResult(request.episode_id, None, max_reasks + 1, rejected=feedback)


@dataclass
class DecompositionReport:
    plans: dict[str, TrajectoryPlan] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # episode id -> reason
    resumed: int = 0  # episodes settled by an earlier run


class PlanJournal:
    """Append-only JSON lines, one settled episode a line; the last line wins for an episode."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def read(self) -> dict[str, DecompositionResult]:
        out: dict[str, DecompositionResult] = {}
        if not self.path.exists():
            return out
        for line in self.path.read_text().splitlines():
            try:
                result = DecompositionResult.from_record(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line was never acknowledged
            out[result.episode_id] = result
        return out

    def append(self, result: DecompositionResult) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab+") as handle:
            torn = False
            if handle.seek(0, os.SEEK_END) > 0:
                handle.seek(-1, os.SEEK_END)
                torn = handle.read(1) != b"\n"
            # a killed run may have left half a line: end it, or this record would join it
            handle.write((b"\n" if torn else b"") + (json.dumps(result.record()) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())


async def decompose_episodes(teacher: Decomposer, requests: Iterable[TrajectoryRequest],
                             journal: PlanJournal | None = None, max_reasks: int = 1,
                             retry_rejected: bool = False,
                             policy: RetryPolicy = DECOMPOSE_POLICY) -> DecompositionReport:
    """Every request's plan (sequentially), skipping episodes the journal already settled
    (rejected ones too, unless `retry_rejected`)."""
    report = DecompositionReport()
    done = journal.read() if journal is not None else {}
    for request in requests:
        result = done.get(request.episode_id)
        if result is not None and (result.plan is not None or not retry_rejected):
            report.resumed += 1
        else:
            result = await decompose_with_retries(teacher, request, max_reasks, policy=policy)
            if journal is not None:
                journal.append(result)
        if result.plan is not None:
            report.plans[request.episode_id] = result.plan
        else:
            report.rejected[request.episode_id] = result.rejected or "rejected"
    return report
