"""The `refine` command line. Exit codes: 0 success, 2 bad usage/config/input, 1 failure while working.

Errors print one line on stderr; `--debug` (or REFINE_DEBUG=1) shows the traceback as well.
Plugins add sub-commands through the `refine_commands(app)` hook.
"""
from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from refine_core import __version__
from refine_core.errors import RefineError, missing_extra
from refine_core.cli import (annotate_cmds, config_cmds, data_cmds, eval_cmds, registry_cmds, run_cmds,
    train_cmds)
from refine_core.cli import attention_cmds, report_cmds, serve_cmds, sweep_cmds
from refine_core.cli.output import print_error

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"refine {__version__}")
        raise typer.Exit()


def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """refine: make Vision-Language-Action policies reason (annotate, train, evaluate, report)."""
    _state["debug"] = debug or _state["debug"]


def build_app() -> typer.Typer:
    from refine_core.registry import get_registry

    app = typer.Typer(
        name="refine", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    registry_cmds.register(app)
    config_cmds.register(app)
    data_cmds.register(app)
    train_cmds.register(app)
    eval_cmds.register(app)
    run_cmds.register(app)
    annotate_cmds.register(app)
    attention_cmds.register(app)
    report_cmds.register(app)
    sweep_cmds.register(app)
    serve_cmds.register(app)
    get_registry().add_commands(app)
    return app


def main(argv: list[str] | None = None) -> None:
    _state["debug"] = os.environ.get("REFINE_DEBUG", "") not in ("",
                                                                 "0") or "--debug" in (argv or sys.argv[1:])
    try:
        app = build_app()
        command = typer.main.get_command(app)
        command.main(args=argv, prog_name="refine", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print_error("aborted")
        sys.exit(130)
    except typer.exceptions.TyperException as exc:  # typer's usage errors: keep their own message
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print_error("interrupted")
        sys.exit(130)
    except (RefineError, ImportError) as exc:
        if _state["debug"]:
            raise
        error = exc if isinstance(exc, RefineError) else missing_extra(exc)
        if error is None:  # not an optional dependency: a failure like any other
            _unexpected(exc)
        print_error(str(error))
        sys.exit(error.exit_code)
    except Exception as exc:
        if _state["debug"]:
            raise
        _unexpected(exc)


def _unexpected(exc: BaseException) -> None:
    message = str(exc).strip().splitlines()
    print_error(f"{type(exc).__name__}: {message[0] if message else ''} (run with --debug for the traceback)")
    sys.exit(1)
