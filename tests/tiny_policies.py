"""Untrained tiny backbones with an action codec attached: what the policy, serving and
closed-loop tests act with (their actions are arbitrary but deterministic)."""
from __future__ import annotations

import numpy as np

from refine_core import Statistics
from refine_core.evaluate.baselines import DoNothingPolicy
from refine_core.registry import Registry


def action_statistics(rows: int = 200) -> Statistics:
    """Statistics of small random deltas with an open/closed gripper (the gripper not normalised)."""
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.05, 0.05, size=(rows, 7))
    actions[:, 6] = rng.integers(0, 2, rows)
    return Statistics.from_array(actions, mask=np.array([True] * 6 + [False]))


def tiny_backbone(name: str = "hf_vlm", codec: str | None = None, registry: Registry | None = None):
    """The backbone's tiny preset with its usual codec (spatial for SpatialVLA, bins otherwise)."""
    registry = registry or Registry(entry_points=False)
    backbone = registry.build("backbone", name, {"preset": "tiny"})
    codec = codec or ("spatial" if name == "spatialvla" else "bins")
    return backbone.attach_codec(registry.build("codec", codec, {}), action_statistics())


def overfit(backbone, batch, lr: float, max_steps: int, target: float = 0.05) -> float:
    """Adam on one batch until its loss (action and reasoning weighted alike) is below `target` (0.05:
    well past argmax-correct, so greedy decoding reproduces every token; lower for sampling); the last
    loss."""
    import torch

    from refine_core.loss import reasoning_aware_loss

    optimizer = torch.optim.Adam(backbone.model.parameters(), lr=lr)
    for _ in range(max_steps):
        out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"], 1.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if float(out.loss.detach()) < target:
            break
    return float(out.loss.detach())


class SlowDoNothing(DoNothingPolicy):
    """Do-nothing taking 10 ms per query: a run slow enough to kill mid-way."""

    def act_batch(self, sessions, images, observations=None):
        import time

        time.sleep(0.01)
        return super().act_batch(sessions, images, observations)


def kill_after_logged_episodes(code: str, log, cache_dir, episodes: int = 3) -> int:
    """Run `code` (a `python -c` program evaluating into the folder of `log`), SIGKILL it once the
    server has logged `episodes` finished episodes, and return how many it had logged."""
    import os
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               env={**os.environ, "REFINE_CACHE_DIR": str(cache_dir)})
    deadline = time.time() + 120
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < episodes):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return len(log.read_text().splitlines())
