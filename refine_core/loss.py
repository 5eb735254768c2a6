"""Reasoning-aware training loss (ReFineVLA, Algorithm 2), without copying the logits.

Math. With the causal-LM convention (the logit at position t predicts label t+1), let A be the
supervised positions whose label is an action token and R the other supervised positions::

    action_loss    = (1/|A|) * sum_{t in A} ce_t        (0 when A is empty)
    reasoning_loss = (1/|R|) * sum_{t in R} ce_t        (0 when R is empty)
    loss           = action_loss + lambda_r * reasoning_loss
    ce_t           = logsumexp(z_t) - z_t[y_t]
    d ce_t / d z_t = softmax(z_t) - onehot(y_t)

Why this shape. A VLA's logits are large (PaliGemma: V = 257,216, so one 512-token sequence
is 0.5 GB in float32). The textbook recipe -- slice ``logits[:, :-1]``, make it contiguous,
gather the masked rows, ``log_softmax`` -- makes several full-size copies in the forward and
backward. Here the *labels* are shifted instead (target t = label t+1, last position ignored),
and a custom autograd function walks the supervised rows in chunks of ``chunk_rows``: the
forward keeps only one float32 value (logsumexp) per supervised row, the backward recomputes
each chunk's softmax and writes ``weight * (softmax - onehot)`` straight into the gradient. The
only full-size tensor this module allocates is that gradient; everything else is bounded by
one or two chunks (about 64 MiB by default) plus O(B*T) bookkeeping.

The function returns the two per-part CE *sums*; the means and the weighted total are ordinary
autograd ops on scalars, so ``loss``, ``action_loss`` and ``reasoning_loss`` are each
differentiable on their own, and the per-row weights 1/|A| and lambda_r/|R| of ``loss`` come
out of the chain rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

IGNORE_INDEX = -100
_CHUNK_BYTES = 64 * 1024 * 1024  # working-set target per chunk, in float32 bytes

__all__ = ["IGNORE_INDEX", "LossOutput", "default_chunk_rows", "reasoning_aware_loss"]


@dataclass(frozen=True)
class LossOutput:
    """Result of :func:`reasoning_aware_loss`.

    ``loss``, ``action_loss`` and ``reasoning_loss`` are 0-dim float32 tensors (float64 for
    float64 logits) carrying gradients; the accuracies are detached 0-dim float tensors; the
    token counts are the number of supervised positions in each part.
    """

    loss: torch.Tensor
    action_loss: torch.Tensor
    reasoning_loss: torch.Tensor
    action_accuracy: torch.Tensor
    reasoning_accuracy: torch.Tensor
    num_action_tokens: int
    num_reasoning_tokens: int


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk so that one float32 chunk is about 64 MiB (at least one row)."""
    return max(1, _CHUNK_BYTES // (4 * max(1, vocab_size)))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64 (exact checks); every other float type is computed in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


class _ChunkedCE(torch.autograd.Function):
    """Per-part CE sums and argmax hits over the rows listed in ``rows``.

    ``rows`` = (batch index, time index) of every supervised position, ``targets`` their label
    ids, ``is_action`` which part each belongs to. Rows are gathered chunk by chunk with
    advanced indexing, which yields a fresh chunk-sized tensor for any stride layout, so the
    logits are never viewed, sliced into a copy or made contiguous as a whole.
    """

    @staticmethod
    def forward(ctx, logits, b_idx, t_idx, targets, is_action, chunk_rows):
        cdtype = _compute_dtype(logits.dtype)
        n = targets.numel()
        lse = torch.empty(n, dtype=cdtype, device=logits.device)
        ce = torch.empty(n, dtype=cdtype, device=logits.device)
        hit = torch.empty(n, dtype=torch.bool, device=logits.device)
        # autograd is off inside forward; x is freshly gathered, so in-place ops are safe.
        for s in range(0, n, chunk_rows):
            e = min(n, s + chunk_rows)
            x = logits[b_idx[s:e], t_idx[s:e]].to(cdtype)
            tgt = targets[s:e]
            hit[s:e] = x.argmax(dim=-1) == tgt
            m = x.amax(dim=-1, keepdim=True)
            x.sub_(m)
            picked = x.gather(1, tgt.unsqueeze(1)).squeeze(1)
            log_z = x.exp_().sum(dim=-1).log_()
            lse[s:e] = log_z + m.squeeze(1)
            ce[s:e] = log_z - picked
            del x
        action_sum = ce[is_action].sum()
        reasoning_sum = ce[~is_action].sum()
        action_hits = hit[is_action].sum().to(cdtype)
        reasoning_hits = hit[~is_action].sum().to(cdtype)
        ctx.save_for_backward(logits, b_idx, t_idx, targets, is_action, lse)
        ctx.chunk_rows = chunk_rows
        ctx.mark_non_differentiable(action_hits, reasoning_hits)
        return action_sum, reasoning_sum, action_hits, reasoning_hits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_action, grad_reasoning, _grad_hits_a, _grad_hits_r):
        logits, b_idx, t_idx, targets, is_action, lse = ctx.saved_tensors
        # The one full-size allocation: the gradient itself. Unsupervised rows stay zero.
        grad = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)
        cdtype = lse.dtype
        weight = torch.where(is_action, grad_action.to(cdtype), grad_reasoning.to(cdtype))
        n, chunk_rows = targets.numel(), ctx.chunk_rows
        for s in range(0, n, chunk_rows):
            e = min(n, s + chunk_rows)
            bi, ti = b_idx[s:e], t_idx[s:e]
            x = logits[bi, ti].to(cdtype)  # fresh tensor; becomes the chunk's gradient in place
            x.sub_(lse[s:e].unsqueeze(1)).exp_()  # softmax from the saved logsumexp
            x[torch.arange(e - s, device=x.device), targets[s:e]] -= 1.0
            x.mul_(weight[s:e].unsqueeze(1))
            grad[bi, ti] = x.to(logits.dtype)
            del x
        return grad, None, None, None, None, None


def _check_inputs(logits, labels, action_mask, lambda_r, chunk_rows) -> None:
    try:
        lam = float(lambda_r)
    except (TypeError, ValueError):
        raise ValueError(f"lambda_r must be a number >= 0, got {lambda_r!r}") from None
    if not (lam >= 0 and math.isfinite(lam)):
        raise ValueError(f"lambda_r must be a finite number >= 0, got {lambda_r!r}")
    if chunk_rows is not None and (
        not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1
    ):
        raise ValueError(f"chunk_rows must be a positive int or None, got {chunk_rows!r}")
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got dtype {logits.dtype}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits shape "
            f"{tuple(logits.shape)}: expected {tuple(logits.shape[:2])}"
        )
    if action_mask.shape != labels.shape:
        raise ValueError(
            f"action_mask shape {tuple(action_mask.shape)} does not match labels shape "
            f"{tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")


def reasoning_aware_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    action_mask: torch.Tensor,
    lambda_r: float = 0.3,
    chunk_rows: int | None = None,
) -> LossOutput:
    """``action_loss + lambda_r * reasoning_loss`` over causally shifted labels.

    Args:
        logits: ``[B, T, V]``, any float dtype (computed per chunk in float32; float64 stays
            float64). Never copied as a whole; its gradient has its shape and dtype.
        labels: ``[B, T]`` integer ids aligned with ``input_ids``; ``-100`` = not supervised.
            The logit at position t is scored against label t+1.
        action_mask: ``[B, T]`` bool, True where the *label* at that position is an action
            token; supervised positions where it is False form the reasoning part.
        lambda_r: weight of the reasoning part, ``>= 0``.
        chunk_rows: supervised rows processed at once; default keeps a float32 chunk near
            64 MiB (see :func:`default_chunk_rows`).

    Raises:
        ValueError: on mismatched shapes, non-integer labels, label ids outside
            ``[0, V)`` other than -100, ``lambda_r < 0`` or a bad ``chunk_rows``.
    """
    _check_inputs(logits, labels, action_mask, lambda_r, chunk_rows)
    batch, seq, vocab = logits.shape
    device = logits.device
    labels = labels.to(device=device, dtype=torch.long)
    action_mask = action_mask.to(device=device, dtype=torch.bool)

    # Shift the labels, not the logits: target[t] = labels[t + 1]; the last position has none.
    targets = torch.full((batch, seq), IGNORE_INDEX, dtype=torch.long, device=device)
    targets[:, :-1] = labels[:, 1:]
    is_action = torch.zeros((batch, seq), dtype=torch.bool, device=device)
    is_action[:, :-1] = action_mask[:, 1:]

    supervised = targets != IGNORE_INDEX
    bad = supervised & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        raise ValueError(
            f"labels must be -100 or token ids in [0, {vocab}); found "
            f"{sorted(set(targets[bad].tolist()))[:5]}"
        )
    b_idx, t_idx = supervised.nonzero(as_tuple=True)
    row_targets = targets[b_idx, t_idx]
    row_is_action = is_action[b_idx, t_idx]
    n_action = int(row_is_action.sum())
    n_reasoning = int(row_targets.numel()) - n_action

    rows = chunk_rows if chunk_rows is not None else default_chunk_rows(vocab)
    action_sum, reasoning_sum, action_hits, reasoning_hits = _ChunkedCE.apply(
        logits, b_idx, t_idx, row_targets, row_is_action, rows
    )
    # Dividing by max(n, 1) makes an empty part exactly 0 with a zero gradient, never NaN.
    action_loss = action_sum / max(n_action, 1)
    reasoning_loss = reasoning_sum / max(n_reasoning, 1)
    total = action_loss + float(lambda_r) * reasoning_loss
    return LossOutput(
        loss=total,
        action_loss=action_loss,
        reasoning_loss=reasoning_loss,
        action_accuracy=(action_hits / max(n_action, 1)).detach(),
        reasoning_accuracy=(reasoning_hits / max(n_reasoning, 1)).detach(),
        num_action_tokens=n_action,
        num_reasoning_tokens=n_reasoning,
    )
