"""What a report is made of, independent of its output format: sections of text, tables,
code, figures and example cards. `render.py` writes them as Markdown and as HTML."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union


@dataclass
class Text:
    text: str


@dataclass
class Code:
    text: str


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Figure:
    path: Path  # a PNG inside the report directory
    caption: str


@dataclass
class Example:
    """A frame with the texts written about it (label → text)."""

    image: Path | None
    title: str
    texts: list[tuple[str, str]]


Block = Union[Text, Code, Table, Figure, Example]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    missing: bool = False  # the stage behind this section has not run (or its output is gone)


def missing_section(title: str, what: str) -> Section:
    return Section(title, [Text(f"Missing: {what}")], missing=True)


def cell(value: Any, digits: int = 4) -> str:
    """A table cell: floats rounded, None as an em dash, lists joined."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v, 3) for v in value)
    return str(value)
