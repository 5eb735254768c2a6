"""FSDP for `refine train`: torch's `fully_shard` (FSDP2) on the backbone's transformer blocks.

When it is on: `accelerate launch --use_fsdp` (or an accelerate config with `distributed_type: FSDP`).
On GPUs accelerate then reports `DistributedType.FSDP`; on the CPU it reports MULTI_CPU even under
`--use_fsdp` (its FSDP mode is GPU-only), so the launcher's `ACCELERATE_USE_FSDP` decides there.
refine shards the model itself rather than through `accelerator.prepare`: each block that
`Backbone.blocks()` names becomes one FSDP unit, the rest of the model (embeddings, vision tower,
head) the root unit. Freezing and LoRA need nothing more: FSDP2 keeps `requires_grad` per
parameter. `fsdp_reshard_after_forward` and `fsdp_offload_params` are honoured; the other fsdp_*
settings of accelerate (FSDP1's sharding strategies, auto-wrap policies) do not apply, since refine
picks the units. Mixed precision stays what it is without FSDP (autocast, float32 trainable weights).

Checkpoints (beside the usual rng/scheduler/trainer_state/refine.json files of a step directory):

    sharded/                 every rank's shards of the saved parameters and of the AdamW state,
                             written by torch.distributed.checkpoint in its safetensors format (each
                             shard's offsets in the file's metadata: no pickle), so a resume may
                             run on another number of processes
    optimizer_groups.json    the AdamW hyper-parameters of each parameter group (lr, betas, …)
    weights.safetensors      the saved parameters gathered into whole tensors (rank 0): the normal
                             layout, which `load_checkpoint`, `refine eval` and `refine serve` read
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

SHARDED = "sharded"
OPTIMIZER_GROUPS = "optimizer_groups.json"
DEEPSPEED_REFUSAL = ("refine train does not run DeepSpeed; for sharded training launch with FSDP "
                     "(`accelerate launch --use_fsdp --fsdp_version 2 …`, see the README)")


def _flag(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes")


def fsdp_requested(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return (accelerator.distributed_type == DistributedType.MULTI_CPU and _flag("ACCELERATE_USE_FSDP")
            and torch.distributed.is_initialized())


def _shard_options(accelerator: Any) -> dict[str, Any]:
    from torch.distributed.fsdp import CPUOffloadPolicy

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    reshard = getattr(plugin, "reshard_after_forward", None)
    if not isinstance(reshard, bool):  # FSDP1 strategies or no plugin (CPU): the launcher's setting
        reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("false", "no_shard",
                                                                                      "shard_grad_op")
    offload = getattr(plugin, "cpu_offload", None)
    offload = bool(getattr(offload, "offload_params", False)) or _flag("FSDP_OFFLOAD_PARAMS")
    options: dict[str, Any] = {"reshard_after_forward": reshard}
    if offload:
        options["offload_policy"] = CPUOffloadPolicy()
    return options


def shard_backbone(backbone: Any, accelerator: Any) -> None:
    """Shard `backbone.model` in place: one FSDP unit per block, then the root. fully_shard moves
    each unit to the process's device as it shards it, so no process holds the whole model there."""
    from torch.distributed.fsdp import fully_shard

    options = _shard_options(accelerator)
    # FSDP2 warns that the logits are a view (an in-place op on them would skip its backward hook);
    # refine's loss never writes into the logits (the Loss contract), so the warning is noise
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for _, block in backbone.blocks():
        fully_shard(block, **options)
    fully_shard(backbone.model, **options)


class ShardedBackbone(torch.nn.Module):
    """The FSDP counterpart of the trainer's `_BackboneModule`: autocast as accelerate would apply
    it, and `no_sync` (which `accelerator.no_sync` calls) as FSDP2's gradient-sync switch."""

    def __init__(self, backbone: Any, accelerator: Any):
        super().__init__()
        self.model = backbone.model
        self.backbone, self.accelerator = backbone, accelerator

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        with self.accelerator.autocast():
            return self.backbone.forward(batch)

    def no_sync(self):
        return _GradientSyncOff(self.model)


class _GradientSyncOff:
    """Micro-steps before the last accumulate unsharded gradients locally (no reduce-scatter)."""

    def __init__(self, model: Any):
        self.model = model

    def __enter__(self):
        self.model.set_requires_gradient_sync(False)

    def __exit__(self, *exc):
        self.model.set_requires_gradient_sync(True)


def clip_sharded_gradients(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ (DTensor-aware) with the global norm returned as a plain tensor."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


# -- checkpoints --------------------------------------------------------------------------------
def _optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(flat {"optimizer.<param>.<key>": tensor}, the torch state dict they belong to)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer)  # initialises an empty AdamW state in place
    flat = {f"optimizer.{name}.{key}": value for name, entries in state["state"].items()
            for key, value in entries.items() if isinstance(value, torch.Tensor)}
    return flat, state


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: set[str], directory: Path,
                 kind: str, is_main: bool) -> None:
    """Write `directory/sharded` (every rank its shards), the optimizer's groups and, on rank 0,
    the gathered `weights.safetensors`. Every process calls this."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    from refine_core.training.checkpoint import WEIGHTS, save_weights

    parameters = [(n, p) for n, p in model.named_parameters() if n in saved]
    tensors, _ = _optimizer_tensors(model, optimizer)
    tensors.update({f"model.{name}": p.detach() for name, p in parameters})
    writer = HuggingFaceStorageWriter(str(directory / SHARDED), save_distributed=True)
    dcp.save(tensors, storage_writer=writer)
    gathered = {name: _full(p) for name, p in parameters}  # a collective: every rank, the same order
    if is_main:
        groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        (directory / OPTIMIZER_GROUPS).write_text(json.dumps(groups, indent=2))
        save_weights(directory / WEIGHTS, gathered, kind)


def _full(parameter: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    tensor = parameter.detach()
    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).cpu()


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: set[str],
                 directory: Path) -> None:
    """Load what `save_sharded` wrote into the sharded model and its optimizer, in place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    tensors, state = _optimizer_tensors(model, optimizer)
    tensors.update({f"model.{n}": p.detach() for n, p in model.named_parameters() if n in saved})
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(directory / SHARDED)))
    groups = json.loads((directory / OPTIMIZER_GROUPS).read_text())
    if len(groups) != len(state["param_groups"]):
        from refine_core.errors import UsageError

        raise UsageError(f"{directory}: {len(groups)} optimizer groups saved, the run has "
                         f"{len(state['param_groups'])}")
    for target, values in zip(state["param_groups"], groups):
        target.update({k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    set_optimizer_state_dict(model, optimizer, state)
