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


class MissingExtra(UsageError):
    """An optional dependency is not installed: names the extra that brings it."""

    def __init__(self, module: str, extra: str, needed_for: str = ""):
        self.module, self.extra = module, extra
        what = f" ({needed_for})" if needed_for else ""
        super().__init__(f"{module} is not installed{what}: pip install 'refine-vla[{extra}]'")


# Top-level modules of optional dependencies -> the extra that installs them (pyproject.toml).
OPTIONAL_MODULES: dict[str, str] = {
    "tensorflow": "rlds", "tensorflow_datasets": "rlds", "importlib_resources": "rlds",
    "pyarrow": "lerobot", "av": "lerobot",
    "google": "gemini", "openai": "openai",
    "accelerate": "train", "peft": "train",
    "matplotlib": "plots",
    "vla_eval": "eval", "msgpack": "eval", "websockets": "eval",
}


def missing_extra(exc: BaseException, needed_for: str = "") -> MissingExtra | None:
    """The MissingExtra an ImportError stands for, when it is an optional dependency's."""
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    top = (name or "").split(".")[0]
    if top not in OPTIONAL_MODULES:
        return None
    return MissingExtra(top, OPTIONAL_MODULES[top], needed_for)


def explain_validation(exc, model, prefix: str = "") -> str:
    """One line for the first error of a pydantic ValidationError against `model`: the dotted
    field, what is wrong, and for an unknown key a close match and the allowed keys."""
    import difflib

    from pydantic import BaseModel

    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    dotted = prefix + ".".join(loc)
    if err["type"] == "extra_forbidden":
        parent = model
        for part in loc[:-1]:
            field = parent.model_fields.get(part) if isinstance(parent, type) else None
            parent = field.annotation if field is not None else None
        allowed = sorted(parent.model_fields) if isinstance(parent, type) and issubclass(parent,
                                                                                         BaseModel) else []
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        did = f" Did you mean '{hint[0]}'?" if hint else ""
        return f"Unknown config key '{dotted}'.{did} Allowed: {', '.join(allowed) or '(none)'}"
    return f"Invalid config value for '{dotted}': {err['msg']} (got {err.get('input')!r})"
