"""The real Gemini and OpenAI SDKs against local servers speaking their protocols, with faults;
the local HF teacher with the tiny preset; missing keys."""
from __future__ import annotations

import json
import logging
import os

import pytest

from annotate_servers import CodedDataset, FakeTeacherServer
from conftest import importorskip_or_fail, run_refine
from refine_core.annotate import annotate_dataset
from refine_core.data.annotation_set import AnnotationSet
from refine_core.config import AnnotateSettings
from refine_core.errors import UsageError
from refine_core.registry import get_registry
from refine_core.reasoning import Reasoning

GEMINI_KEY = "AIza-test-SECRET-4f1c9e"
OPENAI_KEY = "sk-test-SECRET-77ab31"

FAULTS = {  # (episode, step) -> faults of its first attempts; every other request is answered
    (0, 0): ["429", "429"], (0, 1): ["503"], (0, 2): ["timeout"], (0, 3): ["malformed", "empty"],
    (1, 0): ["badbody"], (1, 2): ["503", "malformed", "429"], (2, 4): ["empty"],
}


def _settings(**kw) -> AnnotateSettings:
    base = dict(cache=False, backoff_initial=0.01, backoff_max=0.05, request_timeout=1.0, concurrency=6,
                max_retries=4, max_reasks=3)
    return AnnotateSettings(**{**base, **kw})


@pytest.fixture
def server():
    with FakeTeacherServer(slow_seconds=3.0, retry_after=0.4) as srv:
        yield srv


def _build(name: str, server: FakeTeacherServer, monkeypatch, **options):
    if name == "gemini":
        monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
        monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
    else:
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        options = {"base_url": f"{server.url}/v1", "model": "local-vlm", **options}
    return get_registry().build("teacher", name, options)


def _files_text(root) -> str:
    return "".join(p.read_bytes().decode(errors="replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("name,key", [("gemini", GEMINI_KEY), ("openai", OPENAI_KEY)])
def test_every_step_is_annotated_despite_faults(tmp_path, server, monkeypatch, caplog, capfd, name, key):
    caplog.set_level(logging.DEBUG)
    teacher = _build(name, server, monkeypatch)
    server.faults = dict(FAULTS)
    stats = annotate_dataset(CodedDataset(3, 5), teacher, tmp_path / "out", _settings())
    assert stats.failed == 0 and stats.answered == 15
    assert stats.retried == sum(len(f) for f in FAULTS.values())
    for step, faults in FAULTS.items():
        assert server.requests[step] == len(faults) + 1
    assert all(server.answered[(e, t)] == 1 for e in range(3) for t in range(5))
    texts = AnnotationSet.load(tmp_path / "out")
    assert len(texts) == 15
    assert Reasoning.parse(texts.text("ep1", 2)).observation.startswith("Frame of episode 1 step 2")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["input_tokens"] == 15 * 300 and manifest["counts"]["output_tokens"] == 15 * 120
    # 429 came with Retry-After 0.4 s: the retries waited at least that long, not the 10 ms backoff.
    first, second, third = server.times[(0, 0)]
    assert second - first >= 0.38 and third - second >= 0.38
    # The key reached the server, and nothing else: no file under OUT, no log record, no output.
    header = "x-goog-api-key" if name == "gemini" else "authorization"
    assert any(key in h.get(header, "") for h in server.headers_seen)
    captured = capfd.readouterr()
    assert key not in _files_text(tmp_path) + caplog.text + captured.out + captured.err


def test_gemini_price_and_usage_make_the_cost(tmp_path, server, monkeypatch):
    teacher = _build("gemini", server, monkeypatch)
    stats = annotate_dataset(CodedDataset(1, 4), teacher, tmp_path / "out", _settings())
    assert stats.cost == pytest.approx(4 * (300 * 0.10 + 120 * 0.40) / 1e6)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["cost_usd"] == pytest.approx(stats.cost)
    overridden = annotate_dataset(CodedDataset(1, 4), teacher, tmp_path / "out2",
                                  _settings(price_input_per_million=1.0, price_output_per_million=0.0))
    assert overridden.cost == pytest.approx(4 * 300 / 1e6)


def test_openai_sends_a_json_schema_and_data_uri(server, monkeypatch):
    teacher = _build("openai", server, monkeypatch)
    request = next(CodedDataset(1, 1).episodes()).steps[0]
    from refine_core.annotate.selection import step_request

    messages = teacher.messages(step_request(request, None))
    assert messages[0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert teacher._response_format["type"] == "json_schema"
    assert teacher._response_format["json_schema"]["schema"]["required"] == [
        "observation", "situation_analysis", "spatial_reasoning", "logical_steps", "sub_action"]


@pytest.mark.parametrize("name", ["gemini", "openai"])
def test_unreachable_server_fails_each_step_with_the_reason(tmp_path, monkeypatch, name):
    with FakeTeacherServer() as srv:
        teacher = _build(name, srv, monkeypatch)
    # The server is closed now: every connection is refused.
    stats = annotate_dataset(CodedDataset(1, 2), teacher, tmp_path / "out", _settings(max_retries=2))
    assert stats.failed == 2
    assert all(
        "gave up after 3 attempts" in f["reason"] and "unreachable" in f["reason"] for f in stats.failures
    )


def test_server_that_keeps_failing_is_recorded_not_dropped(tmp_path, server, monkeypatch):
    teacher = _build("gemini", server, monkeypatch)
    server.always = "503"
    stats = annotate_dataset(CodedDataset(1, 2), teacher, tmp_path / "out", _settings(max_retries=1))
    assert stats.failed == 2 and "Gemini HTTP 503: overloaded" in stats.failures[0]["reason"]
    episode = json.loads(next((tmp_path / "out").glob("ep0-*.json")).read_text())
    assert [f["step"] for f in episode["failed"]] == [0, 1] and episode["steps"] == []


def test_rejected_key_stops_the_run(tmp_path, monkeypatch):
    with FakeTeacherServer() as srv:
        teacher = _build("gemini", srv, monkeypatch)

        def deny(handler, body):
            srv._send(handler, 401, {"error": {"code": 401, "message": "API key not valid",
                                               "status": "UNAUTHENTICATED"}})

        srv.handle = deny
        with pytest.raises(UsageError, match="rejected the credentials"):
            annotate_dataset(CodedDataset(1, 2), teacher, tmp_path / "out", _settings())


def test_gemini_without_a_key_is_one_line_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    result = run_refine("annotate", "--teacher", "gemini", "--dataset", "bridge", "--out",
                        str(tmp_path / "o"),
                        env={**env, "GEMINI_API_KEY": "", "GOOGLE_API_KEY": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: The gemini teacher needs an API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the "
        "environment"]
    assert not (tmp_path / "o").exists()


def test_openai_needs_a_key_only_for_the_official_endpoint(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(UsageError, match="OPENAI_API_KEY"):
        get_registry().build("teacher", "openai", {})
    teacher = get_registry().build("teacher", "openai", {"base_url": "http://127.0.0.1:9/v1",
                                                         "model": "llava"})
    assert teacher.identity.key().startswith("openai/llava/") and teacher.price.input_per_million == 0


def test_hf_teacher_records_unparsable_generations_as_failed(tmp_path):
    importorskip_or_fail("transformers")
    teacher = get_registry().build("teacher", "hf", {"preset": "tiny", "max_new_tokens": 8})
    # No request timeout: on a busy CPU a generation may take seconds.
    stats = annotate_dataset(CodedDataset(1, 2), teacher, tmp_path / "out",
                             _settings(max_reasks=1, concurrency=2, request_timeout=None))
    assert stats.failed == 2 and stats.answered == 0
    reason = stats.failures[0]["reason"]
    assert reason.startswith("malformed answer 2 times: generated text is not tagged reasoning")
    assert "missing section" in reason
    episode = json.loads(next((tmp_path / "out").glob("ep0-*.json")).read_text())
    assert {f["step"] for f in episode["failed"]} == {0, 1}
