"""The annotation pipeline in-process: strategies, store and resume, cache, shards, retries,
rate limits, dry-run, and the scripted teacher (tests/annotate_servers.py has the dataset)."""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from annotate_servers import INSTRUCTION, CodedDataset, decode_frame, pick_place_actions
from refine_core.annotate import (RateLimiter, RetryPolicy, annotate_dataset, asked_steps, estimate_run,
    parse_shard, select_episodes)
from refine_core.annotate.motion import keyframes, motion_phases
from refine_core.annotate.prompt import reasoning_from_answer
from refine_core.annotate.store import JOURNAL_DIR, read_journal
from refine_core.data.annotation_set import MANIFEST, AnnotationSet, episode_filename
from refine_core.config import AnnotateSettings
from refine_core.errors import RefineError, UsageError
from refine_core.reasoning import Reasoning, TaskPlanning
from refine_core.teacher import (Annotation, AnnotationRequest, MalformedAnswer, Teacher, TeacherIdentity,
    TokenUsage, TransientTeacherError)
from refine_teachers.scripted import ScriptedOptions
from refine_teachers.scripted.teacher import ScriptedTeacher, objects_from_instruction


def _reasoning(text: str) -> Reasoning:
    return Reasoning(observation=text, situation_analysis="s", spatial_reasoning="r",
                     task_planning=TaskPlanning(logical_steps=["a", "b"], sub_action="go"))


class CountingTeacher(Teacher):
    """Answers from the frame code; counts calls per (episode, step); optional scripted faults."""

    def __init__(self, name="counting", faults=None, delay=0.0):
        self.name, self.faults, self.delay = name, dict(faults or {}), delay
        self.calls: dict[tuple[int, int], int] = {}

    @property
    def identity(self):
        return TeacherIdentity(self.name, "m1", "p1")

    async def annotate(self, request: AnnotationRequest) -> Annotation:
        code = decode_frame(request.images[request.primary_camera])
        self.calls[code] = self.calls.get(code, 0) + 1
        if self.delay:
            await asyncio.sleep(self.delay)
        planned = self.faults.get(code, [])
        fault = planned[self.calls[code] - 1] if self.calls[code] <= len(planned) else None
        if fault == "transient":
            raise TransientTeacherError("503 overloaded")
        if fault == "malformed" or fault == "always-malformed":
            raise MalformedAnswer("unusable answer: missing sub_action")
        if fault == "fatal":
            raise UsageError("rejected the credentials")
        return Annotation(_reasoning(f"episode {code[0]} step {code[1]}"), TokenUsage(100, 50))


def _settings(**kw) -> AnnotateSettings:
    base = dict(cache=False, backoff_initial=0.001, backoff_max=0.01, concurrency=4)
    return AnnotateSettings(**{**base, **kw})


# -- motion phases and strategies ----------------------------------------------------------
def test_motion_phases_of_a_pick_and_place():
    actions = pick_place_actions(16)
    phases = motion_phases(actions)
    assert phases == ["approach", "approach", "descend", "descend", "grasp", "lift", "lift", "move", "move",
                      "place", "place", "release", "approach", "approach", "approach", "approach"]
    assert keyframes(actions) == [0, 2, 4, 5, 7, 9, 11, 12]


def test_a_one_step_blip_is_not_a_new_phase():
    actions = np.zeros((5, 7), np.float32)
    actions[:, 6] = 1
    actions[:, 0] = 0.05
    actions[2, :3] = [0, 0, -0.05]  # a single downward step inside an approach
    assert motion_phases(actions) == ["approach"] * 5
    assert keyframes(actions) == [0]


def test_strategies_ask_the_documented_steps():
    actions = pick_place_actions(16)
    assert asked_steps(actions, "every_step") == list(range(16))
    assert asked_steps(actions, "every_k", 5) == [0, 5, 10, 15]
    assert asked_steps(actions, "keyframes") == keyframes(actions)


@pytest.mark.parametrize("strategy,every,asked", [("every_k", 3, [0, 3, 6, 9, 12, 15]),
                                                  ("keyframes", 1, [0, 2, 4, 5, 7, 9, 11, 12])])
def test_sparse_strategies_fill_every_step_from_its_source(tmp_path, strategy, every, asked):
    teacher = CountingTeacher()
    annotate_dataset(CodedDataset(1, 16), teacher, tmp_path, _settings(strategy=strategy, every=every))
    assert sorted(t for _, t in teacher.calls) == asked
    record = json.loads((tmp_path / episode_filename("ep0")).read_text())
    assert [r["step"] for r in record["steps"]] == list(range(16))
    for r in record["steps"]:
        source = max(a for a in asked if a <= r["step"])
        assert r["source"] == source
        assert r["reasoning"]["observation"] == f"episode 0 step {source}"
        parsed = Reasoning.parse(r["text"])
        if r["step"] == source:
            assert parsed.task_planning.sub_action == "go"
        else:  # carried over with the step's own phase and move
            assert (
                parsed.task_planning.sub_action.split(":")[0]
                == motion_phases(pick_place_actions(16))[r["step"]]
            )
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["counts"]["asked"] == len(asked) and manifest["counts"]["annotated"] == 16


# -- store, resume, refusal ----------------------------------------------------------------
def test_run_writes_the_documented_format_and_training_reads_it(tmp_path):
    stats = annotate_dataset(CodedDataset(3, 6), CountingTeacher(), tmp_path, _settings())
    assert stats.answered == 18 and stats.failed == 0
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["format"] == 1 and manifest["dataset_identity"] == "coded-a-3x6"
    assert manifest["teacher"] == "counting/m1/p1" and manifest["strategy"] == "every_step"
    assert manifest["counts"]["input_tokens"] == 1800 and manifest["counts"]["output_tokens"] == 900
    assert set(manifest["episodes"]) == {"ep0", "ep1", "ep2"}
    loaded = AnnotationSet.load(tmp_path)
    assert len(loaded) == 18
    assert Reasoning.parse(loaded.text("ep2", 5)).observation == "episode 2 step 5"
    assert not list((tmp_path / JOURNAL_DIR).glob("*.jsonl"))  # everything is in episode files


def test_resume_never_asks_a_journaled_step_again(tmp_path):
    # A run that died after journaling some answers: replay a journal as it would be left behind.
    first = CountingTeacher()
    annotate_dataset(CodedDataset(2, 5), first, tmp_path / "full", _settings())
    journal = tmp_path / "out" / JOURNAL_DIR
    journal.mkdir(parents=True)
    records = [{"episode_id": "ep0", "step": t, "teacher": "counting/m1/p1", "usage": {"input": 100,
                                                                                       "output": 50},
                "attempts": 1, "cached": False, "reasoning": _reasoning(f"episode 0 step {t}").model_dump()}
               for t in (0, 1, 3)]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (journal / "123-1.jsonl").write_text(lines + '{"episode_id": "ep0", "st')  # torn tail of a kill
    (tmp_path / "out" / MANIFEST).write_text(json.dumps({
        "format": 1, "dataset": "coded", "dataset_identity": "coded-a-2x5", "teacher": "counting/m1/p1",
        "strategy": "every_step", "every": None, "episodes": {}, "episode_counts": {}, "counts": {}}))
    second = CountingTeacher()
    stats = annotate_dataset(CodedDataset(2, 5), second, tmp_path / "out", _settings())
    assert set(second.calls) == {(0, 2), (0, 4)} | {(1, t) for t in range(5)}
    assert stats.resumed == 3 and stats.answered == 7
    assert len(AnnotationSet.load(tmp_path / "out")) == 10
    assert not list(journal.glob("*.jsonl"))
    # A finished OUT: nothing is asked, nothing changes.
    third = CountingTeacher()
    stats = annotate_dataset(CodedDataset(2, 5), third, tmp_path / "out", _settings())
    assert third.calls == {} and stats.episodes_done_before == 2


def test_out_of_another_dataset_or_teacher_is_refused(tmp_path):
    annotate_dataset(CodedDataset(1, 3), CountingTeacher(), tmp_path, _settings())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(UsageError, match="holds annotations of dataset 'coded' \\(coded-a-1x3\\)"):
        annotate_dataset(CodedDataset(1, 3, tag="b"), CountingTeacher(), tmp_path, _settings())
    with pytest.raises(UsageError, match="teacher counting/m1/p1.*teacher other/m1/p1"):
        annotate_dataset(CodedDataset(1, 3), CountingTeacher("other"), tmp_path, _settings())
    with pytest.raises(UsageError, match="strategy"):
        annotate_dataset(CodedDataset(1, 3), CountingTeacher(), tmp_path, _settings(strategy="keyframes"))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty and holds no annotation set"):
        annotate_dataset(CodedDataset(1, 3), CountingTeacher(), tmp_path / "other", _settings())


def test_content_cache_pays_once_across_runs(tmp_path):
    settings = _settings(cache=True, cache_dir=str(tmp_path / "cache"))
    first = CountingTeacher()
    annotate_dataset(CodedDataset(2, 4), first, tmp_path / "a", settings)
    assert sum(first.calls.values()) == 8
    second = CountingTeacher()
    stats = annotate_dataset(CodedDataset(2, 4), second, tmp_path / "b", settings)
    assert second.calls == {} and stats.cached == 8
    assert AnnotationSet.load(tmp_path / "b").texts == AnnotationSet.load(tmp_path / "a").texts
    # Another teacher identity (e.g. a new prompt version) does not reuse those answers.
    third = CountingTeacher(name="counting-v2")
    annotate_dataset(CodedDataset(2, 4), third, tmp_path / "c", settings)
    assert sum(third.calls.values()) == 8


# -- shards ----------------------------------------------------------------------------------
def test_shards_partition_the_episodes():
    dataset = CodedDataset(12, 2)
    parts = [[e.episode_id for e in select_episodes(dataset, "train", (i, 3))] for i in range(3)]
    flat = [e for part in parts for e in part]
    assert sorted(flat) == sorted(f"ep{i}" for i in range(12)) and len(flat) == len(set(flat))
    assert all(parts)  # 12 episodes over 3 shards: none empty for these ids
    assert parts == [[e.episode_id for e in select_episodes(dataset, "train", (i, 3))] for i in range(3)]
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) == (0, 1)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)


# -- failures --------------------------------------------------------------------------------
def test_transient_and_malformed_answers_are_retried(tmp_path):
    teacher = CountingTeacher(faults={(0, 1): ["transient", "transient"], (0, 2): ["malformed", "malformed"]})
    stats = annotate_dataset(CodedDataset(1, 4), teacher, tmp_path, _settings(max_reasks=2))
    assert stats.failed == 0 and stats.retried == 4
    assert teacher.calls[(0, 1)] == 3 and teacher.calls[(0, 2)] == 3
    steps = json.loads((tmp_path / episode_filename("ep0")).read_text())["steps"]
    assert [s["attempts"] for s in steps] == [1, 3, 3, 1]


def test_malformed_answers_are_recorded_as_failed_then_retried_next_run(tmp_path):
    teacher = CountingTeacher(faults={(0, 2): ["always-malformed"] * 10})
    stats = annotate_dataset(CodedDataset(1, 4), teacher, tmp_path, _settings(max_reasks=2))
    assert teacher.calls[(0, 2)] == 3 and stats.failed == 1
    assert "malformed answer 3 times: unusable answer: missing sub_action" in stats.failures[0]["reason"]
    episode = json.loads((tmp_path / episode_filename("ep0")).read_text())
    assert episode["failed"] == [{"step": 2, "reason": stats.failures[0]["reason"], "attempts": 3}]
    assert [s["step"] for s in episode["steps"]] == [0, 1, 3]
    assert json.loads((tmp_path / MANIFEST).read_text())["counts"]["failed"] == 1
    again = CountingTeacher()
    stats = annotate_dataset(CodedDataset(1, 4), again, tmp_path, _settings())
    assert again.calls == {(0, 2): 1} and stats.failed == 0
    assert len(AnnotationSet.load(tmp_path)) == 4


def test_transient_errors_give_up_after_max_retries(tmp_path):
    teacher = CountingTeacher(faults={(0, 0): ["transient"] * 10})
    stats = annotate_dataset(CodedDataset(1, 2), teacher, tmp_path, _settings(max_retries=2))
    assert teacher.calls[(0, 0)] == 3
    assert stats.failures[0]["reason"] == "gave up after 3 attempts: 503 overloaded"


def test_a_fatal_teacher_error_stops_the_run_and_keeps_answers(tmp_path):
    teacher = CountingTeacher(faults={(1, 0): ["fatal"]})
    with pytest.raises(UsageError, match="rejected the credentials"):
        annotate_dataset(CodedDataset(2, 3), teacher, tmp_path, _settings(concurrency=1))
    assert "ep0" in json.loads((tmp_path / MANIFEST).read_text())["episodes"]


def test_request_timeout_is_transient(tmp_path):
    teacher = CountingTeacher(delay=0.5)
    stats = annotate_dataset(CodedDataset(1, 1), teacher, tmp_path, _settings(request_timeout=0.05,
                                                                              max_retries=1))
    assert stats.failures[0]["reason"] == "gave up after 2 attempts: no answer within 0.05 s"


# -- rate limits and backoff -------------------------------------------------------------------
def test_rate_limiter_holds_requests_and_tokens_per_minute():
    async def run(limiter, count, tokens=0):
        start = time.monotonic()
        await asyncio.gather(*(limiter.acquire(tokens) for _ in range(count)))
        return time.monotonic() - start

    # 1200/min = 20/s with one second of burst: 30 requests need ~0.5 s beyond the burst of 20.
    elapsed = asyncio.run(run(RateLimiter(requests_per_minute=1200), 30))
    assert 0.4 < elapsed < 1.0
    # 60,000 tokens/min = 1000/s: 5 requests of 400 tokens = 2000 tokens, 1000 of them burst.
    elapsed = asyncio.run(run(RateLimiter(tokens_per_minute=60_000), 5, tokens=400))
    assert 0.9 < elapsed < 1.6
    assert asyncio.run(run(RateLimiter(), 1000)) < 0.2


def test_backoff_grows_with_jitter_and_honours_retry_after():
    policy = RetryPolicy(initial_delay=1.0, max_delay=8.0)
    for retry, ceiling in enumerate([1, 2, 4, 8, 8]):
        delays = [policy.delay(retry) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(set(delays)) > 1
    assert policy.delay(0, retry_after=30.0) == 30.0


# -- dry run ---------------------------------------------------------------------------------
def test_dry_run_counts_calls_tokens_and_cost_and_writes_nothing(tmp_path):
    teacher = CountingTeacher()
    settings = _settings(price_input_per_million=2.0, price_output_per_million=10.0)
    estimate = estimate_run(CodedDataset(3, 4), teacher, tmp_path / "out", settings)
    assert teacher.calls == {} and not (tmp_path / "out").exists()
    assert (estimate.episodes, estimate.steps, estimate.calls) == (3, 12, 12)
    usage = teacher.estimate_usage(AnnotationRequest(instruction=INSTRUCTION, images={},
                                                     primary_camera="front"))
    assert (
        estimate.input_tokens == 12 * usage.input_tokens
        and estimate.output_tokens == 12 * usage.output_tokens
    )
    assert estimate.cost_usd == pytest.approx((estimate.input_tokens * 2 + estimate.output_tokens * 10) / 1e6)
    # After a partial run, the estimate counts only what is missing.
    annotate_dataset(CodedDataset(1, 4), teacher, tmp_path / "out2", settings)
    partial = estimate_run(CodedDataset(1, 4), CountingTeacher(), tmp_path / "out2", settings)
    assert partial.calls == 0 and partial.already_annotated == 4


# -- prompt answers and the scripted teacher ---------------------------------------------------
def test_answers_that_are_not_reasoning_are_malformed():
    good = {"observation": "o", "situation_analysis": "s", "spatial_reasoning": "r", "logical_steps": ["a"],
            "sub_action": "go"}
    assert reasoning_from_answer(json.dumps(good)).task_planning.sub_action == "go"
    for bad in ('{"observation": "o",', json.dumps({**good, "logical_steps": []}),
                json.dumps({**good, "observation": ""}),
                json.dumps({k: v for k, v in good.items() if k != "sub_action"})):
        with pytest.raises(MalformedAnswer):
            reasoning_from_answer(bad)


FULL = ScriptedOptions(style="full")


def test_scripted_teacher_reads_metadata_instruction_and_motion(tmp_path):
    stats = annotate_dataset(CodedDataset(1, 16, metadata=True), ScriptedTeacher(FULL), tmp_path, _settings())
    assert stats.answered == 16
    texts = AnnotationSet.load(tmp_path)
    step3 = Reasoning.parse(texts.text("ep0", 3))
    assert "the red block and the blue plate" in step3.observation
    assert "descend phase" in step3.situation_analysis
    assert step3.spatial_reasoning.startswith("The red block is 0.07 m in front of and 0.18 m below the "
                                              "gripper.")
    assert step3.task_planning.sub_action == "descend: move down"
    step10 = Reasoning.parse(texts.text("ep0", 10))
    assert "holding the red block" in step10.observation
    assert step10.task_planning.logical_steps[0] == "Lower the red block onto the blue plate."
    # Deterministic: a second run writes identical text.
    annotate_dataset(CodedDataset(1, 16, metadata=True), ScriptedTeacher(FULL), tmp_path / "again",
                     _settings())
    assert AnnotationSet.load(tmp_path / "again").texts == texts.texts


def test_scripted_teacher_without_metadata_uses_instruction_and_remaining_motion():
    actions = pick_place_actions(16)
    request = AnnotationRequest(instruction="Pick up the green cup and put it in the sink", images={},
                                primary_camera="wrist", step_index=0, episode_actions=actions)
    reasoning = ScriptedTeacher(FULL).reason(request)
    assert reasoning.spatial_reasoning.startswith("The green cup lies forward and down of the gripper")
    assert reasoning.task_planning.logical_steps[0] == "Move the gripper toward the green cup."
    assert objects_from_instruction("put the red block on the blue plate") == ("red block", "blue plate")
    assert objects_from_instruction("wave hello") == (None, None)
    assert ScriptedTeacher(FULL).reason(request) == reasoning


def test_compact_scripted_reasoning_describes_the_frame_in_a_few_learnable_words(tmp_path):
    annotate_dataset(CodedDataset(1, 16, metadata=True), ScriptedTeacher(), tmp_path, _settings())
    texts = AnnotationSet.load(tmp_path)
    assert texts.teacher.endswith("scripted-compact-v1")  # full-style annotations are told apart
    actions = pick_place_actions(16)
    phases = motion_phases(actions)
    for t in range(16):
        step = Reasoning.parse(texts.text("ep0", t))
        following = next((p for p in phases[t:] if p != phases[t]), None)
        assert step.situation_analysis == f"{phases[t]} phase; " + (f"next {following}" if following
                                                                    else "last phase")
        assert step.task_planning.sub_action.startswith(phases[t] + ":")
        # the instruction's fixed plan, whatever the step
        assert step.task_planning.logical_steps == ["reach the red block", "grasp the red block",
                                                    "carry it to the blue plate", "release it"]
    grasp = phases.index("grasp")
    # the frame of the grasp step still shows the open gripper; the one after it holds the block
    assert Reasoning.parse(texts.text("ep0", grasp)).observation.endswith("the gripper is open")
    after = Reasoning.parse(texts.text("ep0", grasp + 1))
    assert after.observation == "the gripper holds the red block; the blue plate on the table"
    assert after.spatial_reasoning.startswith("the blue plate is")  # carrying: the goal is the destination
    descend = phases.index("descend")
    # metadata: block at x 0.4, z 0.02; gripper at x 0.3 + 0.01 t, z 0.2 → ahead of it and below
    assert 0.4 - (0.3 + 0.01 * descend) >= 0.01
    assert Reasoning.parse(texts.text("ep0", descend)).spatial_reasoning == "the red block is forward down"


def test_runstats_failures_do_not_raise_in_library_use(tmp_path):
    # The library returns failures; only the CLI turns them into exit 1.
    teacher = CountingTeacher(faults={(0, 0): ["always-malformed"] * 5})
    stats = annotate_dataset(CodedDataset(1, 1), teacher, tmp_path, _settings(max_reasks=0))
    assert stats.failed == 1 and not isinstance(stats, RefineError)
    assert [r["step"] for p in (tmp_path / JOURNAL_DIR).glob("*.jsonl") for r in read_journal(p)] == []
