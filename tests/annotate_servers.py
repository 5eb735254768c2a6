"""Local stand-ins for teacher APIs, driven by the real SDKs, plus a dataset whose frames say
which step they are.

`FakeTeacherServer` speaks Gemini's `POST /{version}/models/{model}:generateContent` and
OpenAI's `POST /v1/chat/completions`. It reads the step out of the frame it receives (the
frames of `CodedDataset` and `coded_frame` encode episode and step as two flat grey levels, which
survive JPEG), counts requests per step, and injects faults per step and attempt:
"429" (with Retry-After), "503", "timeout" (answers after `slow_seconds`), "malformed" (invalid
JSON text), "empty" (no candidates / no choices), "badbody" (a non-JSON HTTP body).
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from refine_core import DatasetStatistics, Episode, RobotDataset, Statistics, Step

INSTRUCTION = "put the red block on the blue plate"
_BASE, _EPISODE_STRIDE, _STEP_STRIDE = 16, 20, 12  # up to 12 episodes x 20 steps


def coded_frame(episode: int, step: int, size: int = 32) -> np.ndarray:
    frame = np.empty((size, size, 3), np.uint8)
    frame[: size // 2] = _BASE + _EPISODE_STRIDE * episode
    frame[size // 2:] = _BASE + _STEP_STRIDE * step
    return frame


def decode_frame(frame: np.ndarray) -> tuple[int, int]:
    size = frame.shape[0]
    top = float(frame[2: size // 2 - 2].mean())
    bottom = float(frame[size // 2 + 2: -2].mean())
    return round((top - _BASE) / _EPISODE_STRIDE), round((bottom - _BASE) / _STEP_STRIDE)


def pick_place_actions(num_steps: int) -> np.ndarray:
    """A pick-and-place: approach forward, descend, grasp, lift, move left, place, release."""
    pattern = [([0.05, 0, 0], 1), ([0.0, 0, -0.05], 1), ([0, 0, 0], 0), ([0, 0, 0.05], 0),
               ([0, 0.05, 0], 0), ([0, 0, -0.05], 0), ([0, 0, 0], 1)]
    per = max(1, num_steps // len(pattern))
    rows = []
    for move, grip in pattern:
        for _ in range(per if move != [0, 0, 0] else 1):
            rows.append([*move, 0, 0, 0, grip])
    while len(rows) < num_steps:
        rows.append([0.0, -0.05, 0, 0, 0, 0, 1])
    return np.asarray(rows[:num_steps], np.float32)


class CodedDataset(RobotDataset):
    """Episodes of pick-and-place actions; frame pixels encode (episode, step)."""

    name = "coded"
    robot = "test-arm"
    control_frequency = 5.0
    cameras = ("front",)

    def __init__(self, episodes: int = 3, steps: int = 8, tag: str = "a", metadata: bool = False):
        self.num_episodes, self.num_steps, self.tag, self.with_metadata = episodes, steps, tag, metadata

    @property
    def identity(self) -> str:
        return f"coded-{self.tag}-{self.num_episodes}x{self.num_steps}"

    def episodes(self, split: str = "train"):
        actions = pick_place_actions(self.num_steps)
        for e in range(self.num_episodes):
            steps = []
            for t in range(self.num_steps):
                meta = {}
                if self.with_metadata:
                    meta = {"objects": [{"name": "red block", "position": [0.4, 0.0, 0.02]},
                                        {"name": "blue plate", "position": [0.4, 0.2, 0.01]}],
                            "gripper_position": [0.3 + 0.01 * t, 0.0, 0.2], "target": "red block",
                            "destination": "blue plate"}
                steps.append(Step(images={"front": coded_frame(e, t)}, instruction=INSTRUCTION, action=actions[t],
                                  primary_camera="front", episode_id=f"ep{e}", step_index=t, metadata=meta))
            yield Episode(episode_id=f"ep{e}", steps=steps)

    def statistics(self) -> DatasetStatistics:
        acts = np.concatenate([ep.actions() for ep in self.episodes()])
        return DatasetStatistics(action=Statistics.from_array(acts))


def answer_for(step: tuple[int, int]) -> dict:
    e, t = step
    return {"observation": f"Frame of episode {e} step {t} with a red block and a blue plate.",
            "situation_analysis": "The block has not been picked up yet.",
            "spatial_reasoning": "The red block is in front of the gripper, the plate to its left.",
            "logical_steps": ["Reach the red block.", "Grasp it.", "Place it on the blue plate."],
            "sub_action": f"move toward the red block (step {t})"}


def _png_frame(data: str) -> np.ndarray:
    from PIL import Image

    # The SDKs send standard or URL-safe base64, not always padded.
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # listen backlog (read when listening starts); the default 5 throttles concurrency


class FakeTeacherServer:
    def __init__(self, latency: float = 0.0, slow_seconds: float = 2.0, retry_after: float = 0.05):
        self.latency, self.slow_seconds, self.retry_after = latency, slow_seconds, retry_after
        self.requests: Counter = Counter()  # (episode, step) -> requests received
        self.answered: Counter = Counter()  # (episode, step) -> successful answers sent
        self.times: dict[tuple[int, int], list[float]] = defaultdict(list)
        self.faults: dict[tuple[int, int], list[str]] = {}  # per step: fault of attempt 1, 2, …
        self.always: str | None = None  # a fault for every request
        self.headers_seen: list[dict] = []
        self.bodies_seen = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                server.handle(self, body)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeTeacherServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- protocol --------------------------------------------------------------------------
    def handle(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        openai = handler.path.rstrip("/").endswith("/chat/completions")
        if openai:
            image_url = next(p for p in body["messages"][0]["content"] if p["type"] == "image_url")
            frame = _png_frame(image_url["image_url"]["url"].split(",", 1)[1])
        else:
            part = next(p for p in body["contents"][0]["parts"] if "inlineData" in p or "inline_data" in p)
            frame = _png_frame((part.get("inlineData") or part.get("inline_data"))["data"])
        step = decode_frame(frame)
        with self._lock:
            self.requests[step] += 1
            attempt = self.requests[step]
            self.times[step].append(time.monotonic())
            self.headers_seen.append({k.lower(): v for k, v in handler.headers.items()})
            planned = self.faults.get(step, [])
            fault = self.always or (planned[attempt - 1] if attempt <= len(planned) else None)
        if self.latency:
            time.sleep(self.latency)
        if fault == "429":
            return self._send(handler, 429, {"error": {"code": 429, "message": "Resource exhausted", "status":
                                                       "RESOURCE_EXHAUSTED"}}, {"Retry-After": f"{self.retry_after:g}"})
        if fault == "503":
            return self._send(handler, 503, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})
        if fault == "timeout":
            time.sleep(self.slow_seconds)
        if fault == "badbody":
            return self._send_raw(handler, 200, b"<html>gateway error</html>", "text/html")
        text = json.dumps(answer_for(step))
        if fault == "malformed":
            text = text[: len(text) // 2]
        empty = fault == "empty"
        if openai:
            payload = {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
                       "choices": [] if empty else [{"index": 0, "finish_reason": "stop",
                                                     "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 300, "completion_tokens": 120, "total_tokens": 420}}
        else:
            payload = {"candidates": [] if empty else [{"content": {"role": "model", "parts": [{"text": text}]},
                                                        "finishReason": "STOP", "index": 0}],
                       "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 120, "totalTokenCount": 420}}
        if fault is None:
            with self._lock:
                self.answered[step] += 1
        self._send(handler, 200, payload)

    @staticmethod
    def _send(handler, status: int, payload: dict, headers: dict | None = None) -> None:
        FakeTeacherServer._send_raw(handler, status, json.dumps(payload).encode(), "application/json", headers)

    @staticmethod
    def _send_raw(handler, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)


if __name__ == "__main__":  # a standalone server (perf runs it in its own process): prints its URL
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    with FakeTeacherServer(latency=parser.parse_args().latency) as standalone:
        print(standalone.url, flush=True)
        threading.Event().wait()
