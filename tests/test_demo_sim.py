"""`demo-sim`: the demo task's closed-loop simulator, its scripted expert, and the vla-eval benchmark
driven by vla-eval's real orchestrator against model servers served in-process."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from refine_plugins.demo.expert import expert_action
from refine_plugins.demo.render import render_frame
from refine_plugins.demo.scene import CELL, GRASP, GRID, HOVER, generate_episode, generate_episodes
from refine_plugins.demo.sim import MAX_EXPERT_STEPS, DemoSim, sim_rng, sim_scene

from conftest import importorskip_or_fail

vla_eval = importorskip_or_fail("vla_eval")

from vla_eval.api import run, serve_background  # noqa: E402
from vla_eval.model_servers.predict import PredictModelServer  # noqa: E402
from vla_eval.specs import IMAGE_RGB, LANGUAGE  # noqa: E402

from refine_plugins.demo.vla_benchmark import GRIPPER, POSITION, PRIVILEGED, ROTATION  # noqa: E402

BENCHMARK = "refine_plugins.demo.vla_benchmark:DemoSimBenchmark"


def assert_sim_shows(sim: DemoSim, episode, t: int) -> None:
    """The sim is in the expert episode's state before step t, and draws the dataset's frame of it."""
    assert sim.gripper == tuple(episode.cells[t])
    assert sim.opening == episode.gripper_opening()[t]
    assert sim.held == (episode.target if episode.held[t] else None)
    assert sim.object_positions() == episode.object_positions(t)
    np.testing.assert_array_equal(sim.render(), render_frame(episode, t))


def action(dx=0.0, dy=0.0, dz=0.0, gripper=1.0) -> np.ndarray:
    return np.array([dx, dy, dz, 0, 0, 0, gripper], dtype=np.float32)


@pytest.mark.parametrize("pick_only_fraction", [0.0, 1.0], ids=["put", "pick-up"])
def test_replaying_the_expert_reproduces_its_states_and_frames(pick_only_fraction):
    for episode in generate_episodes(3, 11, pick_only_fraction):
        assert (episode.destination is None) == (pick_only_fraction == 1.0)
        sim = DemoSim.from_scene(episode)
        assert sim.step_limit == int(np.ceil(2 * episode.num_steps))
        assert_sim_shows(sim, episode, 0)
        for t, act in enumerate(episode.actions()):
            assert not sim.done
            sim.step(act)
            assert_sim_shows(sim, episode, t + 1)
        assert sim.success and sim.grasp and sim.done and sim.steps == episode.num_steps


def test_the_expert_policy_takes_the_datas_actions_and_always_succeeds():
    """Closed loop from privileged state, over 200 sim scenes: the same actions as the generated
    expert episode, success in exactly its number of steps (the expert's success rate is 100%)."""
    kinds = set()
    for index in range(200):
        sim = DemoSim(0, index)
        taken = []
        while not sim.done:
            taken.append(expert_action(sim.privileged()))
            sim.step(taken[-1])
        np.testing.assert_array_equal(np.stack(taken), sim.scene.actions())
        assert sim.success and sim.grasp
        kinds.add(sim.privileged()["task"])
    assert kinds == {"put", "pick"}
    assert max(DemoSim(0, i).step_limit for i in range(200)) <= 2 * MAX_EXPERT_STEPS


def test_actions_round_to_one_cell_per_axis_inside_the_workspace():
    sim = DemoSim(0, 0)
    x, y, z = sim.gripper
    sim.step(action(dx=0.6 * CELL, dy=-0.4 * CELL, dz=0.0))
    assert sim.gripper == (min(x + 1, GRID - 1), y, z)
    for _ in range(GRID):
        sim.step(action(dx=5.0, dy=-5.0, dz=5.0))  # far past one cell: one cell per step, then the walls
    assert sim.gripper == (GRID - 1, 0, HOVER)
    for _ in range(GRID):
        sim.step(action(dz=-1.0, gripper=0.2))
    assert sim.gripper[2] == GRASP and sim.opening == 0
    sim.step(action(dx=np.nan, gripper=np.nan))  # non-finite output: no move, closed
    assert sim.gripper == (GRID - 1, 0, GRASP) and sim.opening == 0


def test_a_misplaced_object_stays_where_it_was_dropped_and_the_expert_recovers():
    scene = generate_episode(np.random.default_rng(4), pick_only_fraction=0.0)
    sim = DemoSim.from_scene(scene)
    while sim.held is None:  # the expert grasps the target
        sim.step(expert_action(sim.privileged()))
    sim.step(action(dz=CELL, gripper=0.0))
    sim.step(action(gripper=1.0))  # dropped one cell up, next to nothing
    dropped = sim.object_cells[sim.target]
    assert sim.held is None and sim.grasp and not sim.success
    assert dropped == sim.gripper[:2] and sim.render().shape == (256, 256, 3)
    sim.step(action(gripper=0.0))  # closing at hover height grasps nothing
    assert sim.held is None
    while not sim.done:
        sim.step(expert_action(sim.privileged()))
    assert sim.success


def test_sim_scenes_are_never_training_scenes():
    def key(episode):
        return (episode.instruction, tuple(episode.cells[0]), tuple(obj.cell for obj in episode.objects))

    training = {key(e) for e in generate_episodes(200, 0)}
    simulated = {key(sim_scene(0, i)) for i in range(200)}
    assert len(simulated) == 200 and not training & simulated
    assert DemoSim(0, 3).instruction == sim_scene(0, 3).instruction  # a sim episode is its seeded scene
    with pytest.raises(ValueError, match="2\\*\\*32"):
        sim_rng(2**32, 0)


class ExpertServer(PredictModelServer):
    """The scripted expert, acting from the benchmark's privileged observation."""

    def predict(self, obs, ctx):
        assert obs["images"]["image_0"].shape == (256, 256, 3) and obs["task_description"]
        return {"actions": expert_action(obs["privileged"])}

    def get_action_spec(self):
        return {"position": POSITION, "rotation": ROTATION, "gripper": GRIPPER}

    def get_observation_spec(self):
        return {"image_0": IMAGE_RGB, "language": LANGUAGE, "privileged": PRIVILEGED}


class StillServer(ExpertServer):
    """Does nothing: no motion, gripper open."""

    def predict(self, obs, ctx):
        return {"actions": np.array([0, 0, 0, 0, 0, 0, 1], dtype=np.float32)}

    def get_observation_spec(self):
        return {"image_0": IMAGE_RGB, "language": LANGUAGE}


def run_demo_sim(server, episodes: int, tmp_path, send_privileged: bool, **settings) -> dict:
    config = {"benchmarks": [{"benchmark": BENCHMARK, "episodes_per_task": episodes,
                              "params": {"send_privileged": send_privileged, "seed": 0}}],
              "output_dir": str(tmp_path), **settings}
    with serve_background(server) as handle:
        (result,) = run(config, server_url=handle.url, no_save=True, docker=False)
    assert result["num_errors"] == 0
    return result


def test_the_orchestrator_runs_the_expert_to_success(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vla_eval.orchestrator")
    result = run_demo_sim(ExpertServer(), 40, tmp_path, send_privileged=True)  # default render mode (gpu)
    assert any("Spec validation passed" in r.message for r in caplog.records)
    assert result["mean_success"] >= 0.95 and result["mean_grasp"] >= result["mean_success"]
    (task,) = result["tasks"]
    assert task["num_episodes"] == 40
    for episode in task["episodes"]:
        metrics = episode["metrics"]
        assert metrics["steps"] == metrics["expert_steps"] == episode["steps"]
        assert metrics["step_limit"] == int(np.ceil(2 * metrics["expert_steps"])) and metrics["seed"] == 0
        assert metrics["instruction"] == sim_scene(0, metrics["episode_index"]).instruction
    assert sorted(e["metrics"]["episode_index"] for e in task["episodes"]) == list(range(40))


def test_a_policy_that_does_nothing_never_succeeds(tmp_path):
    result = run_demo_sim(StillServer(), 6, tmp_path, send_privileged=False, render="cpu")
    assert result["mean_success"] == 0 and result["mean_grasp"] == 0
    for episode in result["tasks"][0]["episodes"]:  # each ran to its own step limit
        assert episode["steps"] == episode["metrics"]["steps"] == episode["metrics"]["step_limit"]
