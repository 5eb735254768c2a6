"""What tests/test_fsdp.py starts under `accelerate launch --use_fsdp`: train_toys' run, plus test
hooks: `--die-at-forward N` (SIGKILL rank 0 at its N-th forward: a run killed mid-step),
`--dump-full FILE` (rank 0 writes every parameter of the sharded model, gathered, after training)
and `--record-samples DIR` (each rank appends the keys of the samples it draws to DIR/rank-R.txt)."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from train_toys import ToyDataset, check_imports_the_checkout, toy_config


def kill_at_forward(count: int) -> None:
    from refine_plugins.hf_vlm.backbone import HFVLMBackbone

    original, calls = HFVLMBackbone.forward, {"n": 0}

    def forward(self, batch, output_attentions=False):
        calls["n"] += 1
        if calls["n"] == count and os.environ.get("RANK") == "0":
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, batch, output_attentions)

    HFVLMBackbone.forward = forward


def dump_full(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file
    from torch.distributed.tensor import DTensor

    full = {}
    for name, parameter in model.named_parameters():
        tensor = parameter.detach()
        full[name] = (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).cpu().contiguous()
    if os.environ.get("RANK") == "0":
        save_file(full, str(path))


def record_samples(directory: Path) -> None:
    from refine_core.training import Trainer

    original = Trainer._draw

    def draw(self, count):
        samples = original(self, count)
        with open(directory / f"rank-{os.environ.get('RANK', '0')}.txt", "a") as log:
            log.write("".join(sample.key + "\n" for sample in samples))
        return samples

    Trainer._draw = draw


def main(argv: list[str]) -> None:
    from refine_core.training import Trainer, prepare_run

    check_imports_the_checkout()
    torch.set_num_threads(1)
    out, rest = Path(argv[0]), argv[1:]
    sets, options = [], {}
    while rest:
        flag, value, rest = rest[0], rest[1], rest[2:]
        if flag == "--set":
            sets.append(value)
        else:
            options[flag] = value
    if "--record-samples" in options:
        record_samples(Path(options["--record-samples"]))
    if "--die-at-forward" in options:
        kill_at_forward(int(options["--die-at-forward"]))
    setup = prepare_run(toy_config(*sets), dataset=ToyDataset(), annotations_dir=options.get("--annotations"))
    trainer = Trainer(setup, out, resume="--resume" in options)
    trainer.fit()
    print(f"fsdp={trainer.fsdp}", flush=True)
    if "--dump-full" in options:
        dump_full(setup.backbone.model, Path(options["--dump-full"]))


if __name__ == "__main__":
    main(sys.argv[1:])
