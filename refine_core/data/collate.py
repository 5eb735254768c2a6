"""Turn one training sample into a supervised token sequence, and pad samples into a batch.

A sequence is `prompt | suffix`: the prompt (images, instruction) is unsupervised; the suffix holds
the reasoning text and the action tokens, then eos, all supervised. `action_mask` marks label
positions that hold action tokens (the loss weighs them 1, everything else supervised λ_r).

- `reason_then_act` (ReFineVLA): reasoning → actions → eos; eos counts as an action token, as in
  OpenVLA's labels (the model must learn to stop right after the actions).
- `act_then_reason`: actions → reasoning → eos; inference can stop after the action span and
  skip the reasoning, while training still supervises it. eos then closes the reasoning.
- reasoning dropout removes the reasoning of a sample (the same sample trains action-only).

`token_type_ids` are 0 on the prompt and 1 on the suffix (prefix-LM backbones attend
bidirectionally over type 0). Padding is on the right for training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

IGNORE = -100
ReasoningOrder = Literal["reason_then_act", "act_then_reason"]


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    action_mask: list[bool]
    token_type_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def assemble(
    prompt_ids: Sequence[int],
    action_ids: Sequence[int],
    action_span_mask: Sequence[bool],
    eos_id: int,
    reasoning_ids: Sequence[int] | None = None,
    order: ReasoningOrder = "reason_then_act",
) -> EncodedSample:
    """The supervised sequence of one sample (see module docstring for the layout)."""
    if len(action_ids) != len(action_span_mask):
        raise ValueError(f"action ids ({len(action_ids)}) and their mask ({len(action_span_mask)}) differ in "
                         "length")
    reasoning = list(reasoning_ids or [])
    actions, act_mask = list(action_ids), [bool(m) for m in action_span_mask]
    if order == "reason_then_act":
        suffix = reasoning + actions + [eos_id]
        suffix_mask = [False] * len(reasoning) + act_mask + [True]
    elif order == "act_then_reason":
        suffix = actions + reasoning + [eos_id]
        suffix_mask = act_mask + [False] * len(reasoning) + [not reasoning]
    else:
        raise ValueError(f"unknown reasoning order {order!r}; use reason_then_act or act_then_reason")
    prompt = list(prompt_ids)
    return EncodedSample(
        input_ids=prompt + suffix,
        labels=[IGNORE] * len(prompt) + suffix,
        action_mask=[False] * len(prompt) + suffix_mask,
        token_type_ids=[0] * len(prompt) + [1] * len(suffix),
    )


def drop_reasoning(rng: np.random.Generator, probability: float) -> bool:
    """Whether this sample trains without its reasoning (reasoning dropout)."""
    return probability > 0 and bool(rng.random() < probability)


def pad_batch(samples: Sequence[EncodedSample], pad_id: int):
    """Right-padded tensors: input_ids, attention_mask, labels, action_mask, token_type_ids."""
    import torch

    if not samples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(s) for s in samples)

    def column(values: list[list], fill, dtype) -> torch.Tensor:
        # filled row by row in NumPy: several times faster than torch.tensor on padded nested lists
        out = np.full((len(values), width), fill, dtype=dtype)
        for row, value in enumerate(values):
            out[row, :len(value)] = value
        return torch.from_numpy(out)

    return {
        "input_ids": column([s.input_ids for s in samples], pad_id, np.int64),
        "attention_mask": column([[1] * len(s) for s in samples], 0, np.int64),
        "labels": column([s.labels for s in samples], IGNORE, np.int64),
        "action_mask": column([s.action_mask for s in samples], False, np.bool_),
        "token_type_ids": column([s.token_type_ids for s in samples], 1, np.int64),
    }
