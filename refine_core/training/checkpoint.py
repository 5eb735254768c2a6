"""Checkpoints: what a training run writes, how it is kept, and how a policy is rebuilt from one.

Layout of `OUT/checkpoints/step-0000100/`:

    weights.safetensors    the trained tensors: every trainable parameter (plus the embedding
                           rows when the codec added tokens), or only the LoRA adapters; the
                           file's metadata says which ("kind": "trainable" | "adapter")
    optimizer.pt           AdamW state          scheduler.pt   LR schedule state
    rng-<rank>.safetensors torch/cuda/numpy/python RNG of each process (no pickle anywhere)
    trainer_state.json     step, data-stream position, collapse-detector state, world size
    refine.json            resolved config, action statistics (as the codec uses them), codec and
                           backbone name + options, dataset identity: all `load_checkpoint` needs

An FSDP run writes `sharded/` and `optimizer_groups.json` in place of `optimizer.pt` (see fsdp.py);
its `weights.safetensors` is gathered, so it loads as any other.

A checkpoint is written into `checkpoints/.tmp-step-…` and renamed into place, so any
`step-*` directory is complete. `checkpoints/latest` names the newest. Retention keeps the last
`train.keep_checkpoints`; the newest complete one is never deleted.

The base weights are not copied: `load_checkpoint` rebuilds the backbone from its options (the
`tiny` preset from its seed, a `path` from that directory or hub id), so that source must still
be there.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refine_core.config import RunConfig, config_difference
from refine_core.files import atomic_write
from refine_core.errors import UsageError
from refine_core.statistics import Statistics

CHECKPOINTS = "checkpoints"
LATEST = "latest"
RUN_INFO = "refine.json"
TRAINER_STATE = "trainer_state.json"
WEIGHTS = "weights.safetensors"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{7,})$")
# Settings a resumed run may change: they do not alter what is computed.
# train.lr: what a diverged run is told to lower before resuming (the schedule keeps its position,
# the trainer rebases it on the new value); closed_loop: evaluation, not training
RESUMABLE_CHANGES = frozenset({"train.max_steps", "train.log_every", "train.save_every",
                               "train.keep_checkpoints", "train.lr", "closed_loop"})


def rebase_lr(scheduler, lr: float) -> None:
    """A resumed run on a new base learning rate: the loaded optimizer and scheduler carry the old
    one. The schedule keeps its position: the current step's lr is recomputed from the new base."""
    scheduler.base_lrs = [lr for _ in scheduler.optimizer.param_groups]
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = lr
    scheduler.last_epoch -= 1  # step() advances it again and sets every group's lr (and get_last_lr)
    scheduler.step()


def run_info(setup: Any, step: int) -> dict[str, Any]:
    """refine.json of a training run's checkpoint: what loading it needs (config, backbone, codec,
    action statistics, what kind of weights) and where its data came from."""
    config, codec = setup.config, setup.backbone.codec
    return {
        "format": FORMAT_VERSION, "step": step, "config": config.to_dict(),
        "backbone": {"name": config.backbone.name, "options": config.backbone.options},
        "codec": {"name": config.codec.name, "options": config.codec.options},
        "action_statistics": codec.stats.to_dict(),
        "weights": "adapter" if setup.lora_modules else "trainable", "lora_modules": setup.lora_modules,
        "dataset": {"name": setup.dataset.name, "identity": setup.dataset.identity},
        "annotations": None if setup.annotations is None else {
            "directory": str(setup.annotations.directory), "teacher": setup.annotations.teacher},
    }


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under OUT/checkpoints, oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(out: str | Path) -> Path | None:
    checkpoints = list_checkpoints(out)
    return checkpoints[-1][1] if checkpoints else None


def check_out_dir(out: str | Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: start fresh); refuses to start over existing checkpoints."""
    latest = latest_checkpoint(out)
    if latest is not None and not resume:
        raise UsageError(f"{Path(out) / CHECKPOINTS} already holds checkpoints (newest {latest.name}); "
                         f"pass --resume to continue that run, or choose another --out")
    return latest


def resume_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first setting a resumed run changed that resuming cannot honour (see RESUMABLE_CHANGES)."""
    found = config_difference(saved, current, ignore=RESUMABLE_CHANGES)
    return None if found is None else f"{found[0]} (checkpoint {found[1]!r}, now {found[2]!r})"


def save_weights(path: Path, tensors: dict[str, torch.Tensor], kind: str) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path),
              metadata={"kind": kind, "format": str(FORMAT_VERSION)})


def finish_checkpoint(tmp: Path, out: Path, step: int, keep: int) -> Path:
    """Rename a fully written temp dir into place, point `latest` at it, prune old ones."""
    root = out / CHECKPOINTS
    final = root / step_dir_name(step)
    if final.exists():  # the same step saved again (e.g. a resumed run's last step): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write(root / LATEST, final.name + "\n")
    checkpoints = list_checkpoints(out)
    for _, path in checkpoints[:-max(1, keep)]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def remove_partial(out: Path) -> None:
    """Temp dirs left by a run killed while saving."""
    root = out / CHECKPOINTS
    if root.is_dir():
        for path in root.glob(".tmp-step-*"):
            shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    import random

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(state: dict[str, Any], path: Path) -> None:
    """One process's RNG state as safetensors (no pickle): generator states as integer tensors,
    their scalars as JSON in the file's metadata."""
    from safetensors.torch import save_file

    version, python_state, gauss = state["python"]
    kind, key, pos, has_gauss, cached = state["numpy"]
    tensors = {"torch": state["torch"], "python": torch.tensor(python_state, dtype=torch.int64),
               "numpy": torch.from_numpy(np.asarray(key, dtype=np.int64))}
    tensors.update({f"cuda.{i}": s for i, s in enumerate(state.get("cuda", []))})
    scalars = {"python_version": version, "python_gauss": gauss, "numpy_kind": kind, "numpy_pos": int(pos),
               "numpy_has_gauss": int(has_gauss), "numpy_cached_gaussian": float(cached)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={"rng": json.dumps(scalars)})


def load_rng(checkpoint: Path, rank: int) -> dict[str, Any]:
    """The state `save_rng` wrote for `rank` (rank 0's when resumed on more processes than saved)."""
    from safetensors import safe_open

    path = checkpoint / f"rng-{rank}.safetensors"
    if not path.is_file():
        path = checkpoint / "rng-0.safetensors"
    if not path.is_file():
        return _load_legacy_rng(checkpoint, rank)
    with safe_open(str(path), framework="pt") as handle:
        scalars = json.loads((handle.metadata() or {})["rng"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(name.startswith("cuda.") for name in tensors))]
    state = {"torch": tensors["torch"],
             "python": (scalars["python_version"], tuple(tensors["python"].tolist()),
                        scalars["python_gauss"]),
             "numpy": (scalars["numpy_kind"], tensors["numpy"].numpy().astype(np.uint32),
                       scalars["numpy_pos"],
                       scalars["numpy_has_gauss"], scalars["numpy_cached_gaussian"])}
    if cuda:
        state["cuda"] = cuda
    return state


def _load_legacy_rng(checkpoint: Path, rank: int) -> dict[str, Any]:
    """`rng-<rank>.pt` of checkpoints written before save_rng: read with torch's restricted
    (weights-only) unpickler, which admits tensors, plain containers and the three numpy names
    an array needs, so a crafted file cannot run code."""
    path = checkpoint / f"rng-{rank}.pt"
    if not path.is_file():
        path = checkpoint / "rng-0.pt"
    core = getattr(np, "_core", None) or np.core
    allowed = [np.dtype, np.ndarray, core.multiarray._reconstruct, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, weights_only=True)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is missing or unreadable ({type(exc).__name__}); "
                         f"is {path.parent} a refine checkpoint directory?") from None


def load_weights_into(model: torch.nn.Module, path: Path) -> dict[str, str]:
    """Load saved tensors by name; every saved tensor must match a parameter. Returns the metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    parameters = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(parameters))
    if unknown:
        raise UsageError(f"{path} holds {len(unknown)} tensors this model lacks (first {unknown[0]!r}); "
                         f"the checkpoint was made with another backbone, codec or LoRA setting")
    with torch.no_grad():
        for name, tensor in tensors.items():
            target = parameters[name]
            if target.shape != tensor.shape:
                raise UsageError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model "
                                 f"{tuple(target.shape)}")
            target.copy_(tensor.to(dtype=target.dtype, device=target.device))
    return metadata


def read_checkpoint_info(directory: str | Path) -> tuple[Path, dict[str, Any]]:
    """(the step-* directory, its refine.json) for a step-* directory or a run's OUT / OUT/checkpoints."""
    directory = Path(directory)
    if not (directory / RUN_INFO).is_file():
        base = directory.parent if directory.name == CHECKPOINTS else directory
        latest = latest_checkpoint(base)
        if latest is None:
            raise UsageError(f"No refine checkpoint in {directory} (no {RUN_INFO}, no {CHECKPOINTS}/step-*)")
        directory = latest
    info = read_json(directory / RUN_INFO)
    if info.get("format") != FORMAT_VERSION:
        raise UsageError(f"{directory} is checkpoint format {info.get('format')!r}; this refine reads "
                         f"{FORMAT_VERSION}")
    return directory, info


def load_checkpoint(directory: str | Path, registry: Any = None) -> tuple[Any, RunConfig]:
    """(backbone with the codec attached and the trained weights loaded, the run's RunConfig).

    `directory` is a `step-*` checkpoint, or a run's OUT / OUT/checkpoints (the newest is used).
    The backbone is in eval mode on the CPU; move it with `backbone.model.to(device)`.
    """
    from refine_core.training.setup import apply_transfer, attach_codec, build_backbone

    directory, info = read_checkpoint_info(directory)
    if registry is None:
        from refine_core.registry import get_registry

        registry = get_registry()
    config = RunConfig.model_validate(info["config"])
    backbone = build_backbone(config, registry)
    attach_codec(backbone, config, registry, Statistics.from_dict(info["action_statistics"]),
                 stats_key=(info.get("dataset") or {}).get("name"))
    apply_transfer(backbone, config)  # LoRA runs need the adapter modules before loading them
    load_weights_into(backbone.model, directory / WEIGHTS)
    for parameter in backbone.model.parameters():
        parameter.requires_grad_(False)
    backbone.model.eval()
    return backbone, config
