"""`refine annotate` end to end in subprocesses, on a real (small) RLDS Bridge dataset read by
the `bridge` plugin: kill -9 mid-run then resume, dry-run, refusal of a foreign OUT, an
unreachable server. Each subprocess pays the TensorFlow import, so independent runs start
together."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import importorskip_or_fail

importorskip_or_fail("tensorflow_datasets")

from annotate_servers import INSTRUCTION, FakeTeacherServer, coded_frame  # noqa: E402
from conftest import run_refine  # noqa: E402
from refine_core.data.annotation_set import AnnotationSet  # noqa: E402

KEY = "AIza-cli-SECRET-90d2f1"
EPISODES, RECORDED_STEPS = 3, 8
STEPS_PER_EPISODE = RECORDED_STEPS - 2  # the bridge conversion drops the first and the last step
CODE = re.compile(r"Frame of episode (\d+) step (\d+)")


@pytest.fixture(scope="module")
def bridge_dir(tmp_path_factory):
    from refine_plugins.rlds.fixtures import write_bridge_dataset

    root = tmp_path_factory.mktemp("annotate_bridge")
    rng = np.random.default_rng(0)
    episodes = []
    for e in range(EPISODES):
        actions = rng.normal(0, 0.03, (RECORDED_STEPS, 7)).astype(np.float32)
        actions[:, 6] = [1, 1, 1, 0, 0, 0, 1, 1]
        frames = np.stack([coded_frame(e, t, size=64) for t in range(RECORDED_STEPS)])
        episodes.append({"actions": actions, "states": np.cumsum(actions, axis=0), "instruction": INSTRUCTION,
                         "images": {"image_0": frames}, "file_path": f"/bridge/scene{e}", "episode_id": e})
    write_bridge_dataset(root, episodes, image_size=(64, 64))
    return root


def _args(bridge_dir, out, *extra):
    return ["annotate", "--dataset", "bridge", "--set", f"dataset.data_dir={bridge_dir}", "--out", str(out),
            "--set", "annotate.backoff_initial=0.01", *extra]


def _env(tmp_path, base_url):
    return {"GEMINI_API_KEY": KEY, "GOOGLE_API_KEY": "", "GOOGLE_GEMINI_BASE_URL": base_url,
            "XDG_CACHE_HOME": str(tmp_path / "cache")}


def _refine_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's own start-up logging (absl/C++ lines refine does not control)."""
    noise = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} |To enable the following "
                       r"instructions)")
    return [line for line in stderr.strip().splitlines() if line and not noise.match(line)]


def _saved_codes(out) -> set[tuple[int, int]]:
    """Frame codes of every answer saved in OUT (journals and episode files)."""
    text = "".join(
        p.read_text(errors="replace")
        for p in out.rglob("*")
        if p.is_file() and p.suffix in (".json", ".jsonl")
    )
    return {(int(e), int(t)) for e, t in CODE.findall(text)}


def _all_codes() -> set[tuple[int, int]]:
    return {(e, t) for e in range(EPISODES) for t in range(1, RECORDED_STEPS - 1)}


def test_kill_9_mid_run_then_resume_asks_nothing_saved_again(tmp_path, bridge_dir):
    out = tmp_path / "out"
    with FakeTeacherServer(latency=0.3) as server:
        env = {**os.environ, "COLUMNS": "200", **_env(tmp_path, server.url)}
        args = _args(bridge_dir, out, "--teacher", "gemini", "--concurrency", "2", "--set",
                     "annotate.cache=false")
        proc = subprocess.Popen([sys.executable, "-c", "from refine_core.cli import main; main()", *args],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while sum(server.answered.values()) < 6 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        first_out, first_err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        saved = _saved_codes(out)
        assert 0 < len(saved) < len(_all_codes())
        for path in out.glob("*.json"):  # whatever was written completely is valid JSON
            json.loads(path.read_text())
        before = dict(server.requests)

        result = run_refine(*args, env=_env(tmp_path, server.url))
        assert result.returncode == 0, result.stderr
        again = {code for code in saved if server.requests[code] != before.get(code, 0)}
        assert again == set(), f"saved steps asked again: {sorted(again)}"
        assert set(server.answered) == _all_codes()
    annotations = AnnotationSet.load(out)
    assert len(annotations) == EPISODES * STEPS_PER_EPISODE
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["annotated"] == manifest["counts"]["planned"] == EPISODES * STEPS_PER_EPISODE
    assert manifest["counts"]["failed"] == 0 and not list((out / "journal").glob("*.jsonl"))
    files = "".join(p.read_bytes().decode(errors="replace") for p in out.rglob("*") if p.is_file())
    assert KEY not in files + first_out + first_err + result.stdout + result.stderr


def test_dry_run_scripted_run_foreign_out_and_unreachable_server(tmp_path, bridge_dir):
    with FakeTeacherServer() as server:
        closed = FakeTeacherServer()
        closed_url = closed.url
        closed.httpd.server_close()  # nothing listens there: connections are refused
        runs = {
            "dry": (_args(bridge_dir, tmp_path / "dry", "--teacher", "gemini", "--dry-run"), server.url),
            "scripted": (_args(bridge_dir, tmp_path / "scripted", "--teacher", "scripted", "--strategy",
                               "keyframes"),
                         server.url),
            "down": (_args(bridge_dir, tmp_path / "down", "--teacher", "gemini", "--set",
                           "annotate.max_retries=1",
                           "--set", "annotate.cache=false"), closed_url),
        }
        with ThreadPoolExecutor(len(runs)) as pool:
            futures = {name: pool.submit(run_refine, *args, env=_env(tmp_path,
                                                                     url)) for name, (args,
                                                                                      url) in runs.items()}
            results = {name: future.result() for name, future in futures.items()}
        assert sum(server.requests.values()) == 0  # the dry run asked nothing

    dry = results["dry"]
    assert dry.returncode == 0, dry.stderr
    steps = EPISODES * STEPS_PER_EPISODE
    assert f"episodes {EPISODES}, steps {steps}, asked steps {steps}" in dry.stdout
    assert f"calls {steps}, est. tokens in" in dry.stdout and "est. cost $" in dry.stdout
    assert "$0.1 / $0.4 per 1M tokens" in dry.stdout
    assert not (tmp_path / "dry").exists()

    scripted = results["scripted"]
    assert scripted.returncode == 0, scripted.stderr
    annotations = AnnotationSet.load(tmp_path / "scripted")
    assert len(annotations) == steps and annotations.teacher.startswith("scripted/")

    down = results["down"]
    assert down.returncode == 1
    lines = _refine_lines(down.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {steps} of {steps} steps failed (first: episode")
    assert "gave up after 2 attempts: Gemini unreachable" in lines[0]
    assert KEY not in down.stdout + down.stderr

    # The scripted OUT belongs to the full dataset: another dataset (identity) is refused.
    foreign = run_refine(*_args(bridge_dir, tmp_path / "scripted", "--teacher", "scripted", "--strategy",
                                "keyframes",
                                "--set", "dataset.max_episodes=1"), env=_env(tmp_path, server.url))
    assert foreign.returncode == 2
    assert len(_refine_lines(foreign.stderr)) == 1 and "Traceback" not in foreign.stderr
    assert (
        "holds annotations of dataset 'bridge'" in foreign.stderr and "choose another --out" in foreign.stderr
    )
    assert len(AnnotationSet.load(tmp_path / "scripted")) == steps
