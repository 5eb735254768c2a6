"""`demo`: a synthetic, learnable table-top pick-and-place task, generated on the fly (seeded).

Each episode is a rendered 5 × 5-cell table (256×256, slightly oblique top-down view from a camera
that follows the gripper, see `plugins.demo.render`) with two to four coloured objects (blocks and
cups to pick up; plates and bowls to put them on or in) and a gripper whose height shows as the
distance to its shadow and its size, and whose fingers are apart when open and together when
closed. Instructions: "put the red block on the blue plate", "put the green cup in the yellow
bowl", "pick up the purple block". A scripted expert solves
each task on a grid, one cell (1/32 m) per axis per step at most: approach → descend → grasp
(close) → lift → move → place (descend) → release (open); pick-only tasks end after the lift.
So every translation is −1/32, 0 or +1/32 per axis, rotation is always zero, and the action is a
simple function of what the frame shows (see `plugins.demo.scene`).

The data is written once as real RLDS in the `bridge_dataset` schema (into
`<cache_dir>/<identity>`, identity = generator version + options) and read back through the
`bridge` plugin's reader, so the demo exercises the real loading path (first and last recorded
steps are dropped there and movement is relabelled from `observation/state`; the written
episodes are laid out so that this returns exactly the expert's steps).

Step metadata (from a sidecar JSON keyed by episode and the reader's `source_step`), describing
the state the step's frame shows — the scripted teacher reads it:
- `objects`: `[{"name": "red block", "position": [x, y, z]}, …]` (metres; a held object moves
  with the gripper, a placed one sits at its destination);
- `gripper_position`: `[x, y, z]` (metres; x forward, y left, z up);
- `target`: the object to pick (`"red block"`); `destination`: where it goes (`"blue plate"`,
  or None for pick-only tasks);
- `phase`: the phase of the step's action, one of approach, descend, grasp, lift, move, place,
  release;
- `boxes`: `{"red block": [top, left, bottom, right], …}`, every object's drawn extent in the
  step's (primary) frame as fractions 0..1 of its height and width, parts hidden behind the
  gripper included; a held object's box is where it is drawn, between the fingers; an object out
  of the view has none. Not stored:
  computed when the sidecar is read, from the positions with the renderer's geometry
  (`render.object_boxes`). A generic key: the attention measurement reads it from any dataset.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from refine_core import BenchmarkSpec, ClosedLoopMode, ClosedLoopOptions, DatasetSpec, hookimpl


class DemoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episodes: int = Field(48, ge=1, le=100_000, description="Episodes to generate (about 20 steps each).")
    seed: int = Field(
        0, description="Scenes, instructions and start poses depend only on (seed, episode index)."
    )
    cache_dir: str | None = Field(None, description="Parent folder of the generated data "
                                                    "(default $REFINE_CACHE_DIR/demo or "
                                                    "~/.cache/refine/demo).")
    max_episodes: int | None = Field(None, ge=1,
                                     description="Read at most this many of the generated episodes.")
    pick_only_fraction: float = Field(0.25, ge=0, le=1,
                                      description="Share of 'pick up the X' tasks (the rest are put-on/in).")


@hookimpl
def refine_datasets():
    yield DatasetSpec(
        name="demo",
        summary="Synthetic table-top pick-and-place (rendered frames, scripted expert), written as bridge "
                "RLDS",
        factory="refine_plugins.demo.dataset:DemoDataset",
        options=DemoOptions,
        closed_loop="demo-sim",  # its task, simulated
    )


class DemoSimOptions(ClosedLoopOptions):
    # The default run's budget (~15 min on 2 cores): the paper's two modes, with and without
    # reasoning; every_k is one --set away (closed_loop.modes=[every_step,every_k,never]).
    modes: list[ClosedLoopMode] = Field(
        ["every_step", "never"], description="Reasoning modes the model is evaluated in.")
    shards: int = Field(2, ge=1, description="vla-eval processes running episodes in parallel: two "
                                             "sessions share one batched generation on the server.")
    max_reasoning_tokens: int = Field(
        160, ge=1, description="The scripted teacher's compact reasoning is about 85 tokens of the tiny "
                               "tokenizer: 160 leaves room without letting a looping model spend 256 per "
                               "query (raise it for teacher.style=full, about 260).")
    pick_only_fraction: float = Field(0.25, ge=0, le=1, description="Share of 'pick up the X' scenes.")
    expert: bool = Field(True, description="Also run the scripted expert (it reads the scene's state): "
                                           "what a policy that solves the task scores here.")


@hookimpl
def refine_benchmarks():
    yield BenchmarkSpec(
        name="demo-sim",
        summary="Closed loop in the demo's simulator through vla-eval: success with Wilson intervals per "
                "reasoning mode, beside do-nothing and random baselines",
        factory="refine_plugins.demo.closed_loop:DemoSimClosedLoop",
        options=DemoSimOptions,
    )
