"""A refine Policy behind openpi's websocket policy protocol, so `openpi-client`'s
`WebsocketClientPolicy` and robot scripts written for openpi drive refine models.

The protocol (openpi's `websocket_policy_server` and `openpi_client`): on connect the server sends
its metadata; then each binary message is an observation, answered by an action dict. Messages
are msgpack, with NumPy arrays as maps {"__ndarray__": true, "data", "dtype", "shape"} (never
pickle). An answer that is a text message is an error (the client raises it); the connection
stays open, so one bad observation does not end a robot's session.

Observation: {"observation/image" or "image": HxWx3 uint8, "prompt": str}; answer:
{"actions": float32 [n, 7] (refine's convention), "reasoning": str or None, "latency_s": float}.
One policy session per connection, reset when the prompt changes or the observation says
{"reset": true}. Inference runs in a worker thread (one at a time), so the event loop keeps
answering new connections and the `/healthz` probe during a long generation.
"""
from __future__ import annotations

import asyncio
import functools
import json
import threading
from http import HTTPStatus
from typing import Any

import msgpack
import numpy as np

IMAGE_KEYS = ("observation/image", "image")


def _pack_array(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "VOc":
            raise ValueError(f"cannot send a {value.dtype} array")
        return {b"__ndarray__": True, b"data": value.tobytes(), b"dtype": value.dtype.str,
                b"shape": value.shape}
    if isinstance(value, np.generic):
        return {b"__npgeneric__": True, b"data": value.item(), b"dtype": value.dtype.str}
    return value


def _unpack_array(value: dict) -> Any:
    if b"__ndarray__" in value:
        return np.ndarray(buffer=value[b"data"], dtype=np.dtype(value[b"dtype"]), shape=value[b"shape"])
    if b"__npgeneric__" in value:
        return np.dtype(value[b"dtype"]).type(value[b"data"])
    return value


pack = functools.partial(msgpack.packb, default=_pack_array)
unpack = functools.partial(msgpack.unpackb, object_hook=_unpack_array)


class OpenPIPolicyServer:
    def __init__(self, policy: Any, camera: str | None = None, metadata: dict[str, Any] | None = None):
        self.policy, self.camera = policy, camera
        self.metadata = {"server": "refine", **policy.describe(), **(metadata or {})}
        self._inference = threading.Lock()  # one generation at a time on the model

    def image(self, obs: Any) -> np.ndarray:
        if not isinstance(obs, dict):
            raise ValueError("the observation must be a map")
        keys = (self.camera,) if self.camera else IMAGE_KEYS
        found = next((k for k in keys if k in obs), None)
        if found is None:
            raise ValueError(f"the observation has no image: send it as {' or '.join(repr(k) for k in keys)}")
        prompt = obs.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the observation has no 'prompt' (the instruction)")
        return obs[found]

    def act(self, state: dict[str, Any], obs: dict[str, Any]) -> dict[str, Any]:
        image = self.image(obs)
        session = state.get("session")
        if session is None or obs.get("reset") or session.instruction != obs["prompt"]:
            session = state["session"] = self.policy.reset(obs["prompt"])
        with self._inference:
            chunk = self.policy.act(session, image)
        return {"actions": np.asarray(chunk.actions, np.float32), "reasoning": chunk.reasoning,
                "latency_s": chunk.latency_s, "forced": chunk.forced}

    async def handle(self, websocket: Any) -> None:
        await websocket.send(pack(self.metadata))
        state: dict[str, Any] = {}
        async for message in websocket:
            try:
                obs = unpack(message) if isinstance(message, bytes) else None
                if obs is None:
                    raise ValueError("observations are binary msgpack messages")
                answer = await asyncio.to_thread(self.act, state, obs)
            except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
                await websocket.send(f"refine: bad observation: {exc}")
                continue
            await websocket.send(pack(answer))

    @staticmethod
    def health(connection: Any, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, json.dumps({"status": "ok"}) + "\n")
        return None

    async def serve(self, host: str, port: int, ready: Any = None, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (forever without one); `ready(port)` once listening."""
        from websockets.asyncio.server import serve

        async with serve(self.handle, host, port, compression=None, max_size=None,
                         process_request=self.health) as server:
            if ready is not None:
                ready(server.sockets[0].getsockname()[1])
            await (stop.wait() if stop is not None else server.serve_forever())


def serve_openpi(policy: Any, host: str = "127.0.0.1", port: int = 8000, camera: str | None = None) -> None:
    """Serve `policy` on openpi's protocol until interrupted."""
    asyncio.run(OpenPIPolicyServer(policy, camera).serve(host, port))
