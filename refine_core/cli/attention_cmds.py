"""`refine attention`: where the policy looks, base model vs fine-tuned checkpoint, on the same
held-out frames (ReFineVLA Algorithm 4; see `refine_core.evaluate.attention` for the exact definition)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refine_core.errors import UsageError
from refine_core.cli.output import console


def attention(
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint",
        help="A step-* checkpoint, a train directory (newest checkpoint), or a run's --out.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    episodes: Annotated[int, typer.Option("--episodes", "-n",
                                          help="Held-out episodes (one frame each).")] = 3,
    target: Annotated[str, typer.Option(
        "--target", help="Tokens the attention is taken from: action | reasoning.")] = "action",
    top_k: Annotated[int, typer.Option("--top-k",
                                       help="(layer, head) maps fused: those with most image mass.")] = 8,
    fuse: Annotated[str, typer.Option("--fuse", help="How the top-k maps are fused: max | mean.")] = "max",
) -> None:
    """Attention heatmaps from action (or reasoning) tokens to the image, base vs fine-tuned, as one PNG."""
    from refine_core.evaluate.attention import FUSIONS, TARGETS

    if target not in TARGETS:
        raise UsageError(f"Unknown --target '{target}'. Available: {', '.join(TARGETS)}")
    if fuse not in FUSIONS:
        raise UsageError(f"Unknown --fuse '{fuse}'. Available: {', '.join(FUSIONS)}")
    if top_k < 1 or episodes < 1:
        raise UsageError("--top-k and --episodes must be at least 1")
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must name a .png file, got {out}")

    from refine_core.report.attention_compare import compare_attention
    from refine_core.report.plots import attention_figure

    comparison = compare_attention(checkpoint, episodes=episodes, target=target, top_k=top_k, fusion=fuse)
    path = attention_figure(comparison, out)
    for note in comparison.notes:
        console.print(f"note: {note}", highlight=False)
    for row in comparison.rows:
        summary = " · ".join(f"{label}: image share {m.image_share:.2f}, focus {m.focus:.2f}"
                             for label, m in row.maps.items())
        console.print(f"{row.key}: {summary}", highlight=False, soft_wrap=True)
    console.print(f"wrote {path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("attention")(attention)
