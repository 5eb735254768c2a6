"""Scripted policies a closed-loop table shows beside the model, acting through the same server: a
success rate means something only next to what doing nothing and acting at random achieve (and,
where a simulator offers one, a scripted expert that reads the scene's state).

They have the Policy's interface (`reset`, `act`, `act_batch`, `actions_per_query`, `describe`);
`ScriptedPolicy` is the base a plugin's scripted policy (e.g. the demo's expert) extends.
"""
from __future__ import annotations

import time
import zlib
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from refine_core.episode import ACTION_DIM, GRIPPER
from refine_core.policy import ActionChunk, PolicySession, _check_image
from refine_core.statistics import Statistics


class ScriptedPolicy(ABC):
    """One action per query from `action(session, observation)` (the observation is the served
    one, e.g. vla-eval's dict: a scripted policy may read more than the image)."""

    name = "scripted"
    role = "baseline"  # how a results table reads it: a floor to clear ("reference": a ceiling)
    actions_per_query = 1

    def reset(self, instruction: str) -> PolicySession:
        return PolicySession(instruction=instruction)

    def act(self, session: PolicySession, image: np.ndarray) -> ActionChunk:
        return self.act_batch([session], [image])[0]

    def act_batch(self, sessions: Sequence[PolicySession], images: Sequence[np.ndarray],
                  observations: Sequence[Any] | None = None) -> list[ActionChunk]:
        start = time.perf_counter()
        out = []
        for i, (session, image) in enumerate(zip(sessions, images)):
            _check_image(image)
            action = np.asarray(self.action(session, observations[i] if observations else None), np.float32)
            session.queries += 1
            session.gripper = float(action[GRIPPER])
            out.append(ActionChunk(actions=action[None], reasoning=None, reasoning_reused=False,
                                   tokens_generated=0, latency_s=0.0, batch_size=len(sessions)))
        latency = time.perf_counter() - start
        for chunk in out:
            chunk.latency_s = latency
        return out

    @abstractmethod
    def action(self, session: PolicySession, observation: Any) -> np.ndarray:
        """float32[7] in refine's convention."""

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "role": self.role, "actions_per_query": self.actions_per_query}


class DoNothingPolicy(ScriptedPolicy):
    """No motion, gripper open: the floor a learnt policy must clear."""

    name = "do-nothing"

    def action(self, session: PolicySession, observation: Any = None) -> np.ndarray:
        action = np.zeros(ACTION_DIM, dtype=np.float32)
        action[GRIPPER] = 1.0
        return action


class RandomPolicy(ScriptedPolicy):
    """Each dimension uniform over the training data's q01..q99, the gripper open or closed at
    random; seeded per session by its instruction and query count, so reruns repeat it."""

    name = "random"

    def __init__(self, stats: Statistics, seed: int = 0):
        self.low, self.high = np.asarray(stats.q01, np.float64), np.asarray(stats.q99, np.float64)
        self.seed = seed

    def action(self, session: PolicySession, observation: Any = None) -> np.ndarray:
        rng = np.random.default_rng([self.seed, zlib.crc32(session.instruction.encode()), session.queries])
        action = rng.uniform(self.low, self.high).astype(np.float32)
        action[GRIPPER] = float(rng.integers(0, 2))
        return action

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "low": self.low.tolist(), "high": self.high.tolist(), "seed": self.seed}
