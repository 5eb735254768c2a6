"""The text form of an action chunk, `[[0.012, -0.004, 1.0], [...]]`: writing and strict parsing.

Whitespace carries no meaning (a tokenizer's decode may put spaces between digits), so the parser
removes it first; everything else must be exactly a list of `steps` lists of `width` numbers.
"""
from __future__ import annotations

import re

import numpy as np

from refine_core import ActionDecodeError

_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_CONTEXT = 12  # characters shown either side of a parse error


def format_number(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text.lstrip("-") if float(text) == 0.0 else text  # "-0.000" is a wasted token


def format_chunk(rows: np.ndarray, decimals: int, binary_column: int | None, compact: bool) -> str:
    """`rows` [steps, width] → text; `binary_column` (the gripper, already 0/1) is written as 1.0/0.0."""
    separator = "," if compact else ", "
    written = []
    for row in rows:
        numbers = [
            ("1.0" if value >= 0.5 else "0.0") if column == binary_column else format_number(value, decimals)
            for column, value in enumerate(row)
        ]
        written.append("[" + separator.join(numbers) + "]")
    return "[" + separator.join(written) + "]"


class _Parser:
    def __init__(self, original: str):
        self.original = original
        self.text = "".join(original.split())
        self.pos = 0

    def fail(self, reason: str) -> ActionDecodeError:
        if self.pos >= len(self.text):
            where = "but the text ended (incomplete action)"
        else:
            start = max(0, self.pos - _CONTEXT)
            snippet = (
                self.text[start : self.pos]
                + "⟨"
                + self.text[self.pos]
                + "⟩"
                + self.text[self.pos + 1 : self.pos + _CONTEXT]
            )
            where = f"at character {self.pos} (spaces ignored): {snippet!r}"
        return ActionDecodeError(f"{reason} {where}", text=self.original)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str, reason: str) -> None:
        if self.peek() != char:
            raise self.fail(reason)
        self.pos += 1

    def number(self) -> float:
        match = _NUMBER.match(self.text, self.pos)
        if not match:
            raise self.fail("expected a number")
        self.pos = match.end()
        return float(match.group())

    def row(self) -> list[float]:
        self.expect("[", "expected '[' opening a step")
        values = [self.number()]
        while self.peek() == ",":
            self.pos += 1
            values.append(self.number())
        self.expect("]", "expected ',' or ']' after a number")
        return values

    def chunk(self) -> list[list[float]]:
        if not self.text:
            raise ActionDecodeError("the action text is empty", text=self.original)
        self.expect("[", "expected '[' opening the action chunk")
        rows = [self.row()]
        while self.peek() == ",":
            self.pos += 1
            rows.append(self.row())
        self.expect("]", "expected ',' or ']' after a step")
        if self.pos != len(self.text):
            raise self.fail("unexpected text after the action chunk")
        return rows


def parse_chunk(text: str, steps: int, width: int) -> np.ndarray:
    """Text → float64 [steps, width]; ActionDecodeError naming what is wrong and where."""
    if not isinstance(text, str):
        raise ActionDecodeError(f"expected action text, got {type(text).__name__}", text=repr(text))
    rows = _Parser(text).chunk()
    if len(rows) != steps:
        raise ActionDecodeError(f"expected {steps} step(s), got {len(rows)}", text=text)
    for index, row in enumerate(rows):
        if len(row) != width:
            raise ActionDecodeError(f"step {index + 1} has {len(row)} numbers, expected {width}", text=text)
    values = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(values).all():  # hundreds of digits overflow float
        raise ActionDecodeError("a number is too large to be an action", text=text)
    return values
