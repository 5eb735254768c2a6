"""Options every config-driven command shares: --config, --set and the component shorthands."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from refine_core.config import RunConfig, resolve_config

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML or TOML run config.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key: dotted.key=value (value parsed as YAML)."),
]
BackboneOpt = Annotated[Optional[str], typer.Option("--backbone",
                                                    help="Shorthand for --set backbone.name=NAME.")]
CodecOpt = Annotated[Optional[str], typer.Option("--codec", help="Shorthand for --set codec.name=NAME.")]
TeacherOpt = Annotated[Optional[str], typer.Option("--teacher",
                                                   help="Shorthand for --set teacher.name=NAME.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset",
                                                   help="Shorthand for --set dataset.name=NAME.")]
BenchmarkOpt = Annotated[Optional[str], typer.Option("--benchmark",
                                                     help="Shorthand for --set benchmark.name=NAME.")]
RecipeOpt = Annotated[Optional[str], typer.Option(
    "--recipe", help="A paper's preset of config values under --config and --set: refinevla (the "
                     "defaults), vlm2vla, vlm2vla-nr, vlm2vla-at (refine config show --recipe NAME "
                     "prints it).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def load_config(
    config: Path | None,
    sets: list[str] | None,
    backbone: str | None = None,
    codec: str | None = None,
    teacher: str | None = None,
    dataset: str | None = None,
    benchmark: str | None = None,
    recipe: str | None = None,
) -> RunConfig:
    components = {"backbone": backbone, "codec": codec, "teacher": teacher, "dataset": dataset,
                  "benchmark": benchmark}
    return resolve_config(config, sets, components, recipe=recipe)
