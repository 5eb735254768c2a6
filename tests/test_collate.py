"""Collation: spans, masks and padding of supervised sequences, in both reasoning orders."""
from __future__ import annotations

import numpy as np
import pytest

from refine_core.data.collate import IGNORE, assemble, drop_reasoning, pad_batch

PROMPT, REASON, ACTIONS, EOS = [7, 8, 9], [20, 21], [90, 91, 92], 1


def test_reason_then_act_layout():
    s = assemble(PROMPT, ACTIONS, [True] * 3, EOS, REASON, "reason_then_act")
    assert s.input_ids == PROMPT + REASON + ACTIONS + [EOS]
    assert s.labels == [IGNORE] * 3 + REASON + ACTIONS + [EOS]
    assert s.action_mask == [False] * 3 + [False, False] + [True] * 3 + [True]
    assert s.token_type_ids == [0] * 3 + [1] * 6


def test_act_then_reason_layout_supervises_reasoning_after_actions():
    s = assemble(PROMPT, ACTIONS, [True] * 3, EOS, REASON, "act_then_reason")
    assert s.input_ids == PROMPT + ACTIONS + REASON + [EOS]
    assert s.action_mask == [False] * 3 + [True] * 3 + [False, False] + [False]
    assert s.labels[3:] == ACTIONS + REASON + [EOS]


@pytest.mark.parametrize("order", ["reason_then_act", "act_then_reason"])
def test_without_reasoning_both_orders_are_action_only(order):
    s = assemble(PROMPT, ACTIONS, [True] * 3, EOS, None, order)
    assert s.input_ids == PROMPT + ACTIONS + [EOS]
    assert s.action_mask == [False] * 3 + [True] * 4


def test_text_codec_span_mask_is_respected():
    s = assemble(PROMPT, ACTIONS, [True, False, True], EOS, None)
    assert s.action_mask[3:] == [True, False, True, True]


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in length"):
        assemble(PROMPT, ACTIONS, [True], EOS)
    with pytest.raises(ValueError, match="unknown reasoning order"):
        assemble(PROMPT, ACTIONS, [True] * 3, EOS, REASON, "sideways")


def test_padding_is_right_sided_and_masks_are_exact():
    a = assemble(PROMPT, ACTIONS, [True] * 3, EOS, REASON)
    b = assemble(PROMPT[:1], ACTIONS, [True] * 3, EOS, None)
    batch = pad_batch([a, b], pad_id=0)
    assert batch["input_ids"].shape == (2, len(a))
    width = len(a) - len(b)
    assert batch["attention_mask"][1].tolist() == [1] * len(b) + [0] * width
    assert batch["labels"][1, len(b):].tolist() == [IGNORE] * width
    assert not batch["action_mask"][1, len(b):].any()
    assert batch["input_ids"][1, len(b):].tolist() == [0] * width
    # every supervised position is either an action or reasoning, never padding or prompt
    supervised = batch["labels"] != IGNORE
    assert (batch["action_mask"] <= supervised).all()
    assert int(supervised.sum()) == len(REASON) + 2 * (len(ACTIONS) + 1)


def test_reasoning_dropout_rate():
    rng = np.random.default_rng(0)
    drops = [drop_reasoning(rng, 0.25) for _ in range(4000)]
    assert abs(np.mean(drops) - 0.25) < 0.03
    assert not any(drop_reasoning(rng, 0.0) for _ in range(100))
