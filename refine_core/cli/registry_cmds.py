"""`refine list` and `refine plugins`."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from refine_core.registry import check_kind, get_registry
from refine_core.specs import KINDS
from refine_core.cli.options import JsonOpt
from refine_core.cli.output import display_table


def list_components(
    kind: Annotated[Optional[str], typer.Argument(help=f"One of: {', '.join(KINDS)}.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List registered components (all kinds, or one)."""
    registry = get_registry()
    kind = check_kind(kind) if kind else None
    rows = [
        {"kind": e.kind, "name": e.spec.name, "summary": e.spec.summary, "plugin": e.plugin}
        for e in registry.components(kind)
    ]
    display_table(rows, ["kind", "name", "summary", "plugin"], as_json, title="refine components")


def list_plugins(as_json: JsonOpt = False) -> None:
    """List loaded plugins: source, version, the hooks each implements and any load error."""
    rows = [info.as_dict() for info in get_registry().plugins.values()]
    display_table(rows, ["name", "source", "version", "hooks", "error"], as_json, title="refine plugins")


def register(app: typer.Typer) -> None:
    app.command("list")(list_components)
    app.command("plugins")(list_plugins)
