"""`refine serve CHECKPOINT`: a trained policy as a model server for simulators and robots."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from refine_core.cli.options import SetOpt
from refine_core.cli.output import console


def settings_from_sets(sets: list[str] | None):
    """PolicySettings from `--set policy.KEY=VALUE` items (any other key is a usage error)."""
    from pydantic import ValidationError

    from refine_core.config import parse_set
    from refine_core.errors import UsageError, explain_validation
    from refine_core.policy import PolicySettings

    values = {}
    for item in sets or []:
        keys, value = parse_set(item)
        if len(keys) != 2 or keys[0] != "policy":
            raise UsageError(f"refine serve takes --set policy.KEY=VALUE (e.g. policy.reasoning=every_k), "
                             f"got {item!r}")
        values[keys[1]] = value
    try:
        return PolicySettings.model_validate(values)
    except ValidationError as exc:  # a typo or a bad value: one line naming the key
        raise UsageError(explain_validation(exc, PolicySettings, prefix="policy.")) from None


def serve(
    checkpoint: Annotated[Path, typer.Argument(
        help="A run directory, a training OUT or a step-* checkpoint.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free one).")] = 8000,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1,
                                           help="Sessions batched into one generation.")] = 8,
    protocol: Annotated[Literal["vla-eval", "openpi"], typer.Option(
        "--protocol", help="vla-eval's model-server protocol, or openpi's websocket policy protocol.")
    ] = "vla-eval",
    camera: Annotated[Optional[str], typer.Option(
        "--camera", help="Which observation image is the primary one (default: the first).")] = None,
    log: Annotated[Optional[Path], typer.Option("--log",
                                                help="Append one JSON line per episode here.")] = None,
    rotation: Annotated[Literal["rpy", "axis_angle"], typer.Option(
        "--rotation", help="Rotation the environment reads: roll/pitch/yaw deltas as predicted, or "
                           "axis_angle (SimplerEnv's controllers, through vla-eval)")] = "rpy",
    set_: SetOpt = None,
) -> None:
    """Serve a trained policy: vla-eval's orchestrator (or openpi-client) connects and it acts."""
    from refine_core.policy import Policy

    settings = settings_from_sets(set_)
    policy = Policy.from_checkpoint(checkpoint, settings)
    if protocol == "openpi":
        from refine_core.serve.openpi import serve_openpi

        console.print(f"serving {checkpoint} (openpi protocol) on ws://{host}:{port}", highlight=False)
        serve_openpi(policy, host, port, camera=camera)
        return
    from vla_eval.model_servers.serve import serve as serve_vla_eval

    from refine_core.serve.model_server import PolicyModelServer

    server = PolicyModelServer(policy, max_batch_size=max_batch, camera=camera, log_path=log,
                               rotation=rotation)
    console.print(f"serving {checkpoint} on ws://{host}:{port} (health: http://{host}:{port}/health); "
                  f"reasoning {policy.settings.reasoning}, {policy.actions_per_query} action(s) per query",
                  highlight=False)
    serve_vla_eval(server, host, port)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
