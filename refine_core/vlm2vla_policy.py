"""VLM2VLA's hierarchical closed-loop policy: a fine-tuned VLM answers text questions about the frames.

    policy = HierarchicalPolicy(backbone, HierarchicalPolicySettings(verifier="model"))
    session = policy.reset("put the red block on the blue plate")
    chunk = policy.act(session, frame)     # ActionChunk with one action, like every query

A session asks the questions training taught (`refine_core.data.vlm2vla`, the same prompts):
1. first query: the subtask list, from the first frame (sampled; one retry hotter when it does not parse,
   then the instruction itself is the one subtask);
2. per cycle, for the current subtask: the motion plan (skipped with `with_plan` False, the NR ablation),
   then an action chunk `[[dx, dy, dz, g], …]` (malformed text is re-sampled up to `max_resamples`
   times, then the arm holds still for one step and the chunk says why);
3. the chunk's rows are executed one per query (`actions_per_query` = 1, so every step is an environment
   step), and once they are all done the verifier judges the subtask from the frame the chunk was planned
   on and the current one: complete → the next subtask; not complete → another cycle, at most
   `max_attempts` chunks per subtask before it moves on anyway; after the last subtask the arm holds.

Each query's model calls are batched over the sessions at the same stage (one generation per stage;
re-samples one more each). Every sampled generation is seeded from `seed`, the session's instruction and
how many generations that session has drawn, never its place in the batch, so acting on many sessions
together equals acting on each alone.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from refine_core.backbone import Backbone
from refine_core.data.vlm2vla import (actions_prompt, completion_prompt, format_subtasks, motion_prompt,
    parse_actions, parse_subtasks, subtasks_prompt)
from refine_core.episode import ACTION_DIM, GRIPPER
from refine_core.policy import ActionChunk, Policy, PolicySession, _check_image

STAGES = ("subtasks", "plan", "actions", "verify")


class HierarchicalPolicySettings(BaseModel):
    """How the hierarchical policy samples and when it moves on (VLM2VLA's inference loop)."""

    model_config = ConfigDict(extra="forbid")

    subtasks_temperature: float = Field(0.5, ge=0, description="Sampling temperature of the subtask list.")
    subtasks_retry_temperature: float = Field(1.0, ge=0,
                                              description="Temperature of the one retry of a list that "
                                                          "does not parse.")
    plan_temperature: float = Field(0.1, ge=0)
    actions_temperature: float = Field(0.5, ge=0)
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus of every sampled stage.")
    max_resamples: int = Field(3, ge=0, description="Re-samples of malformed action text before holding "
                                                    "still for one step.")
    max_attempts: int = Field(3, ge=1, description="Chunks per subtask without the verifier saying "
                                                   "complete before moving on anyway.")
    verifier: Literal["model", "scripted"] = Field(
        "model", description="model: the fine-tuned model answers the completion question; scripted: the "
                             "benchmark's verifier reads the simulator's state.")
    with_plan: bool = Field(True, description="False: actions straight from the subtask (NR ablation).")
    max_subtasks_tokens: int = Field(128, ge=1)
    max_plan_tokens: int = Field(96, ge=1)
    max_actions_tokens: int = Field(256, ge=1)
    max_verify_tokens: int = Field(4, ge=1)
    seed: int = Field(0, ge=0)


@dataclass
class VerifyRequest:
    instruction: str
    subtask: str
    before: np.ndarray  # the frame the chunk was planned on
    after: np.ndarray  # the frame after its last action
    observation: Any  # the served observation of `after` (a scripted verifier reads its state)


class Verifier(Protocol):
    def verify(self, instruction: str, subtask: str, before: np.ndarray, after: np.ndarray,
               observation: Any) -> bool:
        """Whether `subtask` is complete in `after`."""


class ModelVerifier:
    """The fine-tuned model's own answer to the completion question about the after frame (greedy)."""

    def __init__(self, backbone: Backbone, max_new_tokens: int = 4):
        self.backbone, self.max_new_tokens = backbone, max_new_tokens

    def verify(self, instruction: str, subtask: str, before: np.ndarray, after: np.ndarray,
               observation: Any = None) -> bool:
        return self.verify_batch([VerifyRequest(instruction, subtask, before, after, observation)])[0]

    def verify_batch(self, requests: Sequence[VerifyRequest]) -> list[bool]:
        prompts = [completion_prompt(r.instruction, r.subtask) for r in requests]
        ids = self.backbone.generate_ids_batch([r.after for r in requests], prompts, self.max_new_tokens)
        answers = [self.backbone.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        return [answer.strip().lower().startswith("yes") for answer in answers]


def verify_all(verifier: Any, requests: Sequence[VerifyRequest]) -> list[bool]:
    """One batched call where the verifier has `verify_batch`, else one call per request."""
    if not requests:
        return []
    if hasattr(verifier, "verify_batch"):
        return list(verifier.verify_batch(requests))
    return [bool(verifier.verify(r.instruction, r.subtask, r.before, r.after, r.observation))
            for r in requests]


@dataclass
class HierarchicalSession(PolicySession):
    """One episode's progress through its subtasks."""

    subtasks: list[str] | None = None
    index: int = 0  # the current subtask
    plan: str | None = None
    queue: list[np.ndarray] = field(default_factory=list)  # the chunk's actions still to execute
    before: np.ndarray | None = None  # the frame the queued chunk was planned on
    pending: bool = False  # a chunk was queued and awaits the verifier once executed
    attempts: int = 0  # chunks of the current subtask the verifier did not confirm
    draws: int = 0  # sampled generations so far: the next one's seed

    @property
    def finished(self) -> bool:
        return self.subtasks is not None and self.index >= len(self.subtasks)

    @property
    def subtask(self) -> str:
        return self.subtasks[self.index]


@dataclass
class _Row:
    session: HierarchicalSession
    image: np.ndarray
    observation: Any
    tokens: int = 0
    latency: dict[str, float] = field(default_factory=dict)
    drew: bool = False  # this query drew a plan and chunk (its reasoning is not an earlier query's)
    error: str | None = None
    decomposition: str | None = None  # the subtask list, on the query that predicted it

    def note(self, message: str) -> None:
        self.error = f"{self.error}; {message}" if self.error else message


class HierarchicalPolicy:
    """The Policy interface (`reset`, `act`, `act_batch`, `actions_per_query`, `describe`) over a
    backbone that answers VLM2VLA's questions; no action codec is needed."""

    actions_per_query = 1
    role = "model"

    def __init__(self, backbone: Backbone, settings: HierarchicalPolicySettings | None = None,
                 verifier: Verifier | None = None):
        self.backbone = backbone
        self.settings = settings or HierarchicalPolicySettings()
        if verifier is None and self.settings.verifier == "scripted":
            raise ValueError("verifier=scripted needs the benchmark's verifier object (a demo-sim run "
                             "passes it); use verifier=model to ask the fine-tuned model")
        self.verifier = verifier or ModelVerifier(backbone, self.settings.max_verify_tokens)

    def describe(self) -> dict[str, Any]:
        return {"policy": "hierarchical", "backbone": self.backbone.name,
                "actions_per_query": self.actions_per_query, **self.settings.model_dump()}

    def reset(self, instruction: str) -> HierarchicalSession:
        if not instruction or not instruction.strip():
            raise ValueError("an instruction is needed to act")
        return HierarchicalSession(instruction=instruction)

    def act(self, session: HierarchicalSession, image: np.ndarray, observation: Any = None) -> ActionChunk:
        return self.act_batch([session], [image], [observation])[0]

    def act_batch(self, sessions: Sequence[HierarchicalSession], images: Sequence[np.ndarray],
                  observations: Sequence[Any] | None = None) -> list[ActionChunk]:
        """One query for each session (one action each); equal to `act` on each alone."""
        for image in images:
            _check_image(image)
        start = time.perf_counter()
        rows = [_Row(s, im, observations[i] if observations else None)
                for i, (s, im) in enumerate(zip(sessions, images))]
        self._subtasks([r for r in rows if r.session.subtasks is None])
        self._verify([r for r in rows if r.session.pending and not r.session.queue])
        planners = [r for r in rows if not r.session.queue and not r.session.finished]
        if self.settings.with_plan:
            self._plan(planners)
        self._actions(planners)
        latency = time.perf_counter() - start
        return [self._finish(row, latency, len(rows)) for row in rows]

    # -- stages ---------------------------------------------------------------------------------
    def _sample(self, rows: list[_Row], stage: str, prompts: list[str], temperature: float,
                max_new_tokens: int) -> list[str]:
        """One batched generation for `rows`, each row seeded from its own session's history."""
        seeds = []
        for row in rows:
            words = [self.settings.seed, zlib.crc32(row.session.instruction.encode()), row.session.draws]
            seeds.append(int(np.random.SeedSequence(words).generate_state(1)[0]))
            row.session.draws += 1
        started = time.perf_counter()
        ids = self.backbone.sample_ids_batch([r.image for r in rows], prompts, max_new_tokens, temperature,
                                             self.settings.top_p, seeds)
        elapsed = time.perf_counter() - started
        for row, new in zip(rows, ids):
            row.tokens += len(new)
            row.latency[stage] = row.latency.get(stage, 0.0) + elapsed
        # the stage names the task ("actions": a codec may write it with its own ids, Backbone.answer_ids)
        return [self.backbone.answer_text(new, stage).strip() for new in ids]

    def _subtasks(self, rows: list[_Row]) -> None:
        waiting, temperature = rows, self.settings.subtasks_temperature
        for _ in range(2):  # one retry, hotter, for lists that do not parse
            if not waiting:
                break
            prompts = [subtasks_prompt(r.session.instruction) for r in waiting]
            texts = self._sample(waiting, "subtasks", prompts, temperature, self.settings.max_subtasks_tokens)
            for row, text in zip(waiting, texts):
                row.session.subtasks = parse_subtasks(text) or None
            waiting = [r for r in waiting if r.session.subtasks is None]
            temperature = self.settings.subtasks_retry_temperature
        for row in waiting:  # still no list: act on the instruction as a whole
            row.session.subtasks = [" ".join(row.session.instruction.split())]
            row.note("the subtask list did not parse twice: the instruction is the one subtask")
        unparsed = {id(row) for row in waiting}
        for row in rows:  # what the task-decomposition score judges (the fallback names nothing of its own)
            row.decomposition = "" if id(row) in unparsed else format_subtasks(row.session.subtasks)

    def _verify(self, rows: list[_Row]) -> None:
        if not rows:
            return
        started = time.perf_counter()
        done = verify_all(self.verifier, [VerifyRequest(r.session.instruction, r.session.subtask,
                                                        r.session.before, r.image, r.observation)
                                          for r in rows])
        elapsed = time.perf_counter() - started
        for row, complete in zip(rows, done):
            session = row.session
            row.latency["verify"] = row.latency.get("verify", 0.0) + elapsed
            session.pending, session.attempts = False, session.attempts + (not complete)
            if complete or session.attempts >= self.settings.max_attempts:
                session.index, session.attempts, session.plan = session.index + 1, 0, None

    def _plan(self, rows: list[_Row]) -> None:
        if not rows:
            return
        texts = self._sample(rows, "plan", [motion_prompt(r.session.instruction, r.session.subtask)
                                            for r in rows],
                             self.settings.plan_temperature, self.settings.max_plan_tokens)
        for row, text in zip(rows, texts):
            row.session.plan = text

    def _actions(self, rows: list[_Row]) -> None:
        waiting, last_error = rows, {}
        for row in rows:
            row.drew = True
        for _ in range(1 + self.settings.max_resamples):
            if not waiting:
                return
            plans = [r.session.plan if self.settings.with_plan else None for r in waiting]
            texts = self._sample(waiting, "actions",
                                 [actions_prompt(r.session.instruction, r.session.subtask, plan)
                                  for r, plan in zip(waiting, plans)],
                                 self.settings.actions_temperature, self.settings.max_actions_tokens)
            failed = []
            for row, text in zip(waiting, texts):
                try:
                    values = parse_actions(text)
                except ValueError as exc:
                    last_error[id(row)] = str(exc)
                    failed.append(row)
                    continue
                session = row.session
                session.queue = [_action(v) for v in values]
                session.before, session.pending = row.image, True
            waiting = failed
        for row in waiting:
            row.note(f"{1 + self.settings.max_resamples} samples of the action text did not parse "
                     f"(last: {last_error[id(row)]}): holding still for one step")

    # -- results --------------------------------------------------------------------------------
    def _finish(self, row: _Row, latency: float, batch_size: int) -> ActionChunk:
        session = row.session
        # every subtask done, or no chunk parsed: stay put
        actions = session.queue.pop(0)[None] if session.queue else self.hold(session)
        reasoning = None
        if not session.finished:
            reasoning = f"Subtask: {session.subtask}" + (f"\nPlan: {session.plan}" if session.plan else "")
        session.queries += 1
        session.gripper = float(actions[-1, GRIPPER])
        return ActionChunk(actions=actions, reasoning=reasoning,
                           reasoning_reused=reasoning is not None and not row.drew,
                           tokens_generated=row.tokens, latency_s=latency, batch_size=batch_size,
                           error=row.error, stage_latency_s=dict(row.latency),
                           decomposition=row.decomposition)

    hold = staticmethod(Policy.hold)


def _action(values: np.ndarray) -> np.ndarray:
    """A `[dx, dy, dz, g]` row as refine's 7-D action (no rotation)."""
    action = np.zeros(ACTION_DIM, dtype=np.float32)
    action[:3], action[GRIPPER] = values[:3], values[3]
    return action
