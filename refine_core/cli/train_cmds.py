"""`refine train`: train any registered backbone + codec on any registered dataset.

Everything is checked before the first step (components and options, the output directory,
annotations against the dataset, the freeze range against the backbone, the codec against the
vocabulary); each problem is one line and exit 2. Works the same under `accelerate launch`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from refine_core.cli.options import (BackboneOpt, CodecOpt, ConfigOpt, DatasetOpt, RecipeOpt, SetOpt,
    load_config)


def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory: metrics.jsonl and checkpoints/.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    backbone: BackboneOpt = None,
    codec: CodecOpt = None,
    dataset: DatasetOpt = None,
    recipe: RecipeOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT's newest checkpoint.")] = False,
    annotations: Annotated[Optional[Path], typer.Option(
        "--annotations", help="Reasoning annotations (or, for data.samples=vlm2vla, trajectory plans) "
                              "made by `refine annotate` for this dataset.")] = None,
) -> None:
    """Train a policy; metrics go to OUT/metrics.jsonl, checkpoints to OUT/checkpoints/step-*."""
    from refine_core.training import prepare_run
    from refine_core.training.checkpoint import check_out_dir
    from refine_core.training.trainer import Trainer

    cfg = load_config(config, set_, backbone=backbone, codec=codec, dataset=dataset, recipe=recipe)
    check_out_dir(out, resume)
    setup = prepare_run(cfg, annotations_dir=annotations)
    trainer = Trainer(setup, out, resume=resume)
    result = trainer.fit()
    trainer.console.print(f"finished at step {result.step}; newest checkpoint {result.checkpoint}",
                          highlight=False)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
