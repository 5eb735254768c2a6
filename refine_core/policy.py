"""Closed-loop policy over a backbone: observation + instruction → action chunk (+ reasoning).

Reasoning modes:
- `every_step`: generate reasoning then actions at every call (ReFineVLA at inference);
- `every_k`: full reasoning every k-th call; in between the last reasoning text is reused as a
  given prefix and only the action span is generated (the cached reasoning prefix);
- `never`: actions only (with `act_then_reason` training, the model was taught this order).
A decode failure is not a crash: the policy holds the previous action (or a no-op with the
gripper unchanged) and reports the error, so an episode can continue.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .backbone import Backbone, Prediction
from .codec import ActionDecodeError
from .episode import ACTION_DIM, GRIPPER

ReasoningMode = Literal["every_step", "every_k", "never"]


@dataclass
class PolicyOutput:
    actions: np.ndarray  # [chunk, 7], always executable
    reasoning: str | None
    reasoning_reused: bool
    error: str | None  # why the actions are a hold, if they are


class Policy:
    def __init__(self, backbone: Backbone, reasoning: ReasoningMode = "every_step", every_k: int = 5,
                 order: str = "reason_then_act", max_new_tokens: int = 256):
        if reasoning not in ("every_step", "every_k", "never"):
            raise ValueError(f"unknown reasoning mode {reasoning!r}; use every_step, every_k or never")
        self.backbone, self.mode, self.every_k = backbone, reasoning, max(1, every_k)
        self.order, self.max_new_tokens = order, max_new_tokens
        self.reset()

    def reset(self) -> None:
        """Start a new episode: forget the cached reasoning and the last action."""
        self.calls, self.cached_reasoning, self.last_actions = 0, None, None

    def _hold(self) -> np.ndarray:
        chunk = self.backbone.codec.chunk_size
        if self.last_actions is not None:
            hold = np.repeat(self.last_actions[-1:], chunk, axis=0).copy()
            hold[:, :GRIPPER] = 0.0  # stay still, keep the gripper as it was
            return hold
        hold = np.zeros((chunk, ACTION_DIM), dtype=np.float32)
        hold[:, GRIPPER] = 1.0
        return hold

    def act(self, image: np.ndarray, instruction: str) -> PolicyOutput:
        reuse = self.mode == "every_k" and self.cached_reasoning is not None and self.calls % self.every_k != 0
        self.calls += 1
        if reuse:
            prediction = self._actions_after(image, instruction, self.cached_reasoning)
        else:
            prediction = self.backbone.predict(image, instruction, reasoning=self.mode != "never", order=self.order,
                                               max_new_tokens=self.max_new_tokens)
            if prediction.reasoning:
                self.cached_reasoning = prediction.reasoning
        if prediction.actions is None:
            return PolicyOutput(self._hold(), prediction.reasoning, reuse, prediction.error)
        self.last_actions = prediction.actions
        return PolicyOutput(prediction.actions, prediction.reasoning or (self.cached_reasoning if reuse else None),
                            reuse, None)

    def _actions_after(self, image: np.ndarray, instruction: str, reasoning: str) -> Prediction:
        prefix = self.backbone.reasoning_ids(reasoning)
        span = self.backbone.codec.span_length or self.max_new_tokens
        ids = self.backbone.generate_ids(image, instruction, span, prefix_ids=prefix)
        start = self.backbone.codec.locate_actions(ids)
        action_ids = list(ids[start:]) if start is not None else list(ids)
        try:
            return Prediction(self.backbone.codec.decode(action_ids), None, list(ids), action_ids)
        except ActionDecodeError as exc:
            return Prediction(None, None, list(ids), action_ids, str(exc))
