"""Closed-loop evaluation: vla-eval's real orchestrator drives refine's served policies in demo-sim;
Wilson intervals, per-session errors, per-episode records, and a killed evaluation resuming."""
from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import numpy as np
import pytest

from refine_core.benchmark import EvalContext
from refine_core.evaluate.baselines import DoNothingPolicy
from refine_core.evaluate.closed_loop import run_policy, summarise, wilson_interval
from refine_core.policy import Policy, PolicySettings
from tiny_policies import SlowDoNothing, kill_after_logged_episodes, tiny_backbone

ENTRY = {"benchmark": "refine_plugins.demo.vla_benchmark:DemoSimBenchmark", "name": "demo-sim",
         "episodes_per_task": 3, "params": {"seed": 0}}


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone("hf_vlm")


@pytest.mark.parametrize("wins, trials, low, high", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (19, 20, 0.7639, 0.9911),
])
def test_wilson_intervals_match_hand_computed_values(wins, trials, low, high):
    assert wilson_interval(wins, trials) == pytest.approx((low, high), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_the_orchestrator_drives_the_served_model_and_each_episode_is_recorded(backbone, tmp_path):
    policy = Policy(backbone, PolicySettings(reasoning="every_k", every=3, max_reasoning_tokens=8))
    records = run_policy(policy, ENTRY, tmp_path / "model", max_batch_size=4, camera="image_0",
                         protocol={"adapter": "identity"})
    assert [r["episode"] for r in records] == [0, 1, 2] and {r["task"] for r in records} == {"demo"}
    for record in records:
        assert record["failure_reason"] is None
        assert record["steps"] == record["step_limit"] == record["queries"]  # untrained: never succeeds
        assert not record["success"] and record["latency_per_action_s"] > 0
        # every 3rd query reasons (8 tokens + a 1-token span, or a forced one); the others only act
        fresh = -(-record["queries"] // 3)
        assert record["tokens_per_query"] * record["queries"] >= fresh * 8 + record["queries"]
        assert record["protocol"]["adapter"] == "identity"
        assert record["protocol"]["vla_eval_version"] == "0.8.0"
        assert record["protocol"]["policy"]["reasoning"] == "every_k"
    summary = summarise(records)
    assert summary["trials"] == 3 and summary["success_rate"] == 0.0
    assert summary["success_ci95"] == pytest.approx(list(wilson_interval(0, 3)))
    # a finished evaluation is read back, not run again
    assert run_policy(policy, ENTRY, tmp_path / "model") == records


def test_a_bad_observation_fails_only_its_own_session(backbone):
    from vla_eval.api import serve_background
    from vla_eval.connection import Connection

    from refine_core.serve.model_server import PolicyModelServer

    frame = np.zeros((64, 64, 3), np.uint8)
    good = {"images": {"image_0": frame}, "task_description": "pick up the cup"}

    async def exchange(url):
        first, second = Connection(url, timeout=120), Connection(url, timeout=120)
        await first.connect()
        await second.connect()
        for conn in (first, second):
            await conn.start_episode({"task": {"name": "demo"}})
        errors = []
        for bad in ({"task_description": "pick up the cup"},
                    {"images": {"image_0": frame.astype(np.float32)}, "task_description": "pick up the cup"},
                    {"images": {"image_0": frame}}):
            with pytest.raises(RuntimeError) as caught:
                await first.act(bad)
            errors.append(str(caught.value))
        action = await second.act(good)
        again = await first.act(good)
        for conn in (first, second):
            await conn.close()
        return errors, action, again, first.server_info

    server = PolicyModelServer(Policy(backbone, PolicySettings(reasoning="never")), camera="image_0")
    with serve_background(server) as handle:
        errors, action, again, info = anyio.run(exchange, handle.url)
    assert "observation_failed: ValueError: the observation has no 'images'" in errors[0]
    assert "the image must be an HxWx3 uint8 array, got (64, 64, 3) float32" in errors[1]
    assert "the observation has no 'task_description'" in errors[2]
    assert np.asarray(action["actions"]).shape == (7,) and np.asarray(again["actions"]).shape == (7,)
    described = json.loads(info["action_spec"]["refine"]["description"])
    assert described["backbone"] == "hf_vlm" and described["reasoning"] == "never"


def _rotation_matrix_by_hand(roll, pitch, yaw):
    """Extrinsic x, then y, then z (the rpy convention): R = Rz(yaw) Ry(pitch) Rx(roll)."""
    c, s = np.cos, np.sin
    rx = np.array([[1, 0, 0], [0, c(roll), -s(roll)], [0, s(roll), c(roll)]])
    ry = np.array([[c(pitch), 0, s(pitch)], [0, 1, 0], [-s(pitch), 0, c(pitch)]])
    rz = np.array([[c(yaw), -s(yaw), 0], [s(yaw), c(yaw), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rodrigues(vector):
    angle = np.linalg.norm(vector)
    k = np.array([[0, -vector[2], vector[1]], [vector[2], 0, -vector[0]], [-vector[1], vector[0], 0]]) / angle
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def test_a_server_for_an_axis_angle_controller_converts_the_rotation_and_says_so():
    """SimplerEnv's controllers read a rotation vector: the served action's rotation is the same
    rotation as the predicted roll/pitch/yaw delta, written as axis × angle; the rest is untouched."""
    from vla_eval.api import serve_background
    from vla_eval.connection import Connection

    from refine_core.evaluate.baselines import ScriptedPolicy
    from refine_core.serve.model_server import PolicyModelServer

    rpy = (0.1, -0.2, 0.3)

    class Turning(ScriptedPolicy):
        def action(self, session, observation=None):
            return np.array([0.01, 0.02, -0.03, *rpy, 0.0], np.float32)

    async def one_action(url):
        conn = Connection(url, timeout=60)
        await conn.connect()
        await conn.start_episode({"task": {"name": "demo"}})
        action = await conn.act({"images": {"image_0": np.zeros((8, 8, 3), np.uint8)},
                                 "task_description": "turn"})
        await conn.close()
        return np.asarray(action["actions"], np.float64), conn.server_info

    served = {}
    for rotation in ("rpy", "axis_angle"):
        with serve_background(PolicyModelServer(Turning(), rotation=rotation)) as handle:
            served[rotation] = anyio.run(one_action, handle.url)
    as_predicted, info = served["rpy"]
    assert as_predicted[3:6] == pytest.approx(rpy, abs=1e-6)
    converted, info = served["axis_angle"]
    assert converted[[0, 1, 2, 6]] == pytest.approx([0.01, 0.02, -0.03, 0.0], abs=1e-6)
    assert np.allclose(_rodrigues(converted[3:6]), _rotation_matrix_by_hand(*rpy), atol=1e-6)
    assert info["action_spec"]["rotation"]["format"] == "delta_axis_angle"
    assert json.loads(info["action_spec"]["refine"]["description"])["rotation"] == "axis_angle"


def _evaluate_slowly(out: str) -> None:  # the process the resume test kills
    entry = {**ENTRY, "episodes_per_task": 12}
    run_policy(SlowDoNothing(), entry, Path(out), camera="image_0")


def test_a_killed_evaluation_resumes_without_rerunning_finished_episodes(tmp_path):
    out = tmp_path / "do-nothing"
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           f"from test_closed_loop import _evaluate_slowly; _evaluate_slowly({str(out)!r})"
    log = out / "policy_log.jsonl"
    before = kill_after_logged_episodes(code, log, tmp_path / "cache")
    assert 3 <= before < 12 and not (out / "episodes.jsonl").exists()
    records = run_policy(SlowDoNothing(), {**ENTRY, "episodes_per_task": 12}, out, camera="image_0")
    assert sorted(r["episode"] for r in records) == list(range(12))
    assert all(r["queries"] == r["steps"] for r in records)  # every record joined with the server's
    rerun = len(log.read_text().splitlines()) - before
    assert rerun <= 12 - before + 1  # at most the episode in flight at the kill runs twice


def test_demo_sim_benchmark_evaluates_every_mode_and_the_baselines(backbone, tmp_path):
    from refine_core import get_registry

    benchmark = get_registry().build("benchmark", "demo-sim", {"episodes": 2, "modes": ["every_k", "never"],
                                                               "max_reasoning_tokens": 6})
    context = EvalContext(backbone=backbone, dataset=None, out_dir=tmp_path)
    result = benchmark.evaluate(context)
    table = result.summary["policies"]
    assert list(table) == ["model-every_k", "model-never", "do-nothing", "random", "expert"]
    assert {name: row["trials"] for name, row in table.items()} == dict.fromkeys(table, 2)
    assert [row["role"] for row in table.values()] == ["model", "model", "baseline", "baseline", "reference"]
    assert table["model-never"]["tokens_per_query"] == backbone.codec.span_length
    assert table["do-nothing"]["tokens_per_query"] == 0 and table["do-nothing"]["success_rate"] == 0.0
    assert table["expert"]["success_rate"] == 1.0  # through the same server as the model
    assert len(result.records) == 10 and {r["mode"] for r in result.records} == {"every_k", "never", None}
    assert all(r["protocol"]["benchmark"] == "demo-sim" for r in result.records)
    # demo-sim's dynamics read refine's own convention: nothing converted, and every record says so
    assert all(r["protocol"]["adapter"]["rotation"] == "roll/pitch/yaw deltas as predicted"
               for r in result.records)


class SleepyDoNothing(DoNothingPolicy):
    def act_batch(self, sessions, images, observations=None):
        time.sleep(3.0)  # a long generation
        return super().act_batch(sessions, images, observations)


def test_health_and_new_sessions_are_answered_during_a_long_generation():
    """Inference runs off the event loop (openpi#717 is the failure of the alternative)."""
    import threading
    import urllib.request

    from vla_eval.api import serve_background
    from vla_eval.connection import Connection

    from refine_core.serve.model_server import PolicyModelServer

    obs = {"images": {"image_0": np.zeros((32, 32, 3), np.uint8)}, "task_description": "pick up the cup"}

    async def one_action(url):
        conn = Connection(url, timeout=60)
        await conn.connect()
        await conn.start_episode({"task": {"name": "demo"}})
        action = await conn.act(obs)
        await conn.close()
        return action

    with serve_background(PolicyModelServer(SleepyDoNothing(), camera="image_0")) as handle:
        slow = threading.Thread(target=lambda: anyio.run(one_action, handle.url))
        slow.start()
        time.sleep(0.5)  # the first session's generation is under way
        started = time.perf_counter()
        health = urllib.request.urlopen(f"http://{handle.host}:{handle.port}/health", timeout=2).read()
        answered_in = time.perf_counter() - started

        async def hello(url):  # a new session's handshake completes too
            conn = Connection(url, timeout=2)
            await conn.connect()
            await conn.close()
            return conn.server_info

        info = anyio.run(hello, handle.url)
        slow.join(30)
    assert b"ok" in health and answered_in < 1.0
    assert "refine" in info["action_spec"]


def test_the_scripted_expert_succeeds_through_refines_policy_server(tmp_path):
    """The reference the model is read against: the demo's expert, served like the model."""
    from refine_plugins.demo.expert import DemoExpertPolicy

    entry = {**ENTRY, "episodes_per_task": 40, "params": {"seed": 0, "send_privileged": True}}
    records = run_policy(DemoExpertPolicy(), entry, tmp_path / "expert", max_batch_size=8, camera="image_0")
    summary = summarise(records)
    assert summary["trials"] == 40 and summary["errors"] == 0
    assert summary["success_rate"] >= 0.95 and summary["grasp_rate"] >= summary["success_rate"]
    assert all(r["queries"] == r["steps"] <= r["step_limit"] for r in records)



def test_shards_are_vla_eval_processes_sharing_one_work_queue(tmp_path):
    records = run_policy(DoNothingPolicy(), {**ENTRY, "episodes_per_task": 6}, tmp_path / "sharded", shards=2,
                         camera="image_0")
    assert sorted(r["episode"] for r in records) == list(range(6))  # each episode once, across both shards
    assert all(r["queries"] == r["steps"] for r in records)  # joined with this process's server records
    assert (tmp_path / "sharded" / "episodes.jsonl").is_file()
