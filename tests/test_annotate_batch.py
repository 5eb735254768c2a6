"""Batch mode with the real google-genai SDK against the local Batch API of `annotate_servers`:
every step through jobs, failures with reasons, a failed job, kill -9 while polling then resume,
dry-run at the batch price, the content cache; and several shards writing into one OUT."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from annotate_servers import CodedDataset, FakeTeacherServer
from refine_core.annotate import annotate_dataset, estimate_run, select_episodes
from refine_core.annotate.store import BATCH_DIR, JOURNAL_DIR
from refine_core.data.annotation_set import MANIFEST, AnnotationSet, episode_filename
from refine_core.config import AnnotateSettings
from refine_core.errors import RefineError, UsageError
from refine_core.registry import get_registry
from refine_core.reasoning import Reasoning
from test_annotate_pipeline import CountingTeacher

KEY = "AIza-batch-SECRET-5e71c0"
TESTS = Path(__file__).parent
ONLINE_PRICE = (300 * 0.10 + 120 * 0.40) / 1e6  # gemini-2.0-flash, the server's usage per answer


def _settings(**kw) -> AnnotateSettings:
    return AnnotateSettings(**{"cache": False, "backoff_initial": 0.01, "backoff_max": 0.05, **kw})


def _batch_teacher(server, monkeypatch, **options):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
    return get_registry().build("teacher", "gemini", {"mode": "batch", "poll_interval": 0.05, **options})


def _files_text(root: Path) -> str:
    return "".join(p.read_bytes().decode(errors="replace") for p in root.rglob("*") if p.is_file())


def _cli(out: Path, *extra: str, episodes: int = 3, steps: int = 6) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from annotate_servers import coded_refine_main; coded_refine_main()",
        "annotate",
        "--dataset",
        "coded",
        "--set",
        f"dataset.episodes={episodes}",
        "--set",
        f"dataset.steps={steps}",
        "--teacher",
        "gemini",
        "--set",
        "teacher.mode=batch",
        "--set",
        "teacher.poll_interval=0.05",
        "--set",
        "annotate.cache=false",
        "--set",
        "annotate.backoff_initial=0.01",
        "--out",
        str(out),
        *extra,
    ]


def _env(server_url: str) -> dict:
    return {**os.environ, "GEMINI_API_KEY": KEY, "GOOGLE_API_KEY": "", "GOOGLE_GEMINI_BASE_URL": server_url,
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
            "COLUMNS": "200"}


def _run_cli(args: list[str], server_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=_env(server_url), timeout=120)


# -- in process ----------------------------------------------------------------------------------
def test_every_step_goes_through_batch_jobs_at_half_price(tmp_path, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    with FakeTeacherServer() as server:
        teacher = _batch_teacher(server, monkeypatch, batch_size=4)
        settings = _settings(cache=True, cache_dir=str(tmp_path / "cache"))
        stats = annotate_dataset(CodedDataset(3, 5), teacher, tmp_path / "out", settings)
        assert server.creates == 4 and stats.jobs == 4  # 15 steps in chunks of at most 4
        assert all(len(job["steps"]) <= 4 for job in server.jobs.values())
        assert all(
            job["gets"] == server.pending_polls + server.running_polls + 1 for job in server.jobs.values()
        )
        assert dict(server.requests) == {(e, t): 1 for e in range(3) for t in range(5)}
        assert stats.answered == 15 and stats.failed == 0
        assert stats.cost == pytest.approx(15 * ONLINE_PRICE / 2)
        # The content cache is filled as online: the same question in another OUT is not submitted again.
        again = annotate_dataset(CodedDataset(3, 5), teacher, tmp_path / "again", settings)
        assert server.creates == 4 and again.cached == 15 and again.jobs == 0
    out = tmp_path / "out"
    annotations = AnnotationSet.load(out)
    assert len(annotations) == 15
    assert Reasoning.parse(annotations.text("ep2", 3)).observation.startswith("Frame of episode 2 step 3")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["counts"]["annotated"] == 15 and manifest["counts"]["input_tokens"] == 15 * 300
    assert manifest["cost_usd"] == pytest.approx(15 * ONLINE_PRICE / 2)
    assert not list((out / BATCH_DIR).iterdir()) and not list((out / JOURNAL_DIR).iterdir())
    assert any(KEY in h.get("x-goog-api-key", "") for h in server.headers_seen)
    captured = capfd.readouterr()
    assert KEY not in _files_text(tmp_path) + caplog.text + captured.out + captured.err


def test_unusable_answers_are_failed_with_reasons_and_submitted_again_next_run(tmp_path, monkeypatch):
    with FakeTeacherServer() as server:
        teacher = _batch_teacher(server, monkeypatch)
        server.faults = {(0, 1): ["malformed"], (1, 2): ["empty"], (2, 0): ["error"]}
        stats = annotate_dataset(CodedDataset(3, 4), teacher, tmp_path, _settings())
        assert server.creates == 1 and stats.answered == 9 and stats.failed == 3
        reasons = {(f["episode_id"], f["step"]): f["reason"] for f in stats.failures}
        assert "unusable answer" in reasons[("ep0", 1)]
        assert "Gemini returned no candidates" in reasons[("ep1", 2)]
        assert "Gemini batch request error 13: internal error while generating" in reasons[("ep2", 0)]
        assert all(reason.startswith("batch job batches/") for reason in reasons.values())
        episode = json.loads((tmp_path / episode_filename("ep1")).read_text())
        assert [f["step"] for f in episode["failed"]] == [2] and len(episode["steps"]) == 3
        assert json.loads((tmp_path / MANIFEST).read_text())["counts"]["failed"] == 3
        # The next run submits exactly the failed steps, in one new job.
        before = dict(server.requests)
        again = annotate_dataset(CodedDataset(3, 4), teacher, tmp_path, _settings())
        assert server.creates == 2 and again.answered == 3 and again.failed == 0
        asked = {step for step, n in server.requests.items() if n != before.get(step, 0)}
        assert asked == {(0, 1), (1, 2), (2, 0)}
    assert len(AnnotationSet.load(tmp_path)) == 12
    assert json.loads((tmp_path / MANIFEST).read_text())["counts"]["failed"] == 0


def test_expired_job_stops_with_one_line_and_keeps_other_answers(tmp_path, monkeypatch):
    with FakeTeacherServer() as server:
        teacher = _batch_teacher(server, monkeypatch, batch_size=4)
        server.job_outcome = "EXPIRED"
        with pytest.raises(RefineError) as info:
            annotate_dataset(CodedDataset(2, 4), teacher, tmp_path, _settings())
        message = str(info.value)
        assert "\n" not in message and message.startswith("2 batch jobs ended without answers (first: batch "
                                                          "job ")
        assert "ended expired" in message and "its 8 steps were not annotated" in message
        assert not list((tmp_path / BATCH_DIR).iterdir())  # the next run submits them anew
        server.job_outcome = None
        stats = annotate_dataset(CodedDataset(2, 4), teacher, tmp_path, _settings())
        assert server.creates == 4 and stats.answered == 8
    assert len(AnnotationSet.load(tmp_path)) == 8


def test_a_job_collected_twice_counts_once_and_online_mode_refuses_uncollected_jobs(tmp_path, monkeypatch):
    with FakeTeacherServer() as server:
        teacher = _batch_teacher(server, monkeypatch)
        # A kill after the answers were journaled but before the job file was deleted: the file stays.
        real_unlink = Path.unlink
        monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: None if self.parent.name == BATCH_DIR
                            else real_unlink(self, *a, **k))
        annotate_dataset(CodedDataset(2, 3), teacher, tmp_path, _settings())
        monkeypatch.setattr(Path, "unlink", real_unlink)
        assert len(list((tmp_path / BATCH_DIR).glob("*.json"))) == 1
        before = json.loads((tmp_path / MANIFEST).read_text())
        with pytest.raises(UsageError,
                           match="1 batch jobs submitted by a batch-mode run and not yet collected"):
            annotate_dataset(CodedDataset(2, 3), get_registry().build("teacher", "gemini", {}), tmp_path,
                             _settings())
        again = annotate_dataset(CodedDataset(2, 3), teacher, tmp_path, _settings())
        assert (
            server.creates == 1
            and again.answered == 0
            and again.cost == 0
            and again.episodes_done_before == 2
        )
        assert not list((tmp_path / BATCH_DIR).glob("*.json"))
    after = json.loads((tmp_path / MANIFEST).read_text())
    assert after["counts"] == before["counts"] and after["cost_usd"] == before["cost_usd"]


def test_dry_run_estimates_jobs_at_the_batch_price_and_counts_submitted_steps(tmp_path, monkeypatch):
    with FakeTeacherServer() as server:
        teacher = _batch_teacher(server, monkeypatch, batch_size=4)
        estimate = estimate_run(CodedDataset(2, 5), teacher, tmp_path / "out", _settings())
        assert (estimate.mode, estimate.calls, estimate.jobs) == ("batch", 10, 3)
        assert (estimate.input_per_million, estimate.output_per_million) == (0.05, 0.2)
        assert server.creates == 0 and not (tmp_path / "out").exists()


# -- the CLI in subprocesses -----------------------------------------------------------------------
def test_kill_9_while_polling_then_rerun_polls_the_same_jobs(tmp_path):
    out = tmp_path / "out"
    with FakeTeacherServer() as server:
        server.hold_jobs = True  # every job stays RUNNING until released
        args = _cli(out, "--set", "teacher.batch_size=8")  # 18 steps: 3 jobs
        proc = subprocess.Popen(args, env=_env(server.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not (
                server.creates == 3 and all(job["gets"] >= 3 for job in server.jobs.values())):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        first_out, first_err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, first_err
        jobs = {json.loads(p.read_text())["job"] for p in (out / BATCH_DIR).glob("*.json")}
        assert jobs == set(server.jobs)  # every job name was journaled before polling began
        for path in out.rglob("*.json"):
            json.loads(path.read_text())  # nothing torn

        dry = _run_cli(_cli(out, "--set", "teacher.batch_size=8", "--dry-run"), server.url)
        assert dry.returncode == 0, dry.stderr
        assert "calls 0," in dry.stdout and "18 steps in jobs already submitted" in dry.stdout

        server.hold_jobs = False
        result = _run_cli(args, server.url)
        assert result.returncode == 0, result.stderr
        assert server.creates == 3  # polled again, never submitted again
        assert dict(server.requests) == {(e, t): 1 for e in range(3) for t in range(6)}
        assert "batch jobs 3;" in result.stdout and "answered 18" in result.stdout
    assert len(AnnotationSet.load(out)) == 18
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["counts"]["annotated"] == manifest["counts"]["planned"] == 18
    assert manifest["cost_usd"] == pytest.approx(18 * ONLINE_PRICE / 2)
    assert not list((out / BATCH_DIR).iterdir()) and not list((out / JOURNAL_DIR).iterdir())
    assert (
        KEY
        not in _files_text(out)
        + first_out
        + first_err
        + dry.stdout
        + dry.stderr
        + result.stdout
        + result.stderr
    )


def test_failed_job_is_one_line_exit_1_and_dry_run_shows_the_batch_price(tmp_path):
    with FakeTeacherServer() as server:
        server.job_outcome = "FAILED"
        failed = _run_cli(_cli(tmp_path / "out", episodes=2, steps=3), server.url)
        dry = _run_cli(_cli(tmp_path / "dry", "--set", "teacher.batch_size=4", "--dry-run"), server.url)
        assert server.creates == 1
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert lines[0].startswith("error: batch job batches/") and "ended failed" in lines[0]
    assert "its 6 steps were not annotated" in lines[0] and "run the same command again" in lines[0]
    assert dry.returncode == 0, dry.stderr
    assert "calls 18," in dry.stdout and "batch mode: 5 jobs of up to 4 requests" in dry.stdout
    assert "$0.05 / $0.2 per 1M tokens in/out, batch price" in dry.stdout
    assert not (tmp_path / "dry").exists()
    assert KEY not in failed.stdout + failed.stderr + dry.stdout + dry.stderr


# -- several shards, one OUT ---------------------------------------------------------------------
def _check_union(out: Path, episodes: int, steps: int) -> dict:
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["episodes"]) == {f"ep{e}" for e in range(episodes)}
    assert len(AnnotationSet.load(out)) == episodes * steps
    counts = manifest["counts"]
    assert (
        counts["annotated"] == counts["planned"] == counts["asked"] == episodes * steps
        and counts["failed"] == 0
    )
    per_episode = manifest["episode_counts"].values()
    assert sum(c["annotated"] for c in per_episode) == counts["annotated"]
    assert manifest["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in per_episode))
    assert not list((out / JOURNAL_DIR).glob("*.jsonl"))
    return manifest


def test_two_shards_at_once_into_one_out(tmp_path, monkeypatch):
    """Online and batch: both shards run concurrently (threads; each takes the OUT's locks like a process)."""
    teachers = [CountingTeacher(delay=0.01), CountingTeacher(delay=0.01)]
    threads = [threading.Thread(target=annotate_dataset, args=(CodedDataset(8, 4), teachers[i],
                                                               tmp_path / "online",
                                                               _settings(concurrency=2),
                                                               (i, 2))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(sum(t.calls.values()) for t in teachers) == 32 and not set(teachers[0].calls) & set(
        teachers[1].calls
    )
    _check_union(tmp_path / "online", 8, 4)

    with FakeTeacherServer() as server:
        teachers = [_batch_teacher(server, monkeypatch,
                                   batch_size=5) for _ in range(2)]  # a client per "process"
        results: list = []
        threads = [threading.Thread(target=lambda i=i: results.append(annotate_dataset(
            CodedDataset(8, 4), teachers[i], tmp_path / "batch", _settings(), (i, 2)))) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 2 and sum(r.answered for r in results) == 32
        assert dict(server.requests) == {(e, t): 1 for e in range(8) for t in range(4)}
    _check_union(tmp_path / "batch", 8, 4)


def test_two_shard_processes_in_batch_mode_into_one_out(tmp_path):
    out = tmp_path / "out"
    with FakeTeacherServer() as server:
        procs = [subprocess.Popen(_cli(out, "--shard", f"{i}/2", "--set", "teacher.batch_size=5",
                                       episodes=8, steps=4), env=_env(server.url), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        outputs = [proc.communicate(timeout=120) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outputs
        assert dict(server.requests) == {(e, t): 1 for e in range(8) for t in range(4)}
    manifest = _check_union(out, 8, 4)
    assert manifest["cost_usd"] == pytest.approx(32 * ONLINE_PRICE / 2)
    assert not list((out / BATCH_DIR).iterdir())


def test_a_shard_never_clobbers_what_another_shard_wrote_meanwhile(tmp_path):
    """Shard 0 re-runs while shard 1 repairs its failed episode: shard 0's manifest writes keep shard 1's
    newer entries; and a journal held by a live shard is still read, so nothing journaled is asked again."""
    dataset = CodedDataset(6, 3)
    bad = {i: int(next(select_episodes(dataset, "train", (i, 2))).episode_id[2:]) for i in range(2)}
    faults = {(bad[0], 1): ["always-malformed"] * 9, (bad[1], 2): ["always-malformed"] * 9}
    for i in range(2):
        annotate_dataset(dataset, CountingTeacher(faults=faults), tmp_path, _settings(max_reasks=0), (i, 2))
    assert json.loads((tmp_path / MANIFEST).read_text())["counts"]["failed"] == 2

    class RepairsShard1Meanwhile(CountingTeacher):
        started = False

        async def annotate(self, request):
            if not self.started:  # while shard 0 runs (its manifest already read), shard 1 completes
                self.started = True
                await asyncio.to_thread(annotate_dataset, dataset, shard1, tmp_path, _settings(), (1, 2))
            return await super().annotate(request)

    shard1 = CountingTeacher()
    shard0 = RepairsShard1Meanwhile()
    annotate_dataset(dataset, shard0, tmp_path, _settings(), (0, 2))
    assert set(shard0.calls) == {(bad[0], 1)} and set(shard1.calls) == {(bad[1], 2)}
    _check_union(tmp_path, 6, 3)


def test_a_journal_held_by_a_live_shard_is_still_read(tmp_path):
    """A killed shard-0 run left a journal; shard 1 starts first and takes it over (locks it); shard 0,
    started meanwhile, still reads it and asks only what is missing."""
    dataset = CodedDataset(6, 3)
    mine = [ep.episode_id for ep in select_episodes(dataset, "train", (0, 2))]
    annotate_dataset(dataset, CountingTeacher(), tmp_path, _settings(max_episodes=1))  # claims OUT
    journal = tmp_path / JOURNAL_DIR / "999-1.jsonl"
    reasoning = {"situation_analysis": "s", "spatial_reasoning": "r",
                 "task_planning": {"logical_steps": ["a"], "sub_action": "go"}}
    records = [{"episode_id": mine[0], "step": t, "teacher": "counting/m1/p1", "usage": {"input": 100,
                                                                                         "output": 50},
                "attempts": 1, "cached": False, "reasoning": {"observation": f"journaled {t}", **reasoning}}
               for t in range(3)]
    journal.write_text("".join(json.dumps(r) + "\n" for r in records))

    class StartsShard0Meanwhile(CountingTeacher):
        started = False

        async def annotate(self, request):
            if not self.started:
                self.started = True
                await asyncio.to_thread(annotate_dataset, dataset, shard0, tmp_path, _settings(), (0, 2))
            return await super().annotate(request)

    shard0 = CountingTeacher()
    annotate_dataset(dataset, StartsShard0Meanwhile(), tmp_path, _settings(), (1, 2))
    assert not {(int(mine[0][2:]), t) for t in range(3)} & set(shard0.calls)
    assert Reasoning.parse(AnnotationSet.load(tmp_path).text(mine[0], 1)).observation == "journaled 1"
    _check_union(tmp_path, 6, 3)
