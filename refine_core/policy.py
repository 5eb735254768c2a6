"""The closed-loop Policy: a trained backbone acting, step after step, in one or many sessions.

    policy = Policy.from_checkpoint("runs/x/train", PolicySettings(reasoning="every_k", every=5))
    session = policy.reset("put the red block on the blue plate")
    chunk = policy.act(session, frame)              # ActionChunk: actions [n, 7], reasoning, latency…
    chunks = policy.act_batch(sessions, frames)     # one batched generation for many sessions

Actions are in refine's convention ([dx, dy, dz, droll, dpitch, dyaw, gripper], gripper 1 = open);
an environment's own convention is an embodiment adapter's business. A query returns the first
`actions_per_query` steps of the predicted chunk (default: the whole chunk, SpatialVLA's 4 steps,
one step for OpenVLA-style bins).

Reasoning modes (ReFineVLA reasons at every step; Embodied-CoT's `max_freezing_time` and
Fast-ECoT reuse a plan):
- `every_step`: reasoning then actions at every query (`reason_then_act`), or actions then
  reasoning (`act_then_reason`, the actions are decoded first and do not wait for it);
- `every_k`: fresh reasoning every `every` queries of a session; in between the last reasoning is
  fed back as a forced prefix and only the action span is generated;
- `never`: the action span straight after the prompt (what training with reasoning dropout teaches).
A query that reasons starts with the reasoning format's opening tag forced (`<Observation>:`): a
model trained with reasoning dropout would otherwise often act at once and never reason.
Decoding guards: at most `max_reasoning_tokens` of reasoning; a repetition guard ends reasoning
that loops (its last `repetition_ngram` tokens seen `repetition_limit` times); the action span is
decoded under the codec's constraints, so it always decodes. When free reasoning never reaches a
valid span, the span is generated after it under the constraints and the chunk is marked `forced`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from refine_core.action_codec import ActionDecodeError
from refine_core.backbone import Backbone
from refine_core.data.reasoning_formats import get_reasoning_format
from refine_core.episode import ACTION_DIM, GRIPPER

ReasoningMode = Literal["every_step", "every_k", "never"]


class PolicySettings(BaseModel):
    """How a policy acts (`policy.*` in a run config, `--set policy.*` for `refine serve`)."""

    model_config = ConfigDict(extra="forbid")

    reasoning: ReasoningMode = "every_step"
    every: int = Field(5, ge=1, description="every_k: queries between fresh reasonings (K).")
    order: Literal["reason_then_act", "act_then_reason"] | None = Field(
        None, description="Unset: the order the checkpoint was trained with.")
    max_reasoning_tokens: int = Field(256, ge=1)
    repetition_ngram: int = Field(6, ge=1,
                                  description="Length of the repeated token run the guard looks for.")
    repetition_limit: int = Field(3, ge=2, description="Occurrences of that run that end the reasoning.")
    constrain_actions: bool = Field(True,
                                    description="Decode the action span under the codec's id constraints.")
    actions_per_query: int | None = Field(None, ge=1, description="Steps of each predicted chunk to execute; "
                                                                  "unset: the whole chunk.")


@dataclass
class ActionChunk:
    """What one query of one session produced."""

    actions: np.ndarray  # [n, 7] float32, refine's convention; a hold action when `error` is set
    reasoning: str | None  # the reasoning the actions were conditioned on (or followed by)
    reasoning_reused: bool  # every_k: the reasoning is an earlier query's
    tokens_generated: int
    latency_s: float  # wall time of the (batched) generation this query was part of
    batch_size: int
    forced: bool = False  # free reasoning never reached a valid span: the span was generated after it
    repetition_stopped: bool = False  # the repetition guard ended the reasoning
    error: str | None = None  # the span did not decode (codecs without reserved ids only)
    # seconds per generation stage this query took part in (the hierarchical policy's subtasks, plan,
    # actions, verify), each the wall time of its batched call
    stage_latency_s: dict[str, float] = field(default_factory=dict)
    decomposition: str | None = None  # the subtask list predicted at this query (hierarchical policy)


@dataclass
class PolicySession:
    """One episode's state: its instruction and the reasoning every_k reuses."""

    instruction: str
    queries: int = 0
    reasoning_ids: list[int] | None = None
    reasoning_text: str | None = None
    since_reasoning: int = 0  # queries answered with the stored reasoning, itself included
    gripper: float = 1.0  # last commanded opening (what a hold action keeps)


@dataclass
class _Row:
    """One session's work within a batch."""

    index: int
    session: PolicySession
    image: np.ndarray
    fresh: bool  # this query reasons anew
    prefix: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    reasoning_ids: list[int] = field(default_factory=list)
    action_ids: list[int] = field(default_factory=list)
    forced: bool = False
    repetition_stopped: bool = False


class Policy:
    def __init__(self, backbone: Backbone, settings: PolicySettings | None = None,
                 trained_order: str = "reason_then_act", reasoning_format: str = "refinevla"):
        if getattr(backbone, "codec", None) is None:
            raise ValueError("the backbone has no action codec attached: load a trained checkpoint")
        self.backbone = backbone
        self.settings = settings or PolicySettings()
        self.order = self.settings.order or trained_order
        self.codec = backbone.codec
        self.span = self.codec.span_length
        self.constraint = backbone.action_constraint() if self.settings.constrain_actions else None
        # forced where reasoning starts: a model trained with reasoning dropout may otherwise act at once
        self.opening = backbone.reasoning_ids(get_reasoning_format(reasoning_format).opening)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, settings: PolicySettings | None = None,
                        registry: Any = None) -> "Policy":
        """A checkpoint (`step-*`, a training OUT or a run directory) as a policy on the CPU; move it
        with `policy.backbone.model.to(device)`."""
        from refine_core.training.checkpoint import load_checkpoint

        directory = Path(checkpoint)
        if (directory / "train").is_dir() and not (directory / "checkpoints").is_dir():
            directory = directory / "train"  # a `refine run` directory
        backbone, config = load_checkpoint(directory, registry)
        return cls(backbone, settings, trained_order=config.train.reasoning_order,
                   reasoning_format=config.train.reasoning_format)

    @property
    def actions_per_query(self) -> int:
        return min(self.settings.actions_per_query or self.codec.chunk_size, self.codec.chunk_size)

    def describe(self) -> dict[str, Any]:
        """What a result record needs to say how this policy acted."""
        return {"backbone": self.backbone.name, "codec": self.codec.name,
                "reasoning": self.settings.reasoning,
                "every": self.settings.every, "order": self.order,
                "actions_per_query": self.actions_per_query,
                "chunk_size": self.codec.chunk_size,
                "max_reasoning_tokens": self.settings.max_reasoning_tokens,
                "constrain_actions": self.settings.constrain_actions}

    # -- sessions -----------------------------------------------------------------------------
    def reset(self, instruction: str) -> PolicySession:
        """A new session (an episode) for `instruction`."""
        if not instruction or not instruction.strip():
            raise ValueError("an instruction is needed to act")
        return PolicySession(instruction=instruction)

    def act(self, session: PolicySession, image: np.ndarray) -> ActionChunk:
        return self.act_batch([session], [image])[0]

    def act_batch(self, sessions: Sequence[PolicySession], images: Sequence[np.ndarray],
                  observations: Sequence[Any] | None = None) -> list[ActionChunk]:
        """One query for each session, generated together: equal to `act` on each alone.
        (`observations`, the served ones, are for scripted policies; a model sees the image.)"""
        for image in images:
            _check_image(image)
        start = time.perf_counter()
        rows = [_Row(i, s, im, fresh=self._reasons_now(s)) for i, (s, im) in enumerate(zip(sessions, images))]
        if self.order == "reason_then_act":
            self._reason_then_act(rows)
        else:
            self._act_then_reason(rows)
        latency = time.perf_counter() - start
        return [self._finish(row, latency, len(rows)) for row in rows]

    def _reasons_now(self, session: PolicySession) -> bool:
        mode = self.settings.reasoning
        if mode == "never":
            return False
        if mode == "every_k" and session.reasoning_ids is not None:
            return session.since_reasoning >= self.settings.every
        return True

    # -- generation -----------------------------------------------------------------------------
    def _generate(self, rows: list[_Row], max_new_tokens: int, constrained: bool,
                  guard: bool = False) -> None:
        if not rows:
            return
        new = self.backbone.generate_ids_batch(
            [r.image for r in rows], [r.session.instruction for r in rows], max_new_tokens,
            [r.prefix for r in rows], allowed=self.constraint if constrained else None,
            stop=self._repetition_guard(rows) if guard else None)
        for row, ids in zip(rows, new):
            row.generated += ids

    def _reason_then_act(self, rows: list[_Row]) -> None:
        fresh = [r for r in rows if r.fresh]
        for row in fresh:
            row.prefix = list(self.opening)
        self._generate(fresh, self.settings.max_reasoning_tokens + (self.span or 0), constrained=False,
                       guard=True)
        spans = []
        for row in rows:
            if row.fresh:
                reasoning, row.action_ids = self.backbone.split_generated(row.generated)
                row.reasoning_ids = list(self.opening) + reasoning
                if self.constraint is not None and not self.backbone.decodes(row.action_ids):
                    row.forced, row.prefix, row.action_ids = True, list(row.reasoning_ids), []
                    spans.append(row)
            else:  # every_k between reasonings: the stored reasoning as a forced prefix; never: none
                reused = self.settings.reasoning == "every_k" and row.session.reasoning_ids is not None
                row.prefix = list(row.session.reasoning_ids) if reused else []
                spans.append(row)
        before = {id(r): len(r.generated) for r in spans}
        self._generate(spans, self.span or self.settings.max_reasoning_tokens, constrained=True)
        for row in spans:
            row.action_ids = row.generated[before[id(row)]:][: self.span or None]

    def _act_then_reason(self, rows: list[_Row]) -> None:
        self._generate(rows, self.span or self.settings.max_reasoning_tokens, constrained=True)
        for row in rows:
            row.action_ids = row.generated[: self.span or None]
            row.prefix = list(row.action_ids) + list(self.opening)
        talkers = [r for r in rows if r.fresh]  # the reasoning that follows the actions, for the record
        self._generate(talkers, self.settings.max_reasoning_tokens, constrained=False, guard=True)
        for row in talkers:
            row.reasoning_ids = list(self.opening) + row.generated[len(row.action_ids):]

    def _repetition_guard(self, rows: list[_Row]):
        n, limit = self.settings.repetition_ngram, self.settings.repetition_limit

        def stop(index: int, ids: list[int]) -> bool:
            if len(ids) < n * limit or self.codec.locate_actions(ids) is not None:
                return False  # too short to loop, or the action span has begun
            tail = ids[-n:]
            count = sum(1 for i in range(len(ids) - n + 1) if ids[i:i + n] == tail)
            if count >= limit:
                rows[index].repetition_stopped = True
                return True
            return False

        return stop

    # -- results --------------------------------------------------------------------------------
    def _finish(self, row: _Row, latency: float, batch_size: int) -> ActionChunk:
        session = row.session
        error = None
        try:
            chunk = np.asarray(self.codec.decode(row.action_ids), dtype=np.float32).reshape(-1, ACTION_DIM)
            actions = chunk[: self.actions_per_query]
        except ActionDecodeError as exc:  # only codecs without reserved ids: hold still, say why
            actions, error = self.hold(session), str(exc)
        reused = not row.fresh and self.settings.reasoning == "every_k" and session.reasoning_ids is not None
        text = None
        if row.fresh:  # an empty reasoning (the span came first) is still this query's, reused K times
            decoded = self.backbone.tokenizer.decode(row.reasoning_ids, skip_special_tokens=True)
            text = decoded.strip() or None if row.reasoning_ids else None
            session.reasoning_ids, session.reasoning_text = list(row.reasoning_ids), text
            session.since_reasoning = 1
        elif reused:
            text = session.reasoning_text
            session.since_reasoning += 1
        session.queries += 1
        session.gripper = float(actions[-1, GRIPPER])
        return ActionChunk(actions=actions, reasoning=text, reasoning_reused=reused,
                           tokens_generated=len(row.generated), latency_s=latency, batch_size=batch_size,
                           forced=row.forced, repetition_stopped=row.repetition_stopped, error=error)

    @staticmethod
    def hold(session: PolicySession) -> np.ndarray:
        """A do-nothing action: no motion, the gripper as last commanded."""
        action = np.zeros((1, ACTION_DIM), dtype=np.float32)
        action[0, GRIPPER] = session.gripper
        return action


def _check_image(image: Any) -> None:
    if not isinstance(image,
                      np.ndarray) or image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", type(image).__name__)
        dtype = getattr(image, "dtype", "")
        raise ValueError(f"the image must be an HxWx3 uint8 array, got {shape} {dtype}".rstrip())
