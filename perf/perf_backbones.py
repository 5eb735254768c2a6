"""The backbones P5 (closed_loop_latency.py) and P8 (server_throughput.py) measure, untrained.

- `tiny` (default): the tiny hf_vlm preset, on the CPU.
- `openvla-7b`: OpenVLA's released configuration (7.5 B parameters) with random bf16 weights, written
  once in the upstream layout to `--work` (cuda_full_size.write_checkpoint, about 15 GB) and loaded
  through `backbone.path` as a user's checkpoint is, then moved to the GPU. Its tokenizer is the tiny
  preset's (same special ids), so prompts are a few tokens shorter than with Llama-2's.
Both get a `bins` codec over the same fixed statistics (nothing is trained, so success is 0).
"""
from __future__ import annotations

from pathlib import Path

CHOICES = ("tiny", "openvla-7b")


def add_arguments(parser, what: str) -> None:
    """--full-size, --work and --reasoning-to-budget, as P5 and P8 both take them."""
    parser.add_argument("--full-size", choices=CHOICES, default="tiny", help=what)
    parser.add_argument("--work", type=Path, default=None,
                        help="where --full-size openvla-7b keeps its random checkpoint (about 15 GB)")
    parser.add_argument("--reasoning-to-budget", action="store_true",
                        help="no repetition guard: an untrained model reasons until the token budget (or an "
                             "action or end token), as a trained one's long reasoning would")


def guard_settings(reasoning_to_budget: bool) -> dict:
    """PolicySettings overrides for --reasoning-to-budget (the repetition guard never fires)."""
    return {"repetition_limit": 10**9} if reasoning_to_budget else {}


def fixed_statistics():
    """Action statistics of 100 seeded random actions (|xyz|, |rpy| < 0.04, gripper 0 or 1)."""
    import numpy as np

    from refine_core import Statistics

    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.04, 0.04, size=(100, 7))
    actions[:, 6] = rng.integers(0, 2, 100)
    return Statistics.from_array(actions)


def build(name: str = "tiny", work: Path | None = None):
    """The backbone `name` (one of CHOICES) with its bins codec; `work` holds the 7B checkpoint."""
    from refine_core.registry import Registry

    registry = Registry(entry_points=False)
    if name == "tiny":
        backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny"})
    elif name == "openvla-7b":
        if work is None:
            raise SystemExit("--full-size openvla-7b needs --work DIR (about 15 GB for the checkpoint)")
        import torch

        from cuda_full_size import write_checkpoint

        if not (work / "config.json").is_file():
            work.mkdir(parents=True, exist_ok=True)
            write_checkpoint(work, None)
        backbone = registry.build("backbone", "openvla", {"path": str(work), "dtype": "bfloat16"})
        backbone.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    else:
        raise SystemExit(f"unknown backbone {name!r}; choose one of {', '.join(CHOICES)}")
    return backbone.attach_codec(registry.build("codec", "bins", {}), fixed_statistics())


def describe(name: str) -> str:
    import torch

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    if name == "tiny":
        return "tiny hf_vlm preset, UNTRAINED (bins codec over fixed statistics)"
    return f"OpenVLA-7B configuration, RANDOM bf16 weights (bins codec over fixed statistics), on {where}"
