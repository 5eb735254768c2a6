"""Gripper and action conversions, in NumPy, with OpenVLA's exact rules.

Source: openvla/openvla `prismatic/vla/datasets/rlds/utils/data_utils.py`
(`binarize_gripper_actions`, `rel2abs_gripper_actions`, `invert_gripper_actions`,
`relabel_bridge_actions`) and `prismatic/vla/datasets/rlds/oxe/transforms.py`. Upstream runs
them as TensorFlow scans over one trajectory; these are the same rules as plain loops, so they
can be tested on hand-written numbers.
"""
from __future__ import annotations

import numpy as np


def binarize_gripper(actions: np.ndarray) -> np.ndarray:
    """Continuous gripper opening (1 open … 0 closed) → {0, 1}.

    Values > 0.95 are open (1), values < 0.05 closed (0). A value in between takes the label of
    the next open/closed value after it (the state the gripper is moving to). A run of
    in-between values at the very end keeps the trajectory's last raw value, as upstream does.
    """
    actions = np.asarray(actions, dtype=np.float32)
    out = np.empty_like(actions)
    if len(actions) == 0:
        return out
    is_open, is_closed = actions > 0.95, actions < 0.05
    carry = actions[-1]
    for i in range(len(actions) - 1, -1, -1):  # backwards: the label comes from what follows
        if is_open[i] or is_closed[i]:
            carry = np.float32(is_open[i])
        out[i] = carry
    return out


def rel2abs_gripper(actions: np.ndarray) -> np.ndarray:
    """Relative closedness commands (+1 close, −1 open, 0 no change) → absolute 1 open / 0 closed.

    A value > 0.1 is "close", < −0.1 is "open", anything else keeps the previous state. The state
    before the first command is the opposite of that command (upstream assumes the first command
    is not redundant); a trajectory with no command at all is open throughout.
    """
    actions = np.asarray(actions, dtype=np.float32)
    # +1 = open, −1 = closed, 0 = keep (the sign flip makes "close" negative)
    commands = np.where(actions < -0.1, 1, np.where(actions > 0.1, -1, 0))
    nonzero = np.flatnonzero(commands)
    state = -commands[nonzero[0]] if len(nonzero) else 1
    out = np.empty(len(actions), dtype=np.float32)
    for i, command in enumerate(commands):
        if command != 0:
            state = command
        out[i] = state / 2 + 0.5
    return out


def invert_gripper(actions: np.ndarray) -> np.ndarray:
    """Closed = 1 → open = 1 (upstream clips to [0, 1] first for datasets that use ±1)."""
    return 1.0 - np.clip(np.asarray(actions, dtype=np.float32), 0.0, 1.0)


def relabel_from_state(states: np.ndarray) -> np.ndarray:
    """Bridge's movement actions from the reached proprioceptive state: s[t+1, :6] − s[t, :6].

    The result has one row fewer than `states`: the last step has no next state, and upstream
    drops it.
    """
    states = np.asarray(states, dtype=np.float32)
    return states[1:, :6] - states[:-1, :6]
