"""Hand-written RLDS episodes with known answers, written once per test session.

Bridge (after OpenVLA's conversion: drop step 0, binarise the gripper, movement = next state −
state, drop the last step) and Fractal (relative closedness → absolute, 1 = open).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refine_plugins.rlds import fixtures

BRIDGE_INSTRUCTION = "put the red block on the blue plate"


def bridge_states(num_steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0, 0.02, size=(num_steps, 7)), axis=0).astype(np.float32)


def bridge_actions(gripper: list[float], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    actions = rng.normal(0, 0.05, size=(len(gripper), 7)).astype(np.float32)
    actions[0] = 0.0  # Bridge's first action is all zeros
    actions[:, 6] = gripper
    return actions


# recorded gripper per episode -> gripper after drop-first, binarise, drop-last
BRIDGE_GRIPPERS = {
    0: ([0.0, 1.0, 0.5, 0.02, 0.01, 0.99], [1, 0, 0, 0]),
    # a trailing run of in-between values keeps the last raw value (upstream "gives up")
    1: ([0.0, 1.0, 1.0, 0.3, 0.6], [1, 1, 0.6]),
}

# recorded closedness per episode -> absolute gripper (1 = open)
FRACTAL_GRIPPERS = {
    0: ([0, 0, 1, 0, 0, -1, 0], [1, 1, 0, 0, 0, 1, 1]),
    1: ([0, 0, 0, 0], [1, 1, 1, 1]),
    2: ([-1, 0, 0.05, 1, -0.5], [1, 1, 1, 0, 1]),
}


@dataclass
class RldsFixtures:
    root: Path
    bridge: Path  # version folders
    fractal: Path
    bridge_inputs: list[dict]
    fractal_inputs: list[dict]
    nan_root: Path
    wrong_rank_root: Path


def bridge_inputs() -> list[dict]:
    episodes = []
    for k, (gripper, _) in BRIDGE_GRIPPERS.items():
        n = len(gripper)
        episodes.append({
            "actions": bridge_actions(gripper, k), "states": bridge_states(n, k),
            "instruction": BRIDGE_INSTRUCTION if k == 0 else f"open drawer {k}",
            "images": {"image_0": fixtures.synthetic_frames(n, fixtures.BRIDGE_IMAGE, seed=50 + k)},
            "file_path": f"/data/bridge/raw/scene{k}/traj{k}", "episode_id": 7 + k,
        })
    # no instruction anywhere: OpenVLA's skip_unlabeled drops it
    episodes.append({"actions": bridge_actions([0, 1, 1, 1], 9), "states": bridge_states(4, 9),
                     "instruction": ""})
    return episodes


def fractal_inputs() -> list[dict]:
    episodes = []
    for k, (closedness, _) in FRACTAL_GRIPPERS.items():
        n = len(closedness)
        rng = np.random.default_rng(200 + k)
        episodes.append({
            "world_vector": rng.normal(0, 0.1, (n, 3)), "rotation_delta": rng.normal(0, 0.1, (n, 3)),
            "gripper_closedness_action": closedness, "base_pose_tool_reached": rng.normal(0, 1, (n, 7)),
            "gripper_closed": rng.uniform(0, 1, (n, 1)), "instruction": f"pick coke can {k}",
        })
    return episodes


def write_wrong_rank(root: Path) -> Path:
    """A generic RLDS dataset whose 'image' is a 2-D (grey, no channel) array."""
    import tensorflow_datasets as tfds

    F = tfds.features
    features = F.FeaturesDict({"steps": F.Dataset({
        "observation": F.FeaturesDict({"image": F.Tensor(shape=(16, 16), dtype=np.uint8)}),
        "action": F.Tensor(shape=(7,), dtype=np.float32),
        "language_instruction": F.Text(),
    })})
    steps = [{"observation": {"image": np.zeros((16, 16), np.uint8)}, "action": np.zeros(7, np.float32),
              "language_instruction": "x"} for _ in range(3)]
    return fixtures.write_rlds(root, "grey_robot", "1.0.0", features, {"train": [{"steps": steps}]})


def write_all(root: Path) -> RldsFixtures:
    bridge_eps, fractal_eps = bridge_inputs(), fractal_inputs()
    bridge = fixtures.write_bridge_dataset(root / "data", {"train": bridge_eps, "val": bridge_eps[:1]})
    fractal = fixtures.write_fractal_dataset(root / "data", fractal_eps)
    nan_eps = bridge_inputs()[:2]
    for episode in nan_eps:
        episode.pop("images")  # synthetic frames at the small size instead
    nan_eps[0]["actions"] = nan_eps[0]["actions"].copy()
    nan_eps[0]["actions"][3, 6] = np.nan  # recorded step 3 -> yielded step 2
    fixtures.write_bridge_dataset(root / "nan", nan_eps, image_size=(64, 64))
    write_wrong_rank(root / "grey")
    return RldsFixtures(root, bridge, fractal, bridge_eps, fractal_eps, root / "nan", root / "grey")
