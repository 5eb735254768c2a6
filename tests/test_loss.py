"""The reasoning-aware loss equals ReFineVLA Algorithm 2 in value and gradient, handles empty
parts without NaN, and never copies the logits."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from refine_core.loss import LossOutput, default_chunk_rows, reasoning_aware_loss


def reference_loss(logits, labels, action_mask, lambda_r=0.3):
    """Algorithm 2 literally: shift the logits, two masked cross-entropies."""
    vocab = logits.shape[-1]
    shift_logits = logits[:, :-1, :].reshape(-1, vocab)
    shift_labels = labels[:, 1:].reshape(-1)
    shift_action = action_mask[:, 1:].reshape(-1)
    supervised = shift_labels != -100
    parts = {}
    action_rows, reasoning_rows = supervised & shift_action, supervised & ~shift_action
    for name, rows in (("action", action_rows), ("reasoning", reasoning_rows)):
        if rows.any():
            part_logits, part_labels = shift_logits[rows], shift_labels[rows]
            parts[name] = F.cross_entropy(part_logits, part_labels)
            parts[name + "_acc"] = (part_logits.argmax(-1) == part_labels).float().mean()
        else:
            parts[name] = shift_logits.sum() * 0.0
            parts[name + "_acc"] = torch.zeros(())
        parts["n_" + name] = int(rows.sum())
    parts["loss"] = parts["action"] + lambda_r * parts["reasoning"]
    return parts


def make_batch(pattern, batch=3, seq=11, vocab=13, seed=0):
    """labels/action_mask laid out as a collated VLA batch would be (or random)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    action = torch.zeros(batch, seq, dtype=torch.bool)
    if pattern == "random":
        action = torch.rand(batch, seq, generator=g) < 0.3
        labels[torch.rand(batch, seq, generator=g) < 0.25] = -100
    elif pattern == "prompt_reason_act_pad":
        for b in range(batch):  # prompt (unsupervised), reasoning, actions, then padding
            prompt, reason, act = 2 + b, 3, 3
            labels[b, :prompt] = -100
            action[b, prompt + reason: prompt + reason + act] = True
            labels[b, prompt + reason + act:] = -100
    elif pattern == "all_action":
        action[:] = True
    elif pattern != "all_reasoning":
        raise AssertionError(pattern)
    return labels, action


def _assert_close(a, b, dtype):
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a, b, **tol)


def _assert_counts(ours, ref):
    assert ours.num_action_tokens == ref["n_action"]
    assert ours.num_reasoning_tokens == ref["n_reasoning"]


def _linear_setup(dtype, batch, seq, vocab, hidden=6, seed=1):
    torch.manual_seed(seed)
    head = torch.nn.Linear(hidden, vocab).to(dtype)
    hidden_states = torch.randn(batch, seq, hidden, dtype=dtype)
    return head, hidden_states


def _run(fn, head, hidden_states, labels, action, lambda_r, pick="loss", **kw):
    """Loss through an upstream Linear; returns the result and grads (logits, weight, bias)."""
    head.zero_grad(set_to_none=True)
    logits = head(hidden_states)
    logits.retain_grad()
    out = fn(logits, labels, action, lambda_r=lambda_r, **kw)
    value = getattr(out, pick) if isinstance(out, LossOutput) else out[pick]
    value.backward()
    return out, (logits.grad, head.weight.grad.clone(), head.bias.grad.clone())


PATTERNS = ["random", "prompt_reason_act_pad", "all_action", "all_reasoning"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pattern", PATTERNS)
# 4 and 7 do not divide the 30 supervised rows of the full patterns: a short last chunk.
@pytest.mark.parametrize("chunk_rows", [1, 4, 7, None])
def test_value_and_gradient_equal_algorithm_2(dtype, pattern, chunk_rows):
    labels, action = make_batch(pattern)
    head, h = _linear_setup(dtype, *labels.shape, vocab=13)
    ours, our_grads = _run(
        reasoning_aware_loss, head, h, labels, action, 0.3, chunk_rows=chunk_rows
    )
    ref, ref_grads = _run(reference_loss, head, h, labels, action, 0.3)
    _assert_close(ours.loss, ref["loss"], dtype)
    _assert_close(ours.action_loss, ref["action"], dtype)
    _assert_close(ours.reasoning_loss, ref["reasoning"], dtype)
    acc_dtype = ours.action_accuracy.dtype
    torch.testing.assert_close(ours.action_accuracy, ref["action_acc"].to(acc_dtype))
    torch.testing.assert_close(ours.reasoning_accuracy, ref["reasoning_acc"].to(acc_dtype))
    _assert_counts(ours, ref)
    assert ours.loss.dtype == dtype
    for mine, theirs in zip(our_grads, ref_grads):
        _assert_close(mine, theirs, dtype)


@pytest.mark.parametrize("part", ["action_loss", "reasoning_loss"])
def test_each_part_is_differentiable_on_its_own(part):
    labels, action = make_batch("random", seed=3)
    head, h = _linear_setup(torch.float64, *labels.shape, vocab=13)
    _, our_grads = _run(reasoning_aware_loss, head, h, labels, action, 0.7, pick=part, chunk_rows=5)
    _, ref_grads = _run(reference_loss, head, h, labels, action, 0.7, pick=part.split("_")[0])
    for mine, theirs in zip(our_grads, ref_grads):
        _assert_close(mine, theirs, torch.float64)


@pytest.mark.parametrize("layout", ["vocab_slice", "transposed"])
def test_non_contiguous_logits(layout):
    labels, action = make_batch("random", seed=4)
    batch, seq = labels.shape
    torch.manual_seed(4)
    if layout == "vocab_slice":  # rows strided: V is a slice of a wider vocabulary
        base = torch.randn(batch, seq, 20, dtype=torch.float64)
        view = lambda leaf: leaf[..., :13]  # noqa: E731
    else:  # stored time-major
        base = torch.randn(seq, batch, 13, dtype=torch.float64)
        view = lambda leaf: leaf.transpose(0, 1)  # noqa: E731
    ours_leaf, ref_leaf = base.clone().requires_grad_(), base.clone().requires_grad_()
    assert not view(ours_leaf).is_contiguous()
    ours = reasoning_aware_loss(view(ours_leaf), labels, action, chunk_rows=3)
    ref = reference_loss(view(ref_leaf), labels, action)
    ours.loss.backward()
    ref["loss"].backward()
    _assert_close(ours.loss, ref["loss"], torch.float64)
    _assert_close(ours_leaf.grad, ref_leaf.grad, torch.float64)


@pytest.mark.parametrize(
    "case", ["no_action_tokens", "no_reasoning_tokens", "nothing_supervised", "single_position"]
)
def test_empty_parts_give_zero_not_nan(case):
    labels, action = make_batch("random", seed=5)
    if case == "no_action_tokens":
        action[:] = False
    elif case == "no_reasoning_tokens":
        action[:] = True
    elif case == "nothing_supervised":
        labels[:] = -100
    else:  # T = 1: there is no next token to predict at all
        labels, action = labels[:, :1], action[:, :1]
    logits = torch.randn(*labels.shape, 13, requires_grad=True)
    out = reasoning_aware_loss(logits, labels, action)
    out.loss.backward()
    assert torch.isfinite(logits.grad).all()
    accuracies = (out.action_accuracy, out.reasoning_accuracy)
    losses = (out.loss, out.action_loss, out.reasoning_loss)
    assert all(torch.isfinite(v) for v in (*losses, *accuracies))
    if case != "no_reasoning_tokens":
        assert out.action_loss.item() == 0.0 and out.num_action_tokens == 0
        assert out.action_accuracy.item() == 0.0
    if case != "no_action_tokens":
        assert out.reasoning_loss.item() == 0.0 and out.num_reasoning_tokens == 0
        assert out.reasoning_accuracy.item() == 0.0
    if case in ("nothing_supervised", "single_position"):
        assert out.loss.item() == 0.0
        assert torch.count_nonzero(logits.grad) == 0
    # The empty part alone still backpropagates: a zero gradient, not an error or NaN.
    logits.grad = None
    again = reasoning_aware_loss(logits, labels, action)
    (again.action_loss if again.num_action_tokens == 0 else again.reasoning_loss).backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_lambda_zero_removes_reasoning_from_gradient():
    labels, action = make_batch("prompt_reason_act_pad", seed=6)
    logits = torch.randn(*labels.shape, 13, dtype=torch.float64, requires_grad=True)
    out = reasoning_aware_loss(logits, labels, action, lambda_r=0.0)
    out.loss.backward()
    full_grad = logits.grad.clone()
    assert out.reasoning_loss.item() > 0  # still reported
    logits.grad = None
    reasoning_aware_loss(logits, labels, action).action_loss.backward()
    torch.testing.assert_close(full_grad, logits.grad, rtol=0, atol=0)
    # Rows predicting a reasoning label get no gradient.
    reasoning_rows = torch.zeros_like(action)
    reasoning_rows[:, :-1] = (labels[:, 1:] != -100) & ~action[:, 1:]
    assert reasoning_rows.any()
    assert torch.count_nonzero(full_grad[reasoning_rows]) == 0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("-inf"), "0.3x"])
def test_bad_lambda_raises(bad):
    labels, action = make_batch("random")
    with pytest.raises(ValueError, match="lambda_r"):
        reasoning_aware_loss(torch.randn(*labels.shape, 13), labels, action, lambda_r=bad)


def test_bad_shapes_and_labels_raise_with_the_shapes():
    logits = torch.randn(2, 5, 7)
    labels = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 5, 7\)"):
        reasoning_aware_loss(logits, labels[:, :4], mask)
    with pytest.raises(ValueError, match=r"action_mask shape \(2, 3\).*\(2, 5\)"):
        reasoning_aware_loss(logits, labels, mask[:, :3])
    with pytest.raises(ValueError, match=r"\[B, T, V\].*\(10, 7\)"):
        reasoning_aware_loss(logits.view(10, 7), labels, mask)
    with pytest.raises(ValueError, match="integer"):
        reasoning_aware_loss(logits, labels.float(), mask)
    with pytest.raises(ValueError, match=r"\[0, 7\).*\[7\]"):
        reasoning_aware_loss(logits, labels.index_fill(1, torch.tensor([3]), 7), mask)
    with pytest.raises(ValueError, match="chunk_rows"):
        reasoning_aware_loss(logits, labels, mask, chunk_rows=0)


def test_accuracies_on_a_hand_built_case():
    # One sequence; logit row t predicts label t+1. Row argmaxes: 0,1,2,3,0,1.
    logits = torch.full((1, 6, 4), -1.0)
    for t, best in enumerate([0, 1, 2, 3, 0, 1]):
        logits[0, t, best] = 2.0
    # labels[t+1] vs argmax(row t): positions 1..5 -> rows 0..4 with argmax 0,1,2,3,0
    labels = torch.tensor([[-100, 0, 1, 0, 3, 2]])
    action = torch.tensor([[False, False, False, True, True, True]])
    out = reasoning_aware_loss(logits, labels, action)
    # reasoning rows 0,1 -> labels 0,1: both right; action rows 2,3,4 -> 0,3,2 vs 2,3,0: 1 of 3.
    assert (out.num_reasoning_tokens, out.num_action_tokens) == (2, 3)
    assert out.reasoning_accuracy.item() == pytest.approx(1.0)
    assert out.action_accuracy.item() == pytest.approx(1 / 3)
    assert not out.action_accuracy.requires_grad
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.loss = torch.zeros(())


def test_bfloat16_logits_close_to_float32_reference():
    labels, action = make_batch("random", batch=2, seq=16, vocab=50, seed=7)
    logits = (torch.randn(2, 16, 50) * 3).to(torch.bfloat16).requires_grad_()
    up = logits.detach().float().requires_grad_()
    out = reasoning_aware_loss(logits, labels, action, chunk_rows=5)
    ref = reference_loss(up, labels, action)
    out.loss.backward()
    ref["loss"].backward()
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref["loss"], rtol=1e-5, atol=1e-6)  # same values, upcast
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), up.grad, rtol=1e-2, atol=1e-4)


def test_works_without_autograd():
    labels, action = make_batch("random", seed=8)
    logits = torch.randn(*labels.shape, 13)
    with torch.no_grad():
        out = reasoning_aware_loss(logits, labels, action)
    torch.testing.assert_close(out.loss, reference_loss(logits, labels, action)["loss"])


class _AllocationLog(TorchDispatchMode):
    """Records the numel of every op output that is a new allocation (not a view/in-place)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = torch.utils._pytree.tree_leaves((args, kwargs))
        seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        for out in torch.utils._pytree.tree_leaves(result):
            if isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() not in seen:
                self.sizes.append((str(func), out.numel()))
        return result


def _allocations(fn, logits, labels, action, **kw):
    with _AllocationLog() as fwd:
        out = fn(logits, labels, action, **kw)
    loss = out.loss if isinstance(out, LossOutput) else out["loss"]
    with _AllocationLog() as bwd:
        loss.backward()
    return fwd.sizes, bwd.sizes


def test_logits_are_never_copied():
    batch, seq, vocab, chunk = 2, 24, 256, 5
    labels, action = make_batch("random", batch=batch, seq=seq, vocab=vocab, seed=9)
    logits = torch.randn(batch, seq, vocab, requires_grad=True)
    full = logits.numel()
    fwd, bwd = _allocations(reasoning_aware_loss, logits, labels, action, chunk_rows=chunk)
    assert max(n for _, n in fwd) <= chunk * vocab, fwd
    big = [(op, n) for op, n in bwd if n > chunk * vocab]
    assert len(big) == 1 and big[0][1] == full, big  # only the gradient itself
    # The detector is sensitive: Algorithm 2 as written does copy the logits.
    ref_logits = logits.detach().clone().requires_grad_()
    ref_fwd, ref_bwd = _allocations(reference_loss, ref_logits, labels, action)
    assert max(n for _, n in ref_fwd) >= full - batch * vocab  # the shifted copy
    assert sum(n > chunk * vocab for _, n in ref_bwd) >= 2


def test_default_chunk_bounds_memory():
    rows = default_chunk_rows(257_216)
    assert rows >= 1 and 32 << 20 <= rows * 257_216 * 4 <= 128 << 20
    assert default_chunk_rows(10**12) == 1


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq=st.integers(1, 7),
    vocab=st.integers(2, 9),
    chunk_rows=st.one_of(st.none(), st.integers(1, 6)),
    lambda_r=st.floats(0.0, 3.0),
    p_ignore=st.sampled_from([0.0, 0.3, 0.9]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(batch, seq, vocab, chunk_rows, lambda_r, p_ignore, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[torch.rand(batch, seq, generator=g) < p_ignore] = -100
    action = torch.rand(batch, seq, generator=g) < 0.4
    base = torch.randn(batch, seq, vocab, generator=g, dtype=torch.float64) * 4
    ours_in, ref_in = base.clone().requires_grad_(), base.clone().requires_grad_()
    ours = reasoning_aware_loss(ours_in, labels, action, lambda_r=lambda_r, chunk_rows=chunk_rows)
    ref = reference_loss(ref_in, labels, action, lambda_r=lambda_r)
    ours.loss.backward()
    ref["loss"].backward()
    _assert_close(ours.loss, ref["loss"], torch.float64)
    _assert_close(ours.action_loss, ref["action"], torch.float64)
    _assert_close(ours.reasoning_loss, ref["reasoning"], torch.float64)
    _assert_close(ours_in.grad, ref_in.grad, torch.float64)
    _assert_counts(ours, ref)
