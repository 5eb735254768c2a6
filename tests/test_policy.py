"""The closed-loop Policy: batched queries equal single ones, reasoning modes, decoding guards,
chunk execution and bad observations."""
from __future__ import annotations

import numpy as np
import pytest

from refine_core.policy import Policy, PolicySettings
from tiny_policies import tiny_backbone

INSTRUCTIONS = ["put the red block on the blue plate", "pick up the cup",
                "put the green cup in the yellow bowl"]


@pytest.fixture(scope="module")
def hf_vlm():
    return tiny_backbone("hf_vlm")


def frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("name", ["hf_vlm", "openvla", "spatialvla"])
@pytest.mark.parametrize("mode", ["every_step", "every_k", "never"])
def test_a_batch_of_sessions_acts_as_each_session_alone(name, mode):
    backbone = tiny_backbone(name)
    settings = PolicySettings(reasoning=mode, every=2, max_reasoning_tokens=12)
    batched, single = Policy(backbone, settings), Policy(backbone, settings)
    batch_sessions = [batched.reset(i) for i in INSTRUCTIONS]
    single_sessions = [single.reset(i) for i in INSTRUCTIONS]
    for query in range(3):  # every_k with K=2: fresh, reused, fresh
        images = frames(3, seed=query)
        together = batched.act_batch(batch_sessions, images)
        alone = [single.act(s, im) for s, im in zip(single_sessions, images)]
        for a, b in zip(together, alone):
            np.testing.assert_array_equal(a.actions, b.actions)
            assert (a.reasoning, a.reasoning_reused, a.tokens_generated, a.forced) == (
                b.reasoning, b.reasoning_reused, b.tokens_generated, b.forced)
            assert a.batch_size == 3 and b.batch_size == 1


def test_every_k_reasons_once_per_k_queries_and_reuses_it_as_a_prefix(hf_vlm):
    policy = Policy(hf_vlm, PolicySettings(reasoning="every_k", every=3, max_reasoning_tokens=10))
    session = policy.reset(INSTRUCTIONS[0])
    chunks = [policy.act(session, image) for image in frames(7)]
    assert [c.reasoning_reused for c in chunks] == [False, True, True, False, True, True, False]
    span = hf_vlm.codec.span_length
    for fresh, reused in ((chunks[0], chunks[1]), (chunks[3], chunks[4])):
        assert fresh.reasoning and reused.reasoning == fresh.reasoning
        assert fresh.tokens_generated > span and reused.tokens_generated == span  # only the actions
    assert session.queries == 7


def test_reasoning_starts_with_the_formats_opening_forced(hf_vlm):
    """Trained with reasoning dropout, a model may act at once: asking for reasoning forces its start."""
    policy = Policy(hf_vlm, PolicySettings(max_reasoning_tokens=8))
    chunk = policy.act(policy.reset(INSTRUCTIONS[0]), frames(1)[0])
    assert chunk.reasoning.startswith("<Observation>:")
    ecot = Policy(hf_vlm, PolicySettings(max_reasoning_tokens=8), reasoning_format="ecot")
    assert ecot.act(ecot.reset(INSTRUCTIONS[0]), frames(1)[0]).reasoning.startswith("TASK:")
    first = hf_vlm.predict(frames(1)[0], INSTRUCTIONS[0], max_new_tokens=8,
                           reasoning_opening="<Observation>:")
    assert first.reasoning.startswith("<Observation>:")


def test_never_generates_only_the_action_span(hf_vlm):
    policy = Policy(hf_vlm, PolicySettings(reasoning="never"))
    chunk = policy.act(policy.reset(INSTRUCTIONS[1]), frames(1)[0])
    assert chunk.reasoning is None and not chunk.forced
    assert chunk.tokens_generated == hf_vlm.codec.span_length
    assert chunk.actions.shape == (1, 7) and chunk.error is None


def test_the_repetition_guard_ends_looping_reasoning_and_the_span_is_forced(hf_vlm):
    """The untrained tiny model repeats one token: the guard stops it long before the budget."""
    budget = 200
    guarded = Policy(hf_vlm, PolicySettings(max_reasoning_tokens=budget, repetition_ngram=4,
                                            repetition_limit=3))
    chunk = guarded.act(guarded.reset(INSTRUCTIONS[0]), frames(1)[0])
    assert chunk.repetition_stopped and chunk.forced
    # stopped at the first token whose last 4-gram had occurred 3 times (overlaps count), not later;
    # never before 4 x 3 tokens (a shorter text cannot hold three separate runs)
    opening = hf_vlm.reasoning_ids("<Observation>:")
    ids = hf_vlm.reasoning_ids(chunk.reasoning)
    assert ids[:len(opening)] == opening
    generated = ids[len(opening):]
    assert chunk.tokens_generated == len(generated) + hf_vlm.codec.span_length

    def occurrences(tokens, end):
        tail = tokens[end - 4:end]
        return sum(tokens[i:i + 4] == tail for i in range(end - 3))

    assert len(generated) >= 12 and occurrences(generated, len(generated)) >= 3
    assert all(occurrences(generated, end) < 3 for end in range(12, len(generated)))
    assert len(generated) < budget // 4  # long before the budget
    unguarded = Policy(hf_vlm, PolicySettings(max_reasoning_tokens=20, repetition_limit=1000))
    free = unguarded.act(unguarded.reset(INSTRUCTIONS[0]), frames(1)[0])
    assert not free.repetition_stopped and free.forced
    assert free.tokens_generated == 20 + hf_vlm.codec.span_length + hf_vlm.codec.span_length


def test_act_then_reason_decodes_actions_first(hf_vlm):
    policy = Policy(hf_vlm, PolicySettings(order="act_then_reason", max_reasoning_tokens=6))
    chunk = policy.act(policy.reset(INSTRUCTIONS[0]), frames(1)[0])
    expected = Policy(hf_vlm, PolicySettings(reasoning="never")).act(policy.reset(INSTRUCTIONS[0]),
                                                                     frames(1)[0])
    np.testing.assert_array_equal(chunk.actions, expected.actions)  # the reasoning after cannot change them
    assert chunk.tokens_generated == hf_vlm.codec.span_length + 6


def test_a_chunk_is_executed_actions_per_query_steps_at_a_time():
    backbone = tiny_backbone("spatialvla")
    assert backbone.codec.chunk_size == 4
    whole = Policy(backbone, PolicySettings(reasoning="never"))
    one = Policy(backbone, PolicySettings(reasoning="never", actions_per_query=1))
    image = frames(1)[0]
    full = whole.act(whole.reset(INSTRUCTIONS[0]), image).actions
    assert full.shape == (4, 7) and whole.actions_per_query == 4
    np.testing.assert_array_equal(one.act(one.reset(INSTRUCTIONS[0]), image).actions, full[:1])
    assert whole.describe()["chunk_size"] == 4 and one.describe()["actions_per_query"] == 1


@pytest.mark.parametrize("image, message", [
    (np.zeros((64, 64), np.uint8), r"HxWx3 uint8 array, got \(64, 64\) uint8"),
    (np.zeros((64, 64, 3), np.float32), r"HxWx3 uint8 array, got \(64, 64, 3\) float32"),
    ("not an image", "HxWx3 uint8 array, got str"),
])
def test_a_bad_image_is_refused_with_what_was_wrong(hf_vlm, image, message):
    policy = Policy(hf_vlm)
    with pytest.raises(ValueError, match=message):
        policy.act(policy.reset(INSTRUCTIONS[0]), image)
    with pytest.raises(ValueError, match="an instruction is needed"):
        policy.reset("  ")
