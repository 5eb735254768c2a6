"""The Gemini and OpenAI-compatible teachers decompose a trajectory (VLM2VLA) through their real SDKs,
pointed at the local fake server: what a request carries (key frames in order, instruction, action
log, the plan's schema), a wrong or unreadable answer re-asked with feedback, transient failures
retried with backoff, and the API key kept out of everything written."""
from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from annotate_servers import CodedDataset, FakeTeacherServer, _png_frame, decode_frame
from conftest import importorskip_or_fail
from refine_core import AXIS_CONVENTIONS, TrajectoryPlan, TrajectoryRequest
from refine_core.annotate.asking import RetryPolicy
from refine_core.annotate.decompose import PlanJournal, decompose_episodes, decompose_with_retries
from refine_core.registry import get_registry
from refine_core.teacher import MalformedAnswer, TransientTeacherError

GEMINI_KEY = "AIza-test-SECRET-d3c0mp05e"
OPENAI_KEY = "sk-test-SECRET-d3c0mp05e"
FAST = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.05, request_timeout=10.0)


class PlanServer:
    """The fake server's generate/chat route answering from a script: per request, in order, a plan
    (dict), raw answer text (str) or an HTTP fault ("429" with Retry-After, "503"); then the last
    entry again. Keeps every request body and its headers."""

    def __init__(self, server: FakeTeacherServer, answers: list, retry_after: float = 0.2):
        self.server, self.answers, self.retry_after = server, list(answers), retry_after
        self.bodies: list[dict] = []
        self.times: list[float] = []
        server.handle = self.handle

    def handle(self, handler, body: dict) -> None:
        openai = handler.path.rstrip("/").endswith("/chat/completions")
        self.server.headers_seen.append({k.lower(): v for k, v in handler.headers.items()})
        self.bodies.append(body)
        self.times.append(time.monotonic())
        answer = self.answers[min(len(self.bodies), len(self.answers)) - 1]
        if answer == "429":
            return self.server._send(handler, 429, {"error": {"code": 429, "message": "Resource exhausted",
                                                              "status": "RESOURCE_EXHAUSTED"}},
                                     {"Retry-After": f"{self.retry_after:g}"})
        if answer == "503":
            return self.server._send(handler, 503, {"error": {"code": 503, "message": "overloaded",
                                                              "status": "UNAVAILABLE"}})
        text = answer if isinstance(answer, str) else json.dumps(answer)
        if openai:
            payload = {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 900, "completion_tokens": 400, "total_tokens": 1300}}
        else:
            payload = {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                       "finishReason": "STOP", "index": 0}],
                       "usageMetadata": {"promptTokenCount": 900, "candidatesTokenCount": 400,
                                         "totalTokenCount": 1300}}
        self.server._send(handler, 200, payload)

    # -- what a request carried, in either protocol --------------------------------------------
    @staticmethod
    def parts(body: dict) -> list[tuple[str, object]]:
        """("text", str) and ("image", (episode, step)) in the order sent."""
        out = []
        if "messages" in body:
            for item in body["messages"][0]["content"]:
                if item["type"] == "text":
                    out.append(("text", item["text"]))
                else:
                    out.append(("image", decode_frame(_png_frame(item["image_url"]["url"].split(",", 1)[1]))))
            return out
        for part in body["contents"][0]["parts"]:
            inline = part.get("inlineData") or part.get("inline_data")
            out.append(("image", decode_frame(_png_frame(inline["data"]))) if inline
                       else ("text", part["text"]))
        return out

    def text(self, k: int) -> str:
        return "\n".join(str(value) for kind, value in self.parts(self.bodies[k]) if kind == "text")


@pytest.fixture
def server():
    with FakeTeacherServer() as srv:
        yield srv


def _build(name: str, server: FakeTeacherServer, monkeypatch):
    importorskip_or_fail("google.genai" if name == "gemini" else "openai")
    if name == "gemini":
        monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
        monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
        return get_registry().build("teacher", "gemini", {})
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    return get_registry().build("teacher", "openai", {"base_url": f"{server.url}/v1", "model": "local-vlm"})


def _request(episode: int = 0) -> TrajectoryRequest:
    """8 steps of pick-and-place; key frames at steps 0, 2, 6, 7 (first, gripper changes, last)."""
    episodes = list(CodedDataset(episode + 1, 8).episodes())
    return TrajectoryRequest.from_episode(episodes[episode])


def _plan(request: TrajectoryRequest) -> dict:
    rows = request.action_log().tolist()
    cuts = [(0, 2, "reach the red block"), (2, 3, "grasp it"), (3, 6, "move it onto the blue plate"),
            (6, 8, "release it")]
    return {"steps": [{"subtask": name, "reasoning": f"{name} comes next.", "main_movements": f"{name}.",
                       "actions": rows[a:b]} for a, b, name in cuts]}


def _off_by_one_row(plan: dict) -> dict:
    wrong = json.loads(json.dumps(plan))
    wrong["steps"][2]["actions"][1][1] += 0.02  # log row 4, the move left, 2 cm too far
    return wrong


def test_gemini_sends_frames_log_and_schema_and_returns_the_plan(server, monkeypatch):
    teacher = _build("gemini", server, monkeypatch)
    request = _request()
    assert request.key_steps == [0, 2, 6, 7]
    plan = _plan(request)
    script = PlanServer(server, [plan])
    got = asyncio.run(teacher.decompose(request))
    assert got == TrajectoryPlan.model_validate(plan)
    (body,) = script.bodies
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    schema = config["responseSchema"]
    assert schema["required"] == ["steps"]
    step = schema["properties"]["steps"]["items"]
    assert step["required"] == ["subtask", "reasoning", "main_movements", "actions"]
    row = step["properties"]["actions"]["items"]
    # google-genai sends a Schema's fields under their proto names (min_items); proto JSON takes both
    sizes = [row.get(camel, row.get(snake))
             for camel, snake in (("minItems", "min_items"), ("maxItems", "max_items"))]
    assert row["items"]["type"] == "NUMBER" and [int(n) for n in sizes] == [4, 4]
    assert config["maxOutputTokens"] >= 1024 + 32 * 8
    parts = script.parts(body)
    # every key frame as inline image data, in order, each right after the label naming its step
    images = [(k, value) for k, (kind, value) in enumerate(parts) if kind == "image"]
    assert [value for _, value in images] == [(0, t) for t in request.key_steps]
    for (k, _), t in zip(images, request.key_steps):
        assert parts[k - 1][0] == "text" and parts[k - 1][1].endswith(f"step {t}")
    prompt = parts[-1][1]
    assert request.instruction in prompt and AXIS_CONVENTIONS in prompt and request.log_text() in prompt
    assert "row for row" in prompt and "refused" not in prompt
    # usage is kept for the cost (gemini-2.0-flash: $0.10 / $0.40 per million tokens)
    assert (teacher.decompose_usage.input_tokens, teacher.decompose_usage.output_tokens) == (900, 400)
    assert teacher.price.cost(teacher.decompose_usage) == pytest.approx((900 * 0.10 + 400 * 0.40) / 1e6)


def test_openai_sends_a_strict_plan_schema_and_frames_in_order(server, monkeypatch):
    teacher = _build("openai", server, monkeypatch)
    request = _request()
    plan = _plan(request)
    script = PlanServer(server, [plan])
    assert asyncio.run(teacher.decompose(request)) == TrajectoryPlan.model_validate(plan)
    (body,) = script.bodies
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    step = fmt["json_schema"]["schema"]["properties"]["steps"]["items"]
    assert step["additionalProperties"] is False and step["required"] == [
        "subtask", "reasoning", "main_movements", "actions"]
    images = [value for kind, value in script.parts(body) if kind == "image"]
    assert images == [(0, t) for t in request.key_steps]
    assert request.log_text() in script.text(0) and request.instruction in script.text(0)
    assert teacher.decompose_usage.output_tokens == 400


@pytest.mark.parametrize("name", ["gemini", "openai"])
def test_a_plan_that_does_not_reproduce_the_log_is_reasked_with_the_mismatch_then_rejected(
        server, monkeypatch, name):
    teacher = _build(name, server, monkeypatch)
    request = _request()
    wrong = _off_by_one_row(_plan(request))
    script = PlanServer(server, [wrong, wrong])
    result = asyncio.run(decompose_with_retries(teacher, request, max_reasks=1, policy=FAST))
    assert result.plan is None and result.attempts == 2 and len(script.bodies) == 2
    assert "action 4" in result.rejected and "move it onto the blue plate" in result.rejected
    assert "refused" not in script.text(0)
    # the re-ask names the mismatch: where, the log's row and what was answered
    second = script.text(1)
    assert "Your previous answer was refused" in second and "action 4 (plan step 2" in second
    assert "expected [0.0, 0.05, 0.0, 0.0], got [0.0, 0.07, 0.0, 0.0]" in second


@pytest.mark.parametrize("name", ["gemini", "openai"])
def test_a_right_second_answer_is_accepted_on_attempt_two(server, monkeypatch, name):
    teacher = _build(name, server, monkeypatch)
    request = _request()
    plan = _plan(request)
    script = PlanServer(server, [_off_by_one_row(plan), plan])
    result = asyncio.run(decompose_with_retries(teacher, request, max_reasks=1, policy=FAST))
    assert result.attempts == 2 and result.rejected is None
    assert result.plan == TrajectoryPlan.model_validate(plan)
    assert len(script.bodies) == 2


@pytest.mark.parametrize("name", ["gemini", "openai"])
def test_an_answer_that_is_not_json_is_malformed_and_reasked(server, monkeypatch, name):
    teacher = _build(name, server, monkeypatch)
    request = _request()
    plan = _plan(request)
    prose = "Sure! Here is the plan: step 1, reach the block."

    async def both():  # one event loop: the SDK clients keep their connections to it
        with pytest.raises(MalformedAnswer, match="not JSON"):
            await teacher.decompose(request)
        script.bodies.clear()
        script.answers = [prose, plan]
        return await decompose_with_retries(teacher, request, max_reasks=1, policy=FAST)

    script = PlanServer(server, [prose])
    result = asyncio.run(both())
    assert result.plan == TrajectoryPlan.model_validate(plan) and result.attempts == 2
    assert "the answer was not a valid plan: plan text is not JSON" in script.text(1)


def test_a_plan_row_of_three_numbers_is_malformed_with_the_reason(server, monkeypatch):
    teacher = _build("gemini", server, monkeypatch)
    request = _request()
    bad = _plan(request)
    bad["steps"][0]["actions"][0] = bad["steps"][0]["actions"][0][:3]
    PlanServer(server, [bad])
    with pytest.raises(MalformedAnswer, match=r"steps\.0\.actions.*got 3 numbers"):
        asyncio.run(teacher.decompose(request))


def test_rate_limits_and_server_errors_are_retried_with_backoff_not_reasked(server, monkeypatch):
    teacher = _build("gemini", server, monkeypatch)
    request = _request()
    plan = _plan(request)
    script = PlanServer(server, ["429", "503", plan], retry_after=0.3)
    result = asyncio.run(decompose_with_retries(teacher, request, max_reasks=0, policy=FAST))
    assert result.plan == TrajectoryPlan.model_validate(plan) and result.attempts == 1
    assert len(script.bodies) == 3
    assert script.times[1] - script.times[0] >= 0.28  # Retry-After, not the 10 ms backoff
    assert all("refused" not in script.text(k) for k in range(3))  # the same question again
    assert teacher.decompose_usage.input_tokens == 900  # refused requests cost nothing



def test_a_server_that_keeps_failing_ends_the_ask_with_the_transient_error(server, monkeypatch):
    """Past the policy's retries the error propagates: the episode stays unsettled for the next run."""
    teacher = _build("gemini", server, monkeypatch)
    script = PlanServer(server, ["503"])
    with pytest.raises(TransientTeacherError, match="Gemini HTTP 503"):
        asyncio.run(decompose_with_retries(teacher, _request(), max_reasks=1, policy=FAST))
    assert len(script.bodies) == FAST.max_retries + 1


@pytest.mark.parametrize("name,key", [("gemini", GEMINI_KEY), ("openai", OPENAI_KEY)])
def test_the_api_key_reaches_the_server_and_nothing_written(tmp_path, server, monkeypatch, caplog, capfd,
                                                             name, key):
    caplog.set_level(logging.DEBUG)
    teacher = _build(name, server, monkeypatch)
    requests = [_request(0), _request(1)]
    good = _plan(requests[0])
    PlanServer(server, ["not json", good, good])
    report = asyncio.run(decompose_episodes(teacher, requests, PlanJournal(tmp_path / "plans.jsonl"),
                                            max_reasks=1, policy=FAST))
    assert set(report.plans) == {"ep0", "ep1"} and not report.rejected
    header = "x-goog-api-key" if name == "gemini" else "authorization"
    assert any(key in h.get(header, "") for h in server.headers_seen)
    written = "".join(p.read_bytes().decode(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    captured = capfd.readouterr()
    assert "ep0" in written and key not in written + caplog.text + captured.out + captured.err
