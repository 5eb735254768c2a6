"""A refine Policy behind vla-eval's model-server protocol (websockets + msgpack).

vla-eval's `PredictModelServer` does the protocol, the `/health` endpoint, the batching of
concurrent sessions (`max_batch_size`: one `predict_batch` over the observations waiting) and
runs inference in a worker thread, so a long batch never blocks health checks or new sessions.
This class adds what refine needs around it:
- one `PolicySession` per vla-eval session, reset at each episode start (or when the instruction
  changes), so every_k reasoning never leaks from one episode into the next;
- observations checked before they join a batch: a bad one (no image, wrong shape or dtype, no
  instruction) is answered with an error for its own session while the others are served;
- chunks: the policy's `actions_per_query` steps go to vla-eval's chunk buffer, which executes
  them one per environment step before the next query;
- a record per episode (queries, actions, latency per action, tokens, forced spans, a reasoning
  sample), keyed by vla-eval's (session, episode) ids so results can be joined with them;
- the policy's description in the HELLO reply (as the description of an extra action-spec
  component, `refine`), which vla-eval stores with every result as `server_info`;
- the environment's rotation convention: refine's actions carry roll/pitch/yaw deltas; a benchmark
  whose controller reads a rotation vector (SimplerEnv's, through vla-eval's SimplerEnvBenchmark)
  gets `rotation="axis_angle"`: the extrinsic-xyz Euler delta as axis × angle, converted with
  vla-eval's own rotation functions (the conversion SimplerEnv's reference policies make with
  transforms3d's euler2axangle). The gripper stays 1 open / 0 closed: vla-eval's benchmarks map
  it to their robot's (WidowX ±1, Google Robot relative with its sticky repeat).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vla_eval.model_servers.predict import PredictModelServer
from vla_eval.specs import GRIPPER_01, IMAGE_RGB, LANGUAGE, DimSpec

from refine_core.policy import PolicySession, _check_image

Rotation = Literal["rpy", "axis_angle"]

# refine's action convention, as vla-eval describes conventions
ACTION_SPEC = {
    "position": DimSpec("position", 3, "delta_xyz", description="metres per step; x forward, y left, z up"),
    "rotation": DimSpec("rotation", 3, "delta_rpy", description="radians per step: roll, pitch, yaw"),
    "gripper": DimSpec(GRIPPER_01.name, 1, "binary_open_01", (0, 1), description="1 open, 0 closed"),
}


class PolicyModelServer(PredictModelServer):
    """Serve `policy` (a `refine_core.policy.Policy` or a baseline with its interface)."""

    def __init__(self, policy: Any, max_batch_size: int = 8, max_wait_time: float = 0.005,
                 camera: str | None = None, log_path: str | Path | None = None,
                 metadata: dict[str, Any] | None = None, rotation: Rotation = "rpy"):
        super().__init__(chunk_size=policy.actions_per_query, max_batch_size=max_batch_size,
                         max_wait_time=max_wait_time)
        self.policy, self.camera, self.rotation = policy, camera, rotation
        self.metadata = {**policy.describe(), "rotation": rotation, **(metadata or {})}
        self.log_path = Path(log_path) if log_path else None
        self.sessions: dict[str, PolicySession] = {}
        self.episodes: dict[str, dict[str, Any]] = {}  # live episode records, by session id
        self.finished: list[dict[str, Any]] = []  # records of ended episodes, in order
        self._lock = threading.Lock()  # predict runs in a worker thread, episode events on the loop

    # -- protocol ----------------------------------------------------------------------------
    def get_action_spec(self) -> dict[str, DimSpec]:
        info = DimSpec("refine", 0, "metadata", description=json.dumps(self.metadata, sort_keys=True))
        spec = dict(ACTION_SPEC)
        if self.rotation == "axis_angle":
            spec["rotation"] = DimSpec("rotation", 3, "delta_axis_angle",
                                       description="radians: rotation axis × angle per step")
        return {**spec, "refine": info}

    def get_observation_spec(self) -> dict[str, DimSpec]:
        # vla-eval's benchmarks key frames by camera name; "image" (its model servers' word) when
        # none is configured and the first frame is taken
        return {self.camera or "image": IMAGE_RGB, "language": LANGUAGE}

    async def on_episode_start(self, config: dict[str, Any], ctx: Any) -> None:
        await super().on_episode_start(config, ctx)
        with self._lock:
            self.sessions.pop(ctx.session_id, None)
            self.episodes[ctx.session_id] = {
                "sid": ctx.session_id, "eid": ctx.episode_id, "task": config.get("task") or {},
                "observations": 0, "queries": 0, "latency_s": 0.0, "tokens_generated": 0,
                "forced": 0, "repetition_stopped": 0, "decode_errors": 0, "reasoning_sample": None,
                "stage_latency_s": {}, "decomposition": None}

    async def on_observation(self, obs: dict[str, Any], ctx: Any) -> None:
        self.observation_image(obs)  # a bad observation fails its own session, before any batch
        with self._lock:
            record = self.episodes.get(ctx.session_id)
            if record is not None:
                record["observations"] += 1
        await super().on_observation(obs, ctx)

    async def on_episode_end(self, result: dict[str, Any], ctx: Any) -> None:
        await super().on_episode_end(result, ctx)
        with self._lock:
            record = self.episodes.pop(ctx.session_id, None)
            self.sessions.pop(ctx.session_id, None)
        if record is None:
            return
        record["latency_per_action_s"] = record["latency_s"] / max(record["observations"], 1)
        record["tokens_per_query"] = record["tokens_generated"] / max(record["queries"], 1)
        self.finished.append(record)
        if self.log_path is not None:
            with open(self.log_path, "a") as handle:  # one line per episode, appended whole
                handle.write(json.dumps(record) + "\n")

    # -- inference ---------------------------------------------------------------------------
    def observation_image(self, obs: dict[str, Any]):
        """The primary frame of a vla-eval observation, or ValueError naming what is wrong."""
        images = obs.get("images") if isinstance(obs, dict) else None
        if not isinstance(images, dict) or not images:
            raise ValueError("the observation has no 'images' mapping of camera name to HxWx3 uint8 frame")
        name = self.camera or next(iter(images))
        if name not in images:
            raise ValueError(f"the observation has no camera {name!r}; it has {sorted(images)}")
        instruction = obs.get("task_description")
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("the observation has no 'task_description' (the instruction)")
        _check_image(images[name])
        return images[name]

    def _session(self, obs: dict[str, Any], session_id: str) -> PolicySession:
        instruction = obs["task_description"]
        session = self.sessions.get(session_id)
        if session is None or session.instruction != instruction:
            session = self.sessions[session_id] = self.policy.reset(instruction)
        return session

    def predict_batch(self, obs_batch: list[dict[str, Any]], ctx_batch: list[Any]) -> list[dict[str, Any]]:
        with self._lock:
            sessions = [self._session(obs, ctx.session_id) for obs, ctx in zip(obs_batch, ctx_batch)]
        images = [self.observation_image(obs) for obs in obs_batch]
        chunks = self.policy.act_batch(sessions, images, obs_batch)
        with self._lock:
            for chunk, ctx in zip(chunks, ctx_batch):
                record = self.episodes.get(ctx.session_id)
                if record is None:
                    continue
                record["queries"] += 1
                record["latency_s"] += chunk.latency_s
                record["tokens_generated"] += chunk.tokens_generated
                record["forced"] += int(chunk.forced)
                record["repetition_stopped"] += int(chunk.repetition_stopped)
                record["decode_errors"] += int(chunk.error is not None)
                for stage, seconds in chunk.stage_latency_s.items():  # summed over the episode
                    record["stage_latency_s"][stage] = record["stage_latency_s"].get(stage, 0.0) + seconds
                if chunk.decomposition is not None:  # the hierarchical policy's subtask list
                    record["decomposition"] = chunk.decomposition
                if record["reasoning_sample"] is None and chunk.reasoning:
                    record["reasoning_sample"] = chunk.reasoning
        if self.rotation == "axis_angle":
            return [{"actions": rpy_to_axis_angle(chunk.actions)} for chunk in chunks]
        return [{"actions": chunk.actions} for chunk in chunks]

    def predict(self, obs: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return self.predict_batch([obs], [ctx])[0]


def rpy_to_axis_angle(actions: np.ndarray) -> np.ndarray:
    """[n, 7] actions with roll/pitch/yaw deltas (extrinsic xyz) → the same with axis × angle."""
    from vla_eval.rotation import euler_xyz_to_matrix, matrix_to_quat, quat_to_axisangle

    out = np.array(actions, dtype=np.float32, copy=True)
    for row in out:
        row[3:6] = quat_to_axisangle(matrix_to_quat(euler_xyz_to_matrix(row[3:6].astype(np.float64))))
    return out
