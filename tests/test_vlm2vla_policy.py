"""VLM2VLA's hierarchical closed-loop policy: seeded sampling in the backbone, the subtask → plan →
chunk → verify loop on an overfitted tiny Gemma-3 in the demo simulator, malformed action text, batching,
the demo's scripted verifier, and a served demo-sim run."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from refine_core.evaluate.closed_loop import wilson_interval
from refine_core.registry import get_registry
import torch

from refine_core import Episode, Step, TrajectoryRequest
from refine_core.backbone import TrainingSample
from refine_core.benchmark import EvalContext
from refine_core.data.vlm2vla import completion_prompt, parse_actions, vlm2vla_samples
from refine_core.errors import UsageError
from refine_core.registry import Registry
from refine_core.vlm2vla_policy import (HierarchicalPolicy, HierarchicalPolicySettings, ModelVerifier,
                                        VerifyRequest)
from refine_plugins.demo.scene import GRASP, HOVER
from refine_plugins.demo.sim import DemoSim, sim_scene
from refine_plugins.demo.verifier import DemoSubtaskVerifier, subtask_complete
from refine_teachers.scripted.teacher import ScriptedTeacher
from tiny_policies import overfit

SEED = 1  # demo-sim's pick-up episode 0 of seed 1 is a short one: "pick up the yellow cup", 9 steps
FRAME = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
TINY_BUDGET = {"max_subtasks_tokens": 8, "max_plan_tokens": 8, "max_actions_tokens": 8}


@pytest.fixture(scope="module")
def registry():
    return Registry(entry_points=False)


@pytest.fixture(scope="module")
def untrained(registry):
    return registry.build("backbone", "hf_vlm", {"preset": "tiny-gemma3"})  # no action codec attached


def replay(scene) -> tuple[Episode, list[np.ndarray]]:
    """The scene solved by its expert in the simulator: the episode (rendered frames) and every frame."""
    sim = DemoSim.from_scene(scene)
    frames = [sim.render()]
    for action in scene.actions():
        sim.step(action)
        frames.append(sim.render())
    actions = scene.actions()
    steps = [Step(images={"image_0": frames[t]}, instruction=scene.instruction, action=actions[t],
                  primary_camera="image_0", step_index=t, metadata=scene.metadata(t))
             for t in range(scene.num_steps)]
    return Episode(episode_id="sim-0", steps=steps), frames


def scripted_plan(episode: Episode):
    return asyncio.run(ScriptedTeacher().decompose(TrajectoryRequest.from_episode(episode)))


@pytest.fixture(scope="module")
def scene():
    return sim_scene(SEED, 0, pick_only_fraction=1.0)


@pytest.fixture(scope="module")
def lesson(scene):
    """The plan and the text samples the policy will ask about (one chunk per subtask)."""
    episode, _ = replay(scene)
    plan = scripted_plan(episode)
    return plan, vlm2vla_samples(episode, plan, chunk_size=10, kinds=("subtasks", "motion", "actions"))


@pytest.fixture(scope="module")
def trained(registry, lesson):
    """A tiny Gemma-3 that answers exactly the scene's questions, even sampled (loss well below 0.05)."""
    backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny-gemma3"})
    samples = [TrainingSample(images=s.images, primary_camera=s.primary_camera, instruction=s.prompt,
                              actions=np.zeros((1, 7), np.float32), answer=s.answer) for s in lesson[1]]
    loss = overfit(backbone, backbone.collate(samples), lr=3e-2, max_steps=300, target=0.005)
    assert loss < 0.005
    return backbone


# -- sampling in the backbone ------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny-gemma3", "tiny"])  # both hf_vlm layouts: Gemma-3, PaliGemma
def test_sampling_is_seeded_per_row_and_leaves_torchs_rng_alone(registry, preset):
    backbone = registry.build("backbone", "hf_vlm", {"preset": preset})
    frames = [FRAME, FRAME[::-1].copy()]
    prompts = ["pick up the red block", "lift it"]
    state = torch.get_rng_state()
    both = backbone.sample_ids_batch(frames, prompts, 12, temperature=1.0, top_p=0.95, seed=[5, 6])
    assert torch.equal(state, torch.get_rng_state())
    alone = [backbone.sample_ids_batch([f], [p], 12, 1.0, 0.95, seed=s)[0]
             for f, p, s in zip(frames, prompts, (5, 6))]
    assert both == alone  # a row's draws do not depend on the rows beside it
    other = backbone.sample_ids_batch(frames[:1], prompts[:1], 12, 1.0, 0.95, seed=7)[0]
    assert other != both[0]  # it does sample
    greedy = backbone.generate_ids_batch(frames, prompts, 12)
    assert backbone.sample_ids_batch(frames, prompts, 12, temperature=0.0) == greedy
    backbone.model.train()  # sampling runs in eval mode and gives the training mode back
    backbone.sample_ids_batch(frames[:1], prompts[:1], 2, 1.0, seed=0)
    assert backbone.model.training


# -- the loop on a model that knows the scene ----------------------------------------------------------
def run_in_sim(policy, scene, max_queries: int = 40):
    sim = DemoSim.from_scene(scene)
    session = policy.reset(sim.instruction)
    chunks = []
    while not sim.done and len(chunks) < max_queries:
        chunk = policy.act(session, sim.render(), {"privileged": sim.privileged()})
        assert chunk.actions.shape == (1, 7)
        sim.step(chunk.actions[0])
        chunks.append(chunk)
    return sim, session, chunks


def test_the_policy_walks_the_trained_subtasks_and_solves_the_scene(trained, scene, lesson):
    plan, samples = lesson
    settings = HierarchicalPolicySettings(verifier="scripted")
    policy = HierarchicalPolicy(trained, settings, DemoSubtaskVerifier())
    sim, session, chunks = run_in_sim(policy, scene)
    assert session.subtasks == plan.subtasks() == ["reach the yellow cup", "grasp the yellow cup", "lift it"]
    # each subtask's chunk is the trained one, executed one row per query, with its subtask and plan
    rows = [parse_actions(s.answer) for s in samples if s.kind == "actions"]
    expected = np.zeros((sum(map(len, rows)), 7), np.float32)
    expected[:, :3], expected[:, 6] = np.concatenate(rows)[:, :3], np.concatenate(rows)[:, 3]
    np.testing.assert_array_equal(np.concatenate([c.actions for c in chunks]), expected)
    assert [c.reasoning for c in chunks] == [f"Subtask: {step.subtask}\nPlan: {step.main_movements}"
                                            for step, chunk in zip(plan.steps, rows) for _ in chunk]
    assert sim.success and sim.steps == scene.num_steps and all(c.error is None for c in chunks)
    # where each stage ran: the list once; the verifier when a chunk is done, then the next plan and chunk
    starts = np.cumsum([0] + [len(r) for r in rows[:-1]])
    assert [sorted(c.stage_latency_s) for c in chunks] == [
        (["actions", "plan", "subtasks"] if t == 0 else ["actions", "plan", "verify"]) if t in starts else []
        for t in range(len(chunks))]
    assert [c.reasoning_reused for c in chunks] == [t not in starts for t in range(len(chunks))]
    # one more query: the lift is confirmed, no subtask is left, the arm holds (gripper closed, as commanded)
    last = policy.act(session, sim.render(), {"privileged": sim.privileged()})
    assert session.finished and last.reasoning is None and list(last.stage_latency_s) == ["verify"]
    assert last.actions.tolist() == [[0.0] * 7]


def test_an_unconfirmed_subtask_is_left_after_max_attempts(trained, scene):
    """The model verifier asks the model, which never learnt to answer "yes": after two chunks of
    reaching, the policy moves on to grasping anyway."""
    policy = HierarchicalPolicy(trained, HierarchicalPolicySettings(max_attempts=2))
    _, session, chunks = run_in_sim(policy, scene, max_queries=14)
    verified = [t for t, c in enumerate(chunks) if "verify" in c.stage_latency_s]
    assert len(verified) >= 2
    subtasks = [c.reasoning.splitlines()[0] if c.reasoning else None for c in chunks]
    assert set(subtasks[:verified[1]]) == {"Subtask: reach the yellow cup"}
    assert subtasks[verified[1]] == "Subtask: grasp the yellow cup" and session.index >= 1


def test_the_model_verifier_reads_the_models_answer_to_the_completion_question(registry):
    backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny-gemma3"})
    after, before = FRAME, np.zeros_like(FRAME)
    asked = [("reach the yellow cup", "yes"), ("lift it", "no")]
    samples = [TrainingSample(images={"cam": after}, primary_camera="cam", answer=answer,
                              instruction=completion_prompt("pick up the yellow cup", subtask),
                              actions=np.zeros((1, 7), np.float32)) for subtask, answer in asked]
    assert overfit(backbone, backbone.collate(samples), lr=1e-2, max_steps=200) < 0.05
    requests = [VerifyRequest("pick up the yellow cup", subtask, before, after, None) for subtask, _ in asked]
    assert ModelVerifier(backbone).verify_batch(requests) == [True, False]
    assert ModelVerifier(backbone).verify("pick up the yellow cup", "reach the yellow cup", before, after)


# -- what goes wrong ---------------------------------------------------------------------------------
def test_malformed_action_text_is_resampled_then_the_arm_holds_still(untrained):
    assert untrained.codec is None  # the hierarchical policy reads text, not action tokens
    policy = HierarchicalPolicy(untrained, HierarchicalPolicySettings(max_resamples=2, **TINY_BUDGET))
    session = policy.reset("pick up the yellow cup")
    session.gripper = 0.0  # as if the last action had closed the gripper
    chunk = policy.act(session, FRAME)
    assert chunk.actions.tolist() == [[0.0] * 7]  # no motion, the gripper kept closed
    assert "3 samples of the action text did not parse" in chunk.error and "holding still" in chunk.error
    # an untrained list does not parse either (twice): the instruction is the one subtask
    assert "the subtask list did not parse twice" in chunk.error
    assert session.subtasks == ["pick up the yellow cup"] and session.draws == 2 + 1 + 3
    assert sorted(chunk.stage_latency_s) == ["actions", "plan", "subtasks"]
    assert all(seconds > 0 for seconds in chunk.stage_latency_s.values())
    # the hold was no chunk: nothing to verify; the next query plans and samples anew
    again = policy.act(session, FRAME)
    assert sorted(again.stage_latency_s) == ["actions", "plan"] and session.draws == 6 + 1 + 3
    assert again.actions.tolist() == [[0.0] * 7] and "subtask" not in again.error


def test_a_scripted_verifier_must_be_given_and_benchmarks_without_one_say_so(untrained):
    from refine_core.evaluate.closed_loop import ClosedLoopBenchmark, ClosedLoopOptions

    with pytest.raises(ValueError, match="verifier=scripted needs the benchmark's verifier"):
        HierarchicalPolicy(untrained, HierarchicalPolicySettings(verifier="scripted"))
    with pytest.raises(UsageError, match="has no scripted verifier; use closed_loop.verifier=model"):
        ClosedLoopBenchmark(ClosedLoopOptions()).verifier("scripted")
    # auto (the default): the benchmark's scripted verifier where it has one, else the model
    assert ClosedLoopBenchmark(ClosedLoopOptions()).verifier_name() == "model"
    demo_sim = get_registry().build("benchmark", "demo-sim", {})
    assert demo_sim.verifier_name() == "scripted"
    assert demo_sim.params("model-hierarchical")["send_privileged"] is True
    assert "send_privileged" not in demo_sim.params("model-every_step")
    assert get_registry().build("benchmark", "demo-sim", {"verifier": "model"}).verifier_name() == "model"


def test_acting_on_sessions_together_equals_acting_on_each_alone(untrained):
    settings = HierarchicalPolicySettings(**TINY_BUDGET, plan_temperature=1.0)
    frames = [FRAME, FRAME[:, ::-1].copy()]
    instructions = ["pick up the yellow cup", "put the red block on the blue plate"]

    def play(together: bool):
        policy = HierarchicalPolicy(untrained, settings)
        sessions = [policy.reset(text) for text in instructions]
        out = [policy.act(sessions[0], frames[0])]  # the first session is a query ahead: other stages
        for _ in range(2):
            out += (policy.act_batch(sessions, frames) if together
                    else [policy.act(s, f) for s, f in zip(sessions, frames)])
        return [(c.actions.tolist(), c.reasoning, c.error, c.tokens_generated, sorted(c.stage_latency_s))
                for c in out], [(s.draws, s.plan, s.subtasks) for s in sessions]

    together, alone = play(True), play(False)
    assert together == alone
    plans = [chunk[1] for chunk in together[0]]
    assert len(set(plans)) == len(plans)  # each query drew its own plan


# -- the demo's scripted verifier ----------------------------------------------------------------------
def state(gripper, held=None, opening=1, target_cell=(2, 3), destination_cell=(0, 0)):
    return {"task": "put", "gripper": list(gripper), "opening": opening, "held": held,
            "target": {"name": "red block", "cell": list(target_cell)},
            "destination": {"name": "blue plate", "cell": list(destination_cell)}}


@pytest.mark.parametrize("subtask, scene_state, complete", [
    ("reach the red block", state((2, 3, GRASP)), True),
    ("reach the red block", state((2, 3, GRASP), opening=0), False),  # closed on nothing
    ("reach the red block", state((2, 3, HOVER)), False),
    ("reach the red block", state((1, 3, GRASP)), False),
    ("grasp the red block", state((2, 3, GRASP), held="red block", opening=0), True),
    ("grasp the red block", state((2, 3, GRASP), opening=0), False),
    ("grasp the red block", state((2, 3, GRASP), held="green cup", opening=0), False),
    ("lift it", state((2, 3, HOVER), held="red block", opening=0), True),
    ("lift it", state((2, 3, GRASP + 1), held="red block", opening=0), False),
    ("move it above the blue plate", state((0, 0, HOVER), held="red block", target_cell=(0, 0)), True),
    ("move it above the blue plate", state((1, 0, HOVER), held="red block", target_cell=(1, 0)), False),
    ("lower it onto the blue plate", state((0, 0, GRASP), held="red block", target_cell=(0, 0)), True),
    ("lower it onto the blue plate", state((0, 0, GRASP + 1), held="red block", target_cell=(0, 0)), False),
    ("release it", state((0, 0, GRASP), target_cell=(0, 0)), True),
    ("release it", state((0, 0, GRASP), held="red block", opening=0, target_cell=(0, 0)), False),
    ("release it", state((1, 0, GRASP), target_cell=(1, 0)), False),  # let go beside the plate
    ("move away from the blue plate", state((0, 0, HOVER)), True),
    ("wave at the camera", state((2, 3, GRASP)), False),  # text it does not know is never confirmed
])
def test_scripted_verifier_decisions(subtask, scene_state, complete):
    verifier = DemoSubtaskVerifier()
    assert verifier.verify("put the red block on the blue plate", subtask, FRAME, FRAME,
                           {"privileged": scene_state}) is complete


def test_scripted_verifier_agrees_with_the_decomposition_it_checks():
    """Along an expert put episode: each subtask is incomplete where it starts and complete where it ends."""
    scene = sim_scene(0, 0, pick_only_fraction=0.0)
    episode, _ = replay(scene)
    plan = scripted_plan(episode)
    sim, states = DemoSim.from_scene(scene), []
    states.append(sim.privileged())
    for action in scene.actions():
        sim.step(action)
        states.append(sim.privileged())
    assert len(plan.steps) >= 6
    for step, (start, stop) in zip(plan.steps, plan.boundaries()):
        assert not subtask_complete(step.subtask, states[start]), step.subtask
        assert subtask_complete(step.subtask, states[stop]), step.subtask
    with pytest.raises(ValueError, match="run demo-sim with send_privileged"):
        DemoSubtaskVerifier().verify(scene.instruction, "lift it", FRAME, FRAME, {"images": {}})


# -- served in demo-sim ------------------------------------------------------------------------------
def test_demo_sim_runs_the_hierarchical_mode_with_the_scripted_verifier(trained, tmp_path):
    from refine_core import get_registry

    benchmark = get_registry().build("benchmark", "demo-sim", {
        "episodes": 1, "modes": ["hierarchical"], "verifier": "scripted", "baselines": [], "expert": False,
        "seed": SEED, "pick_only_fraction": 1.0, "shards": 1})
    result = benchmark.evaluate(EvalContext(backbone=trained, dataset=None, out_dir=tmp_path))
    assert list(result.summary["policies"]) == ["model-hierarchical"]
    [record] = result.records
    assert record["mode"] == "hierarchical" and record["success"] and record["failure_reason"] is None
    assert record["queries"] == record["steps"] == 9
    assert record["protocol"]["params"]["send_privileged"] is True  # what the scripted verifier reads
    assert record["protocol"]["policy"]["verifier"] == "scripted"
    assert sorted(record["stage_latency_s"]) == ["actions", "plan", "subtasks", "verify"]
    assert all(seconds > 0 for seconds in record["stage_latency_s"].values())
    # the subtask list it predicted, judged by VLM2VLA's rubric (a pick-up task: the object only)
    assert record["target"] == "yellow cup" and record["destination"] is None
    assert "yellow cup" in record["decomposition"]
    assert result.summary["policies"]["model-hierarchical"]["decomposition"] == {
        "decomposition_score": 1.0, "passed": 1, "episodes": 1, "interval": list(wilson_interval(1, 1))}
