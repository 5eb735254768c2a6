"""Error types the CLI maps to exit codes.

`UsageError` (exit 2) is bad usage, configuration or input: the user can fix it. Its message is
one line naming the problem and the fix. `RefineError` (exit 1) is a failure while working.
"""
from __future__ import annotations


class RefineError(Exception):
    """A failure while working (exit 1)."""

    exit_code = 1


class UsageError(RefineError):
    """Bad usage, configuration or input (exit 2): one clear line, no traceback."""

    exit_code = 2


class UnknownComponent(UsageError):
    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, available
        listed = ", ".join(available) if available else "(none registered)"
        super().__init__(f"Unknown {kind} '{name}'. Available: {listed}")


class DuplicateComponent(UsageError):
    def __init__(self, kind: str, name: str, first: str, second: str):
        self.kind, self.name, self.plugins = kind, name, (first, second)
        super().__init__(
            f"Two plugins register the {kind} '{name}': '{first}' and '{second}'. "
            f"Uninstall one, or restrict third-party plugins with REFINE_PLUGINS=..."
        )
