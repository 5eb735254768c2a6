"""Local stand-ins for teacher APIs, driven by the real SDKs, plus a dataset whose frames say
which step they are.

`FakeTeacherServer` speaks Gemini's `POST /{version}/models/{model}:generateContent` and
OpenAI's `POST /v1/chat/completions`. It reads the step out of the frame it receives (the
frames of `CodedDataset` and `coded_frame` encode episode and step as two flat grey levels, which
survive JPEG), counts requests per step, and injects faults per step and attempt:
"429" (with Retry-After), "503", "timeout" (answers after `slow_seconds`), "malformed" (invalid
JSON text), "empty" (no candidates / no choices), "badbody" (a non-JSON HTTP body).

It also speaks the Gemini Batch API as google-genai calls it: `POST …/models/{m}:batchGenerateContent`
(inlined requests → a `batches/{id}` operation) and `GET …/batches/{id}` (the job's state under
`metadata.state`: BATCH_STATE_PENDING for `pending_polls` gets, then RUNNING while `hold_jobs` is
set or for `running_polls` gets, then SUCCEEDED with `metadata.output.inlinedResponses`, or
`job_outcome` — e.g. "FAILED"). Each inlined request counts as one request of its step; the faults
"malformed" and "empty" apply to its inlined response, "error" (and "429"/"503") give it an error.

`coded_refine_main()` runs the `refine` CLI with a `coded` dataset registered (a subprocess that
needs no TensorFlow).
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

from pydantic import BaseModel, ConfigDict

from refine_core import DatasetSpec, DatasetStatistics, Episode, RobotDataset, Statistics, Step, hookimpl

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
                steps.append(Step(images={"front": coded_frame(e, t)}, instruction=INSTRUCTION,
                                  action=actions[t],
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
    request_queue_size = (
        1024  # listen backlog (read when listening starts); the default 5 throttles concurrency
    )


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
        # Batch API
        self.jobs: dict[str, dict] = {}  # "batches/{id}" -> {"steps", "responses", "gets", "display_name"}
        self.creates = 0
        self.pending_polls, self.running_polls = 1, 2
        self.hold_jobs = False  # True: every job stays RUNNING
        self.job_outcome: str | None = None  # "FAILED", "CANCELLED", "EXPIRED" instead of SUCCEEDED
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = (
                True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
            )

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                if self.path.split("?")[0].endswith(":batchGenerateContent"):
                    server.create_batch(self, body)
                else:
                    server.handle(self, body)

            def do_GET(self):
                server.get_batch(self)

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
    @staticmethod
    def _gemini_step(request: dict) -> tuple[int, int]:
        part = next(p for p in request["contents"][0]["parts"] if "inlineData" in p or "inline_data" in p)
        return decode_frame(_png_frame((part.get("inlineData") or part.get("inline_data"))["data"]))

    def _count(self, step: tuple[int, int], handler: BaseHTTPRequestHandler) -> str | None:
        """Count one request of `step`; the fault planned for this attempt (None: answer it)."""
        with self._lock:
            self.requests[step] += 1
            attempt = self.requests[step]
            self.times[step].append(time.monotonic())
            self.headers_seen.append({k.lower(): v for k, v in handler.headers.items()})
            planned = self.faults.get(step, [])
            return self.always or (planned[attempt - 1] if attempt <= len(planned) else None)

    @staticmethod
    def _gemini_payload(step: tuple[int, int], fault: str | None) -> dict:
        text = json.dumps(answer_for(step))
        if fault == "malformed":
            text = text[: len(text) // 2]
        return {"candidates": [] if fault == "empty" else [{"content": {"role": "model",
                                                                        "parts": [{"text": text}]},
                                                            "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 120,
                                  "totalTokenCount": 420}}

    def create_batch(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        batch = body["batch"]
        responses, steps = [], []
        for item in batch["inputConfig"]["requests"]["requests"]:
            step = self._gemini_step(item["request"])
            fault = self._count(step, handler)
            steps.append(step)
            if fault in ("error", "429", "503"):
                response = {"error": {"code": 13, "message": "internal error while generating"}}
            else:
                response = {"response": self._gemini_payload(step, fault)}
                if fault is None:
                    with self._lock:
                        self.answered[step] += 1
            responses.append({**response, "metadata": item.get("metadata", {})})
        with self._lock:
            self.creates += 1
            name = f"batches/job{self.creates}x{int(time.time() * 1000) % 100000}"
            self.jobs[name] = {"steps": steps, "responses": responses, "gets": 0,
                               "display_name": batch.get("displayName"), "model": handler.path.split(":")[0]}
        self._send(handler, 200, self._operation(name, "BATCH_STATE_PENDING"))

    def get_batch(self, handler: BaseHTTPRequestHandler) -> None:
        name = "batches/" + handler.path.split("?")[0].rsplit("/", 1)[-1]
        with self._lock:
            self.headers_seen.append({k.lower(): v for k, v in handler.headers.items()})
            job = self.jobs.get(name)
            if job is None:
                return self._send(handler, 404, {"error": {"code": 404, "message": f"{name} not found",
                                                           "status": "NOT_FOUND"}})
            job["gets"] += 1
            gets = job["gets"]
        if gets <= self.pending_polls:
            state = "BATCH_STATE_PENDING"
        elif self.hold_jobs or gets <= self.pending_polls + self.running_polls:
            state = "BATCH_STATE_RUNNING"
        elif self.job_outcome:
            state = f"BATCH_STATE_{self.job_outcome}"
        else:
            return self._send(handler, 200, self._operation(name, "BATCH_STATE_SUCCEEDED", job["responses"]))
        self._send(handler, 200, self._operation(name, state))

    def _operation(self, name: str, state: str, responses: list | None = None) -> dict:
        metadata = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                    "model": self.jobs[name]["model"].rsplit("/", 1)[-1] if name in self.jobs else "",
                    "displayName": self.jobs.get(name, {}).get("display_name"), "state": state,
                    "createTime": "2026-11-01T00:00:00Z", "updateTime": "2026-11-01T00:00:01Z"}
        done = state not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")
        if responses is not None:
            metadata["output"] = {"inlinedResponses": {"inlinedResponses": responses}}
        operation = {"name": name, "metadata": metadata, "done": done}
        if done and state != "BATCH_STATE_SUCCEEDED":
            operation["error"] = {"code": 13, "message": f"batch ended {state}"}
        return operation

    def handle(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        openai = handler.path.rstrip("/").endswith("/chat/completions")
        if openai:
            image_url = next(p for p in body["messages"][0]["content"] if p["type"] == "image_url")
            step = decode_frame(_png_frame(image_url["image_url"]["url"].split(",", 1)[1]))
        else:
            step = self._gemini_step(body)
        fault = self._count(step, handler)
        if self.latency:
            time.sleep(self.latency)
        if fault == "429":
            return self._send(handler, 429, {"error": {"code": 429, "message": "Resource exhausted", "status":
                                                       "RESOURCE_EXHAUSTED"}},
                              {"Retry-After": f"{self.retry_after:g}"})
        if fault == "503":
            return self._send(handler, 503, {"error": {"code": 503, "message": "overloaded",
                                                       "status": "UNAVAILABLE"}})
        if fault == "timeout":
            time.sleep(self.slow_seconds)
        if fault == "badbody":
            return self._send_raw(handler, 200, b"<html>gateway error</html>", "text/html")
        if openai:
            text = json.dumps(answer_for(step))
            if fault == "malformed":
                text = text[: len(text) // 2]
            empty = fault == "empty"
            payload = {"id": "cmpl-1", "object": "chat.completion", "created": 0,
                       "model": body.get("model", "m"),
                       "choices": [] if empty else [{"index": 0, "finish_reason": "stop",
                                                     "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 300, "completion_tokens": 120, "total_tokens": 420}}
        else:
            payload = self._gemini_payload(step, fault)
        if fault is None:
            with self._lock:
                self.answered[step] += 1
        self._send(handler, 200, payload)

    @staticmethod
    def _send(handler, status: int, payload: dict, headers: dict | None = None) -> None:
        FakeTeacherServer._send_raw(handler, status, json.dumps(payload).encode(), "application/json",
                                    headers)

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


class CodedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episodes: int = 3
    steps: int = 8


@hookimpl
def refine_datasets():
    yield DatasetSpec(name="coded", summary="test episodes whose frames encode (episode, step)",
                      factory=lambda o: CodedDataset(o.episodes, o.steps), options=CodedOptions)


def coded_refine_main() -> None:
    """The `refine` CLI with this module's `coded` dataset registered beside the built-ins."""
    import sys

    from refine_core import registry as plugins
    from refine_core.cli import main

    plugins._registry = plugins.Registry(builtins=(*plugins.BUILTIN_PLUGINS, "annotate_servers"))
    main(sys.argv[1:])


if __name__ == "__main__":  # a standalone server (perf runs it in its own process): prints its URL
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    with FakeTeacherServer(latency=parser.parse_args().latency) as standalone:
        print(standalone.url, flush=True)
        threading.Event().wait()
