"""SimplerEnv through vla-eval: upstream's grid, and vla-eval's real orchestrator running the sim side
(refine_simpler_sim, a SimplerEnvBenchmark) in another interpreter (`benchmark.python`, here this
one with the stand-in SimplerEnv of tests/simpler_standin on its PYTHONPATH) against refine's
policy server. Checked against hand-computed numbers: the rotation conversion and the gripper
mappings that reach the env, grasp at any step and success at the final step, the records'
descriptors and protocol; a split evaluation merges; a killed one resumes; without SimplerEnv,
`refine eval` says in one line how to get it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import importorskip_or_fail, run_refine
from refine_core import ScriptedPolicy, get_registry
from refine_core.benchmark import EvalContext

importorskip_or_fail("vla_eval")

STANDIN = Path(__file__).parent / "simpler_standin"
ROTATIONS = [(0.1, 0.0, 0.0), (0.0, 0.0, -0.2), (0.1, 0.2, 0.3)]  # roll, pitch, yaw of queries 0..2
# the same as axis × angle, worked by hand: Rz(0.3)·Ry(0.2)·Rx(0.1) → log map
AXIS_ANGLES = [(0.1, 0.0, 0.0), (0.0, 0.0, -0.2), (0.068925, 0.213226, 0.288749)]
OPEN = [1.0, 0.6, 0.4, 0.0, 1.0] + [1.0] * 5 + [0.0] * 10  # the policy's gripper (1 open) per query


class Scripted(ScriptedPolicy):
    """Query i: translation (0.01, -0.02, 0.03) and ROTATIONS[i] for i < 3, then still; gripper OPEN[i]."""

    name = "scripted"

    def action(self, session, observation):
        i = session.queries
        action = np.zeros(7, np.float32)
        if i < 3:
            action[:6] = (0.01, -0.02, 0.03, *ROTATIONS[i])
        action[6] = OPEN[i] if i < len(OPEN) else 0.0
        return action


class Slow(Scripted):
    def act_batch(self, sessions, images, observations=None):
        time.sleep(0.03)
        return super().act_batch(sessions, images, observations)


@pytest.fixture
def standin(monkeypatch, tmp_path):
    """The stand-in SimplerEnv on the benchmark side's path; the file its envs log into."""
    path = os.pathsep.join(filter(None, [str(STANDIN), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    log = tmp_path / "standin.jsonl"
    monkeypatch.setenv("SIMPLER_STANDIN_LOG", str(log))
    return log


def build(name: str, **options):
    return get_registry().build("benchmark", name, options)


def evaluate(benchmark, out: Path, shard=None):
    benchmark.policies = lambda context: [("scripted", None, Scripted())]
    context = EvalContext(backbone=None, dataset=None, out_dir=out, extra={"shard": shard} if shard else {})
    return benchmark.evaluate(context)


def env_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the grid ----------------------------------------------------------------------------------------
def test_the_widowx_grid_is_upstreams_4_tasks_by_24_layouts_by_3_repeats():
    episodes = build("simpler-widowx").episodes
    assert len(episodes) == 4 * 24 * 3
    tasks = ["widowx_spoon_on_towel", "widowx_carrot_on_plate", "widowx_stack_cube",
             "widowx_put_eggplant_in_basket"]
    assert Counter(e.task for e in episodes) == dict.fromkeys(tasks, 72)
    carrot = [e for e in episodes if e.task == "widowx_carrot_on_plate"]
    assert [e.episode for e in carrot] == list(range(72))
    assert [e.reset_options["obj_init_options"]["episode_id"] for e in carrot] == list(range(24)) * 3
    assert [e.simpler["repeat"] for e in carrot] == [0] * 24 + [1] * 24 + [2] * 24
    assert [e.seed for e in carrot] == list(range(72))  # the env reset seed: seed + episode number
    assert {e.task: e.max_episode_steps for e in episodes}["widowx_put_eggplant_in_basket"] == 120
    assert {e.max_episode_steps for e in carrot} == {60} and all(e.prepackaged for e in episodes)
    assert {e.gripper for e in episodes} == {"binary"}


def test_the_google_robot_grids_are_upstreams():
    vm = build("simpler-google-vm").episodes
    assert Counter(e.simpler["family"] for e in vm) == {"coke_can": 3 * 25 * 4, "move_near": 60 * 4,
                                                        "drawer": 9 * 6 * 4}
    assert {e.simpler["urdf_version"] for e in vm} == {None, "recolor_tabletop_visual_matching_1",
                                                       "recolor_tabletop_visual_matching_2",
                                                       "recolor_cabinet_visual_matching_1"}
    coke = [e for e in vm if e.task == "google_robot_pick_vertical_coke_can"
            and e.simpler["urdf_version"] is None]
    positions = np.array([e.reset_options["obj_init_options"]["init_xy"] for e in coke])
    assert positions[:6] == pytest.approx(np.array(
        [[-0.35, -0.02], [-0.35, 0.09], [-0.35, 0.2], [-0.35, 0.31], [-0.35, 0.42], [-0.2925, -0.02]]))
    assert positions[-1] == pytest.approx([-0.12, 0.42])
    assert coke[0].make_kwargs["laid_vertically"] is True and coke[0].make_kwargs["sim_freq"] == 513
    drawer = {e.simpler["robot_pose"]: e for e in vm if e.task == "google_robot_close_middle_drawer"
              and e.simpler["urdf_version"] is None}
    assert list(drawer) == ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]
    c1 = drawer["c1"]  # (0.765, 0.222), yaw -0.025: upstream's quaternion (-sin(yaw/2), 0, 0, cos(yaw/2))
    robot = c1.reset_options["robot_init_options"]
    assert robot["init_xy"] == [0.765, 0.222]
    assert robot["init_rot_quat"] == pytest.approx([0.0124997, 0, 0, 0.9999219], abs=1e-6)
    assert c1.make_kwargs["rgb_overlay_path"].endswith("real_inpainting/open_drawer_c1.png")
    assert c1.make_kwargs["shader_dir"] == "rt" and c1.max_episode_steps == 113
    assert c1.simpler["drawer_level"] == "middle" and c1.simpler["subtask"] == "close"
    near = next(e for e in vm if e.task == "google_robot_move_near_v0").reset_options["robot_init_options"]
    assert near["init_xy"] == [0.35, 0.21]
    assert near["init_rot_quat"] == pytest.approx([0.044985, 0, 0, 0.998988], abs=1e-6)  # yaw -0.09

    va = build("simpler-google-va").episodes
    families = Counter(e.simpler["family"] for e in va)
    assert families == {"coke_can": 3 * 25 * 11, "move_near": 60 * 10, "drawer": 6 * 9 * 7}
    excluded = Counter(e.simpler["variant"] for e in va if not e.simpler["in_average"])
    assert excluded == {"camera_1": 75 + 60, "camera_2": 75 + 60}  # run, but not in upstream's average
    assert len({e.simpler["variant"] for e in va if e.simpler["family"] == "drawer"}) == 7
    assert not any("rgb_overlay_path" in e.make_kwargs for e in va)
    for episodes in (vm, va):
        assert len({(e.task, e.episode) for e in episodes}) == len(episodes)
        assert {e.gripper for e in episodes} == {"relative_sticky"}


def test_a_quick_check_takes_a_subset_with_the_same_episode_numbers():
    benchmark = build("simpler-google-vm", tasks=["google_robot_open_top_drawer"], episodes=2, max_steps=7)
    assert [(e.episode, e.simpler["robot_pose"]) for e in benchmark.episodes] == [
        (0, "a0"), (1, "a1"), (9, "a0"), (10, "a1"), (18, "a0"), (19, "a1"), (27, "a0"), (28, "a1")]
    assert {e.max_episode_steps for e in benchmark.episodes} == {7}
    from refine_core import UsageError

    with pytest.raises(UsageError, match="Unknown task 'widowx_carrot_on_plate' of simpler-google-vm"):
        build("simpler-google-vm", tasks=["widowx_carrot_on_plate"])


# -- through vla-eval's orchestrator, in another interpreter -------------------------------------------
def test_widowx_rotation_gripper_grasp_and_success_reach_the_records(standin, tmp_path):
    benchmark = build("simpler-widowx", tasks=["widowx_carrot_on_plate"], episodes=2, repeats=2, max_steps=5,
                      python=sys.executable)
    records = evaluate(benchmark, tmp_path / "out").records
    assert [(r["task"], r["episode"]) for r in records] == [("widowx_carrot_on_plate", e)
                                                            for e in (0, 1, 24, 25)]
    # the stand-in's layouts: even ones grasp at step 2 and succeed at step 3 only, odd ones at the end
    assert [(r["success"], r["grasp"]) for r in records] == [(False, True), (True, False)] * 2
    assert all(r["failure_reason"] is None and r["steps"] == 5 for r in records)
    first = records[0]
    assert first["simpler"] == {
        "robot": "widowx", "setting": "vm", "family": "widowx", "subtask": "carrot_on_plate",
        "drawer_level": None, "urdf_version": None, "variant": "base", "in_average": True, "repeat": 0,
        "robot_pose": None, "grasp_measured": True, "layout": 0}
    assert [r["simpler"]["repeat"] for r in records] == [0, 0, 1, 1]
    assert first["episode_stats"] == {"is_src_obj_grasped": True, "src_on_target": False}
    control = "arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos"
    assert first["setup"]["control_mode"] == control
    assert [r["setup"]["seed"] for r in records] == [0, 1, 24, 25]  # seed + episode number
    assert first["setup"]["applied"] == {"simpler_env": {"version": None, "commit": None}, "robot": "widowx",
                                         "control_mode": control, "max_episode_steps": 5}
    protocol = first["protocol"]
    assert protocol["adapter"]["rotation"] == "roll/pitch/yaw deltas → axis-angle (extrinsic xyz)"
    assert protocol["adapter"]["gripper"]["widowx"].startswith("1 open / 0 closed → +1 (open) if > 0.5")
    assert protocol["policy"]["actions_per_query"] == 1 and protocol["vla_eval_version"] == "0.8.0"
    assert protocol["control_mode"] == {"widowx": control} and protocol["refine_version"]
    assert len({json.dumps(r["protocol"], sort_keys=True) for r in records}) == 1  # what a merge compares

    envs = env_log(standin)
    assert [(e["env_id"], e["seed"], e["options"]) for e in envs] == [
        ("PutCarrotOnPlateInScene-v0", seed, {"obj_init_options": {"episode_id": layout}})
        for seed, layout in ((0, 0), (1, 1), (24, 0), (25, 1))]
    assert envs[0]["kwargs"] == {"obs_mode": "rgbd", "prepackaged_config": True}  # simpler_env.make's
    actions = np.array(envs[0]["actions"])
    assert actions[:3, :3] == pytest.approx(np.tile([0.01, -0.02, 0.03], (3, 1)), abs=1e-6)
    assert actions[:3, 3:6] == pytest.approx(np.array(AXIS_ANGLES), abs=1e-5)  # rpy → axis-angle
    assert actions[:, 6].tolist() == [1.0, 1.0, -1.0, -1.0, 1.0]  # OPEN binarised: > 0.5 open (+1)


def test_google_robot_gripper_is_relative_and_sticky_and_cells_reach_the_env(standin, tmp_path):
    benchmark = build("simpler-google-vm", tasks=["google_robot_pick_horizontal_coke_can",
                                                   "google_robot_open_top_drawer"], episodes=2, max_steps=20,
                      python=sys.executable)
    records = evaluate(benchmark, tmp_path / "out").records
    coke = [r for r in records if r["task"] == "google_robot_pick_horizontal_coke_can"]
    assert [r["episode"] for r in coke] == [0, 1, 25, 26, 50, 51, 75, 76]
    assert [r["simpler"]["urdf_version"] for r in coke[::2]] == [
        None, "recolor_tabletop_visual_matching_1", "recolor_tabletop_visual_matching_2",
        "recolor_cabinet_visual_matching_1"]
    assert [(r["success"], r["grasp"]) for r in coke] == [(False, True), (True, False)] * 4
    drawer = [r for r in records if r["task"] == "google_robot_open_top_drawer"]
    assert [(r["episode"], r["simpler"]["robot_pose"]) for r in drawer[:2]] == [(0, "a0"), (1, "a1")]
    assert all(not r["success"] and not r["grasp"] and not r["simpler"]["grasp_measured"] for r in drawer)
    assert drawer[0]["simpler"]["subtask"] == "open" and drawer[0]["simpler"]["drawer_level"] == "top"
    assert drawer[0]["episode_stats"] == {"qpos": "0.000"}

    envs = env_log(standin)
    assert len(envs) == 16
    # upstream's Google Robot gripper: relative = previous open − open (0 first), held 15 steps once
    # |relative| > 0.5: the open command at query 4 holds -1 through query 18 (swallowing the close at
    # query 10), then query 19 sees no change
    expected = [0.0, 0.4, 0.2, 0.4] + [-1.0] * 15 + [0.0]
    for env in envs:
        assert [a[6] for a in env["actions"]] == pytest.approx(expected, abs=1e-6)
        assert np.array(env["actions"])[:3, 3:6] == pytest.approx(np.array(AXIS_ANGLES), abs=1e-5)
    a1 = next(e for e in envs if e["env_id"] == "OpenTopDrawerCustomInScene-v0"
              and e["kwargs"]["urdf_version"] == "recolor_cabinet_visual_matching_1"
              and e["options"]["robot_init_options"]["init_xy"] == [0.765, -0.182])
    overlay = "/standin/ManiSkill2_real2sim/data/real_inpainting/open_drawer_a1.png"  # {ASSET_DIR} filled in
    assert a1["kwargs"]["rgb_overlay_path"] == overlay
    assert a1["kwargs"]["station_name"] == "mk_station_recolor" and a1["kwargs"]["shader_dir"] == "rt"
    quat = a1["options"]["robot_init_options"]["init_rot_quat"]
    assert quat == pytest.approx([0.0099998, 0, 0, 0.99995], abs=1e-6)  # yaw -0.02
    can = next(e for e in envs if e["env_id"] == "GraspSingleOpenedCokeCanInScene-v0")
    assert can["kwargs"]["lr_switch"] is True
    assert can["options"]["obj_init_options"] == {"init_xy": [-0.35, -0.02]}
    protocol = records[0]["protocol"]
    assert protocol["adapter"]["gripper"]["google_robot"].startswith("relative = previous open − open")


def test_the_parts_of_a_split_evaluation_merge_into_the_whole(standin, tmp_path):
    from refine_core.evaluate.shards import begin_shard, finish_shard, merge_shards, shard_identity

    options = {"tasks": ["widowx_carrot_on_plate", "widowx_stack_cube"], "episodes": 2, "repeats": 1,
               "max_steps": 3, "python": sys.executable}
    parts = []
    for index in range(2):
        benchmark = build("simpler-widowx", **options)
        identity = shard_identity((index, 2), {"step": 1, "sha256": "0"}, benchmark, "simpler-widowx")
        out = tmp_path / f"part{index}"
        begin_shard(out, identity)
        result = finish_shard(out, identity, evaluate(benchmark, out, shard=(index, 2)))
        parts.append(out)
        assert len(result.records) == 2  # every second of the 4 episodes
    merged = merge_shards(parts, tmp_path / "merged")
    assert [(r["task"], r["episode"]) for r in merged.records] == [
        ("widowx_carrot_on_plate", 0), ("widowx_carrot_on_plate", 1), ("widowx_stack_cube", 0),
        ("widowx_stack_cube", 1)]
    assert merged.summary["policies"]["scripted"]["trials"] == 4
    # the paper's tables are of the whole, not of a part: each task's cell counts both parts' episodes
    wins = sum(r["success"] for r in merged.records if r["task"] == "widowx_carrot_on_plate")
    table1 = next(t for t in merged.summary["tables"] if t["title"].startswith("Table 1"))
    row = next(r for r in table1["rows"] if r[0] == "scripted")
    column = next(i for i, name in enumerate(table1["columns"]) if "carrot" in name and "success" in name)
    assert row[column].endswith(f"({wins}/2)")
    assert (tmp_path / "merged" / "table1_widowx.md").read_text() == merged.files["table1_widowx.md"]


def _evaluate_slowly(out: str) -> None:  # the process the resume test kills
    from refine_core.evaluate.closed_loop import run_policy

    benchmark = build("simpler-widowx", tasks=["widowx_carrot_on_plate"], episodes=12, repeats=1, max_steps=3,
                      python=sys.executable)
    run_policy(Slow(), benchmark.entry("slow"), Path(out), camera="primary", rotation="axis_angle",
               side=benchmark.side(), shard_split="entry")


def test_a_killed_evaluation_resumes_without_rerunning_finished_episodes(standin, tmp_path):
    out = tmp_path / "slow"
    log = out / "policy_log.jsonl"
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           f"from test_simpler import _evaluate_slowly; _evaluate_slowly({str(out)!r})"
    # its own process group: the kill takes the vla-eval process it started along
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = len(log.read_text().splitlines())
    assert 3 <= before < 12 and not (out / "episodes.jsonl").exists()

    from refine_core.evaluate.closed_loop import run_policy

    benchmark = build("simpler-widowx", tasks=["widowx_carrot_on_plate"], episodes=12, repeats=1, max_steps=3,
                      python=sys.executable)
    rows = run_policy(Scripted(), benchmark.entry("slow"), out, camera="primary", rotation="axis_angle",
                      side=benchmark.side(), shard_split="entry")
    rows = benchmark.finish_records(rows)
    assert [r["episode"] for r in rows] == list(range(12))  # each once
    assert all(r["queries"] == r["steps"] == 3 for r in rows)  # each joined with the server's record
    assert len(log.read_text().splitlines()) - before <= 12 - before + 1  # at most the one in flight reruns


FAKE_DOCKER = """
import json, os, sys
args = sys.argv[1:]
config = None
if args[:1] == ["run"]:  # the config vla-eval mounts into the container, read while it exists
    config = open(next(a for a in args if a.endswith(":/etc/vla-eval.yaml:ro")).split(":")[0]).read()
with open(os.environ["FAKE_DOCKER_CALLS"], "a") as handle:
    handle.write(json.dumps({"args": args, "config": config}) + "\\n")
sys.exit(7 if args[:1] == ["run"] else 0)  # info / image inspect succeed; the container "fails"
"""


def test_docker_runs_vla_evals_image_with_the_sim_side_mounted_on_its_pythonpath(tmp_path, monkeypatch):
    """No Docker daemon here: a fake `docker` records what vla-eval's launcher asks of it."""
    if Path("/.dockerenv").exists():
        pytest.skip("inside a container vla-eval never starts an image (refused: see the one-line test)")
    import yaml

    from refine_benchmarks.simpler.closed_loop import SIM_DIR
    from refine_core import RefineError

    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\n{FAKE_DOCKER}")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_CALLS", str(tmp_path / "calls.jsonl"))
    benchmark = build("simpler-widowx", tasks=["widowx_carrot_on_plate"], episodes=1, repeats=1, docker=True)
    with pytest.raises(RefineError, match="a vla-eval shard failed"):
        evaluate(benchmark, tmp_path / "out")
    run = next(call for call in env_log(tmp_path / "calls.jsonl") if call["args"][0] == "run")
    args = run["args"]
    assert args[args.index("--network") + 1] == "host"  # the container reaches refine's server on 127.0.0.1
    assert f"{SIM_DIR}:/opt/refine_simpler_sim:ro" in args
    assert args[args.index("PYTHONPATH=/opt/refine_simpler_sim") - 1] == "-e"
    image = args.index("ghcr.io/allenai/vla-evaluation-harness/simpler:latest")
    assert args[image + 1:image + 5] == ["run", "--no-docker", "--config", "/etc/vla-eval.yaml"]
    config = yaml.safe_load(run["config"])
    entry = config["benchmarks"][0]
    assert entry["benchmark"] == "refine_simpler_sim:RefineSimplerBenchmark"
    assert entry["episodes_per_task"] == 1
    assert [task["name"] for task in entry["params"]["episodes"]] == ["widowx_carrot_on_plate#0"]
    assert config["output_dir"] == "/workspace/results" and config["render"] == "gpu"
    assert config["server"]["url"].startswith("ws://127.0.0.1:")


# -- without SimplerEnv ----------------------------------------------------------------------------------
def _docker_refusal() -> str | None:
    """Why benchmark.docker=true is refused on this machine (None: it is not)."""
    if shutil.which("docker") is None:
        return "error: benchmark.docker=true needs Docker: the `docker` command is not on PATH"
    if Path("/.dockerenv").exists():
        return "error: benchmark.docker=true cannot start vla-eval's image from inside a container"
    return None


@pytest.mark.parametrize("settings, message", [
    ([], "error: simpler-widowx runs in SimplerEnv, which this Python cannot import: build SimplerEnv (with "
         "vla-eval) in its own Python 3.10 environment and pass --set benchmark.python=/path/to/its/bin/"
         "python, or run vla-eval's SimplerEnv image with --set benchmark.docker=true (README: 'Evaluating "
         "in SimplerEnv')"),
    (["benchmark.python=/nowhere/bin/python"], "error: benchmark.python=/nowhere/bin/python does not run: "),
    (["benchmark.python=" + sys.executable], f"error: benchmark.python={sys.executable} cannot import "
                                             "simpler_env: install SimplerEnv and vla-eval 0.8.0 there"),
    (["benchmark.docker=true"], _docker_refusal()),
])
def test_without_simpler_env_refine_eval_says_how_to_get_it_in_one_line(settings, message, tmp_path):
    if message is None:
        pytest.skip("Docker is usable here: benchmark.docker=true is not refused")
    from refine_core.config import RunConfig
    from refine_core.training.checkpoint import FORMAT_VERSION, RUN_INFO

    # refused before the weights load: a checkpoint's refine.json is all it reads
    checkpoint = tmp_path / "step-0000001"
    checkpoint.mkdir()
    (checkpoint / RUN_INFO).write_text(json.dumps({"format": FORMAT_VERSION,
                                                   "config": RunConfig().model_dump(mode="json")}))
    args = [word for setting in settings for word in ("--set", setting)]
    env = {"PYTHONPATH": os.pathsep.join(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                         if p and Path(p).resolve() != STANDIN.resolve())}
    result = run_refine("eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
                        "--benchmark", "simpler-widowx", *args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (tmp_path / "out").exists()
