"""`refine config show`: the resolved run config, components checked against their specs."""
from __future__ import annotations

import json
from typing import Annotated

import typer

from refine_core.config import NO_COMPONENT, SLOTS, dump_yaml, resolve_components
from refine_core.errors import UnknownComponent
from refine_core.registry import get_registry
from refine_core.cli.options import (BackboneOpt, BenchmarkOpt, CodecOpt, ConfigOpt, DatasetOpt, JsonOpt,
    RecipeOpt, SetOpt, TeacherOpt, load_config)
from refine_core.cli.output import print_warning

config_app = typer.Typer(help="Inspect run configuration.", no_args_is_help=True)


@config_app.command("show")
def show(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    backbone: BackboneOpt = None,
    codec: CodecOpt = None,
    teacher: TeacherOpt = None,
    dataset: DatasetOpt = None,
    benchmark: BenchmarkOpt = None,
    recipe: RecipeOpt = None,
    as_json: JsonOpt = False,
    check: Annotated[bool, typer.Option("--check",
                                        help="Fail (exit 2) if a component is not installed.")] = False,
) -> None:
    """Print the resolved config (defaults < --recipe < --config < component flags < --set).

    Options of registered components are always validated. A component that is not installed
    is a warning (the commands that use it fail at start anyway), or with --check an error.
    """
    registry = get_registry()
    # The components a run would use, unset ones decided (the codec, the closed-loop benchmark).
    cfg = resolve_components(load_config(config, set_, backbone, codec, teacher, dataset, benchmark, recipe),
                             registry, slots=())
    for slot, kind in SLOTS.items():
        component = getattr(cfg, slot)
        if slot == "closed_loop" and component.name == NO_COMPONENT:
            continue
        try:
            registry.validate_options(kind, component.name, component.options)
        except UnknownComponent as exc:
            if check:
                raise
            print_warning(str(exc))
    if as_json:
        typer.echo(json.dumps(cfg.to_dict(), indent=2))
    else:
        typer.echo(dump_yaml(cfg), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
