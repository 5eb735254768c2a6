"""Printing conventions shared by every command: rich tables, `--json`, one-line errors."""
from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def display_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool,
                  title: str | None = None) -> None:
    """A rich table for people; with `as_json` a JSON array of the same rows for programs."""
    if as_json:
        sys.stdout.write(json.dumps(list(rows), indent=2) + "\n")
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column.replace("_", " ").title())
    for row in rows:
        table.add_row(*("" if row.get(c) is None else escape(_cell(row.get(c))) for c in columns))
    console.print(table)


def _cell(value: Any) -> str:
    # one item per line keeps list columns narrow, leaving the width to the text columns
    return "\n".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
