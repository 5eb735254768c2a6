"""`annotate.workers`: N shard processes into one OUT give the annotations of one process, one merged
progress and summary, one line for a failed worker, and resume like any run.

Workers are spawned processes: they import this module by name (the test folder is on the path
they inherit) to build their dataset and teacher.
"""
from __future__ import annotations

import json

import pytest

from annotate_servers import CodedDataset, FakeTeacherServer
from refine_core.annotate import annotate_dataset
from refine_core.annotate.run import AnnotationProgress
from refine_core.annotate.workers import (annotate_with_workers, check_workers, merge_progress,
    worker_settings, worker_shards)
from refine_core.config import AnnotateSettings
from refine_core.data.annotation_set import MANIFEST, AnnotationSet
from refine_core.errors import RefineError, UsageError
from refine_core.registry import get_registry
from refine_core.annotate.selection import select_episodes


def build(teacher: str, episodes: int = 7, steps: int = 5):
    """What each worker runs: a coded dataset and a registered teacher (gemini reads the env)."""
    if teacher == "broken":
        raise UsageError("the teacher's key is not set")
    return CodedDataset(episodes, steps, metadata=True), get_registry().build("teacher", teacher, {})


def _settings(**kw) -> AnnotateSettings:
    return AnnotateSettings(**{"cache": False, "concurrency": 4, "backoff_initial": 0.01, **kw})


def _episode_files(out) -> dict[str, dict]:
    manifest = json.loads((out / MANIFEST).read_text())
    files = {}
    for episode_id, name in manifest["episodes"].items():
        steps = json.loads((out / name).read_text())["steps"]
        files[episode_id] = [(s["step"], s["text"], s["source"]) for s in steps]
    return files


def test_worker_shards_are_the_parent_shard_and_split_the_totals():
    for shard in ((0, 1), (1, 3)):
        parts = worker_shards(shard, 2)
        dataset = CodedDataset(12, 1)
        whole = [e.episode_id for e in select_episodes(dataset, "train", shard)]
        mine = [e.episode_id for part in parts for e in select_episodes(dataset, "train", part)]
        assert sorted(mine) == sorted(whole) and len(mine) == len(set(mine))
    settings = _settings(concurrency=5, requests_per_minute=600, workers=2)
    halves = [worker_settings(settings, 2, k) for k in range(2)]
    assert [h.concurrency for h in halves] == [3, 2] and all(h.workers == 1 for h in halves)
    assert [h.requests_per_minute for h in halves] == [300, 300] and halves[0].tokens_per_minute is None
    merged = merge_progress([AnnotationProgress(planned=3, settled=1, producer_done=True), None], 0.0)
    assert merged.planned == 3 and not merged.producer_done  # a worker that has not reported yet


def test_two_workers_write_what_one_process_writes_with_one_summary(tmp_path):
    dataset, teacher = build("scripted")
    single = annotate_dataset(dataset, teacher, tmp_path / "one", _settings())
    seen: list[AnnotationProgress] = []
    stats = annotate_with_workers(build, ("scripted",), tmp_path / "two", _settings(workers=2),
                                  on_progress=seen.append)
    assert _episode_files(tmp_path / "two") == _episode_files(tmp_path / "one")
    assert (stats.episodes, stats.planned, stats.answered, stats.failed) == (7, 35, 35, 0)
    assert (single.episodes, single.planned, single.answered) == (7, 35, 35)
    assert seen[-1] is stats and stats.producer_done and len(AnnotationSet.load(tmp_path / "two")) == 35
    manifest = json.loads((tmp_path / "two" / MANIFEST).read_text())
    assert manifest["counts"]["annotated"] == 35 and len(manifest["episodes"]) == 7
    # Everything is done: a rerun, with another worker count, asks nothing again.
    again = annotate_with_workers(build, ("scripted",), tmp_path / "two", _settings(workers=3))
    assert again.answered == 0 and again.episodes_done_before == 7


def test_gemini_workers_against_the_local_server_match_one_process(tmp_path, monkeypatch):
    with FakeTeacherServer() as server:
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
        dataset, teacher = build("gemini", 4, 3)
        annotate_dataset(dataset, teacher, tmp_path / "one", _settings())
        stats = annotate_with_workers(build, ("gemini", 4, 3), tmp_path / "two", _settings(workers=2))
    assert stats.answered == 12 and stats.failed == 0
    assert _episode_files(tmp_path / "two") == _episode_files(tmp_path / "one")
    assert max(server.answered.values()) == 2  # each step once per OUT: never twice across workers


def test_a_failed_worker_is_one_line_and_a_foreign_out_is_refused_before_any_starts(tmp_path):
    with pytest.raises(RefineError) as failed:
        annotate_with_workers(build, ("broken",), tmp_path / "out", _settings(workers=2))
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("annotate worker 0 (shard 0/2) failed: the teacher's key")
    assert "(1 more workers failed)" in message
    dataset, teacher = build("scripted")
    annotate_dataset(CodedDataset(2, 2, tag="other"), teacher, tmp_path / "taken", _settings())
    with pytest.raises(UsageError):
        check_workers(dataset, teacher, tmp_path / "taken", _settings(workers=2))
