"""`refine report`: (re)build the report of a run directory from whatever stages it holds."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refine_core.cli.output import console


def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="The run directory (`refine run --out`).")],
    attention_episodes: Annotated[int, typer.Option(
        "--attention-episodes", min=1, help="Held-out frames in the attention comparison.")] = 3,
) -> None:
    """Write OUT/report/report.md and a self-contained OUT/report/report.html."""
    from refine_core.report import build_report

    path = build_report(out, attention_episodes=attention_episodes)
    console.print(f"wrote {path.with_name('report.md')} and {path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
