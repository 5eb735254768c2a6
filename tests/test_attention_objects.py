"""Attention measured on the task objects: the patch grid checked against a synthetic image through the
tiny backbone's vision embeddings, the box → patch mapping and the share on hand-made maps, the demo's
`boxes` against its drawn pixels, the interval, and the measurement on a miniature demo run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import importorskip_or_fail
from refine_core.evaluate.attention import box_cells, box_share, fused_map, patch_grid
from refine_core.report.attention_objects import (Estimate, ObjectAttention, ObjectShare, bootstrap,
    object_table, reading, summarise, task_boxes)
from refine_plugins.demo.dataset import held_object, metadata_boxes, sidecar_steps
from refine_plugins.demo.render import EXTENT, IMAGE_SIZE, draw_state, object_boxes, render_frame
from refine_plugins.demo.scene import COLOURS, SceneObject, generate_episodes


# -- the patch grid against an image ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from tiny_policies import tiny_backbone

    return tiny_backbone("hf_vlm")


@pytest.mark.parametrize("row, col", [(3, 6), (7, 2), (0, 7)])
def test_a_bright_patch_changes_only_the_token_patch_grid_puts_in_its_cell(tiny, row, col):
    import torch

    patch, side = 28, 8
    assert tiny.image_size == patch * side and tiny.num_image_tokens == side * side
    black = np.zeros((224, 224, 3), np.uint8)
    bright = black.copy()
    bright[row * patch:(row + 1) * patch, col * patch:(col + 1) * patch] = 255
    tower = tiny.model.model.vision_tower
    embeddings = getattr(tower, "vision_model", tower).embeddings  # patch embedding + position
    with torch.no_grad():
        dark, lit = (embeddings(tiny.image_inputs([frame])["pixel_values"])[0] for frame in (black, bright))
    changed = ((lit - dark).abs().amax(dim=-1) > 1e-5).numpy()
    assert changed.sum() == 1  # a patch-aligned square reaches exactly one vision token
    grid = patch_grid(changed)
    assert grid[row, col] and grid.sum() == 1  # row-major: vision token row * 8 + col
    # and the box of that square maps onto the same cell, and only that one
    cells = box_cells([[row / side, col / side, (row + 1) / side, (col + 1) / side]], side)
    assert cells[row, col] and cells.sum() == 1


def test_vision_token_i_is_the_image_key_at_image_positions_i(tiny):
    """The attention keys `image_positions` lists hold the vision tokens in their order, so key i of the
    image attention is vision token i, the patch the test above places at cell (i // 8, i % 8)."""
    import torch

    from refine_core.backbone import TrainingSample
    from refine_core.evaluate.attention import image_positions

    frame = np.random.default_rng(2).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    sample = TrainingSample(images={"cam": frame}, primary_camera="cam", instruction="pick up the red block",
                            actions=np.zeros((1, 7)), key="ep/0")
    batch = tiny.collate([sample])
    seen = {}
    model = tiny.model.model
    hooks = [model.multi_modal_projector.register_forward_hook(lambda m, a, out: seen.update(vision=out)),
             model.language_model.register_forward_pre_hook(
                 lambda m, a, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)]
    try:
        with torch.no_grad():
            tiny.forward(batch)
    finally:
        for hook in hooks:
            hook.remove()
    positions = image_positions(tiny, batch["input_ids"][0])
    vision, embeds = seen["vision"][0], seen["embeds"][0]
    assert vision.shape[0] == len(positions) == 64
    assert torch.equal(embeds[torch.as_tensor(positions)], vision.to(embeds.dtype))


# -- boxes → patches, and the share ------------------------------------------------------------------
def test_box_cells_are_the_cells_a_box_overlaps_with_positive_area():
    # 4 × 4 grid: cell (r, c) spans [r/4, (r+1)/4) × [c/4, (c+1)/4)
    cells = box_cells([[0.3, 0.55, 0.5, 0.8]], 4)  # rows 0.3–0.5 → row 1 only (0.5 is the border)
    assert sorted(zip(*np.nonzero(cells))) == [(1, 2), (1, 3)]
    assert sorted(zip(*np.nonzero(box_cells([[0.0, 0.0, 0.25, 0.25]], 4)))) == [(0, 0)]
    union = box_cells([[0.0, 0.0, 0.25, 0.25], [0.1, 0.1, 0.3, 0.2]], 4)  # overlap counted once
    assert sorted(zip(*np.nonzero(union))) == [(0, 0), (1, 0)]
    assert not box_cells([[1.0, 1.0, 1.0, 1.0]], 4).any()  # an empty box covers nothing
    assert box_cells([[0.0, 0.0, 1.0, 1.0]], 3).all()


def test_box_share_is_the_mass_on_the_covered_cells_against_their_area():
    mass = np.array([[0.0, 0.0, 0.1, 0.3],
                     [0.0, 0.0, 0.2, 0.1],
                     [0.1, 0.0, 0.0, 0.0],
                     [0.0, 0.1, 0.0, 0.1]])  # total 1.0
    share, chance = box_share(mass, [[0.3, 0.55, 0.5, 0.8]])  # cells (1, 2), (1, 3)
    assert share == pytest.approx(0.3) and chance == pytest.approx(2 / 16)
    share, chance = box_share(mass * 4, [[0.0, 0.5, 0.5, 1.0]])  # the scale of the map does not matter
    assert share == pytest.approx(0.7) and chance == pytest.approx(4 / 16)
    uniform = np.full((4, 4), 0.5)
    assert box_share(uniform, [[0.0, 0.0, 0.5, 0.75]]) == pytest.approx((6 / 16, 6 / 16))  # chance
    with pytest.raises(ValueError, match="no mass"):
        box_share(np.zeros((4, 4)), [[0.0, 0.0, 0.5, 0.5]])


def test_the_fused_map_keeps_the_unnormalised_mass_beside_the_stretched_grid():
    maps = np.array([[[0.1, 0.1, 0.1, 0.1], [0.0, 0.8, 0.1, 0.0]],
                     [[0.0, 0.0, 0.0, 0.1], [0.3, 0.2, 0.0, 0.3]]])
    amap = fused_map(maps, np.zeros((8, 8, 3), np.uint8), top_k=2, mode="mean")
    assert amap.raw == pytest.approx(np.array([[0.15, 0.5], [0.05, 0.15]]))
    assert amap.grid == pytest.approx(np.array([[1 / 4.5, 1.0], [0.0, 1 / 4.5]]))
    # the share of the selected heads' image attention on the top-right patch: 0.5 of 0.85
    assert box_share(amap.raw, [[0.0, 0.5, 0.5, 1.0]])[0] == pytest.approx(0.5 / 0.85)


# -- the demo's boxes --------------------------------------------------------------------------------
def _paints(obj: SceneObject) -> list[tuple[int, ...]]:
    """The exact colours `_object` paints this object with (after the uint8 conversion)."""
    base = np.asarray(COLOURS[obj.colour], np.float32)
    shades = {"block": (base * 0.6, base), "cup": (base, base * 0.45), "plate": (base, base * 0.5 + 127),
              "bowl": (base * 0.8, base * 0.45)}[obj.kind]
    return [tuple(np.clip(s, 0, 255).astype(np.uint8).tolist()) for s in shades]


def _pixels(frame: np.ndarray, obj: SceneObject) -> np.ndarray:
    mask = np.zeros(frame.shape[:2], bool)
    for colour in _paints(obj):
        mask |= (frame == np.array(colour, np.uint8)).all(axis=-1)
    return mask


def test_demo_boxes_hold_every_drawn_pixel_of_their_object():
    seen = 0
    for episode in generate_episodes(8, 4):
        for t in range(episode.num_steps + 1):
            frame = render_frame(episode, t)
            boxes = metadata_boxes(episode.metadata(t))
            assert set(boxes) <= {obj.name for obj in episode.objects}
            for obj in episode.objects:
                if obj.name not in boxes:  # out of the view that follows the gripper: not drawn
                    assert not _pixels(frame, obj).any()
                    continue
                top, left, bottom, right = (np.array(boxes[obj.name]) * IMAGE_SIZE).round().astype(int)
                pixels = _pixels(frame, obj)
                inside = np.zeros_like(pixels)
                inside[top:bottom, left:right] = True
                assert not (pixels & ~inside).any(), (episode.instruction, t, obj.name)
                seen += int(pixels.sum())
                if obj.name == episode.target and episode.held[t]:  # between the fingers, still visible
                    assert pixels.any()
    assert seen > 60_000  # the colours were found: the check is not vacuous


@pytest.mark.parametrize("kind", sorted(EXTENT))
@pytest.mark.parametrize("held, gripper", [(False, (0, 4, 4)), (True, (3, 3, 2)), (True, (1, 4, 4))])
def test_demo_box_is_the_tight_extent_of_the_drawing(kind, held, gripper):
    obj = SceneObject("blue", kind, (3, 2))
    cells = {obj.name: obj.cell}
    frame = draw_state((0, 0, 0), [obj], cells, obj.name if held else None, gripper, is_open=True)
    box = np.array(object_boxes([obj], cells, obj.name if held else None, gripper)[obj.name]) * IMAGE_SIZE
    rows, cols = np.nonzero(_pixels(frame, obj))
    if held:  # the fingers and palm hide parts of it: the drawing lies inside the box
        assert box[0] <= rows.min() and rows.max() < box[2] and box[1] <= cols.min() and cols.max() < box[3]
        assert rows.max() == box[2] - 1  # the lower edge is not covered by the palm
    else:  # fully visible: exactly the box
        assert [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1] == box.round().astype(int).tolist()


def test_the_camera_follows_the_gripper_and_every_table_cell_is_one_tiny_patch(tiny):
    """Wherever the gripper is, its shadow's centre is drawn at the centre of the tiny backbone's patch
    (4, 4), and an object on any cell in view covers whole patches around that cell's patch only."""
    from refine_plugins.demo.render import VIEW_CENTRE, cell_centre, view_offset
    from refine_plugins.demo.scene import GRID, GRASP

    patch = tiny.image_size // int(round(tiny.num_image_tokens ** 0.5))
    scale = tiny.image_size / IMAGE_SIZE
    assert (VIEW_CENTRE * scale - patch / 2) / patch == 4  # a patch centre after the resize
    block = SceneObject("red", "block", (0, 0))
    for gx, gy in [(0, 0), (4, 4), (2, 3)]:
        dr, dc = view_offset((gx, gy, GRASP))
        row, col = cell_centre(gx, gy)
        assert (row + dr, col + dc) == (VIEW_CENTRE, VIEW_CENTRE)
        for x in range(GRID):
            for y in range(GRID):
                r, c = cell_centre(x, y)
                centre = ((r + dr) * scale, (c + dc) * scale)
                if 0 <= min(centre) and max(centre) < tiny.image_size:  # in view: on a patch centre
                    assert all((v - patch / 2) % patch == 0 for v in centre), (gx, gy, x, y)
                    cells = {block.name: (x, y)}
                    box = object_boxes([block], cells, None, (gx, gy, 4))[block.name]
                    grid = box_cells([box], tiny.image_size // patch)
                    assert grid[int(centre[0] // patch), int(centre[1] // patch)] and grid.sum() == 1


def test_held_object_read_from_the_sidecar_matches_the_scene():
    for episode in generate_episodes(40, 9):
        sidecar = sidecar_steps(episode)
        assert held_object(sidecar[0]) is None  # the recorded still first step
        assert [held_object(m) for m in sidecar[1:]] == [episode.target if h else None for h in episode.held]


def test_the_demo_dataset_gives_every_step_its_boxes(tmp_path, monkeypatch):
    importorskip_or_fail("tensorflow_datasets")
    from refine_core.registry import get_registry

    monkeypatch.setenv("REFINE_CACHE_DIR", str(tmp_path / "user-cache"))
    dataset = get_registry().build("dataset", "demo", {"episodes": 2, "cache_dir": str(tmp_path)})
    for episode, source in zip(dataset.episodes(), generate_episodes(2, 0)):
        for step in episode.steps:
            boxes = step.metadata["boxes"]
            assert boxes == metadata_boxes(source.metadata(step.metadata["source_step"] - 1))
            assert boxes and set(boxes) <= {o.name for o in source.objects}
            assert all(0 <= top < bottom <= 1 and 0 <= left < right <= 1 for top, left, bottom, right in
                       boxes.values())


# -- across frames -----------------------------------------------------------------------------------
def test_task_boxes_are_the_target_and_destination():
    boxes = {"red block": [0.1, 0.1, 0.2, 0.2], "blue plate": [0.5, 0.5, 0.7, 0.7], "green cup": [0, 0, 1, 1]}
    meta = {"boxes": boxes, "target": "red block", "destination": "blue plate"}
    assert task_boxes(meta) == [boxes["red block"], boxes["blue plate"]]
    assert task_boxes({**meta, "destination": None}) == [boxes["red block"]]
    assert task_boxes({"target": "red block"}) is None  # a dataset without boxes
    assert task_boxes({"boxes": {}, "target": "red block"}) is None


def test_bootstrap_interval_and_the_paired_difference():
    estimate = bootstrap([0.0, 1.0] * 50)
    assert estimate.mean == 0.5 and 0.38 < estimate.low < 0.43 and 0.57 < estimate.high < 0.62
    assert bootstrap([0.2] * 5) == Estimate(0.2, pytest.approx(0.2), pytest.approx(0.2))
    assert bootstrap([0.1, 0.4, 0.3]) == bootstrap([0.1, 0.4, 0.3])  # seeded
    # the difference is paired: a constant +0.05 on every frame has a zero-width interval
    base = np.linspace(0.02, 0.4, 20)
    share = summarise("action", base, base + 0.05, np.full(20, 0.04))
    assert share.frames == 20 and share.difference.mean == pytest.approx(0.05)
    assert share.difference.low == pytest.approx(0.05) and share.difference.high == pytest.approx(0.05)
    assert share.base.low < share.base.mean < share.base.high and share.chance.mean == pytest.approx(0.04)


def test_reading_and_table_say_what_the_interval_shows():
    def share(low: float, high: float) -> ObjectShare:
        return ObjectShare("action", 24, Estimate(0.05, 0.04, 0.06), Estimate(0.1, 0.08, 0.12),
                           Estimate(0.2, 0.17, 0.23), Estimate((low + high) / 2, low, high))

    assert "more than the base model" in reading(share(0.05, 0.15))
    assert "less than the base model" in reading(share(-0.15, -0.05))
    assert "no clear change" in reading(share(-0.02, 0.04))
    assert object_table(ObjectAttention({"action": share(-0.0004, 0.0002)}, "tuned", "step-1", True, 8,
                                        1.0)).rows[0][4] == "+0.0 [+0.0, +0.0]"  # no "-0.0"
    assert "20.0%" in reading(share(0.05, 0.15)) and "chance 5.0%" in reading(share(0.05, 0.15))

    result = ObjectAttention(shares={"action": share(0.05, 0.15)}, tuned_label="fine-tuned (step 9)",
                             checkpoint="step-9", held_out=True, top_k=8, seconds=1.0)
    table = object_table(result)
    assert table.columns[2:4] == ["base", "fine-tuned (step 9)"]
    assert table.rows == [["action tokens", "24", "10.0% [8.0%, 12.0%]", "20.0% [17.0%, 23.0%]",
                           "+10.0 [+5.0, +15.0]", "5.0%"]]


def test_frames_are_spread_over_episodes_evenly():
    from refine_core.report.attention_compare import _spread

    episodes = [[f"a{i}" for i in range(10)], [f"b{i}" for i in range(4)], ["c0"], []]
    assert _spread(episodes, 5) == ["a2", "b1", "c0", "a7", "b3"]
    assert _spread(episodes, 2) == ["a5", "b2"]
    assert _spread([[], []], 3) == []


# -- a miniature demo run ----------------------------------------------------------------------------
def test_measurement_on_a_miniature_demo_run(tmp_path_factory, monkeypatch):
    importorskip_or_fail("tensorflow_datasets")
    from refine_core.config import resolve_config
    from refine_core.report.attention_objects import NUMBERS_FILE, attention_object_numbers, report_attention
    from refine_core.report.sections import attention_section
    from refine_core.run.stages import run_pipeline

    root = tmp_path_factory.mktemp("attention-objects")
    monkeypatch.setenv("REFINE_CACHE_DIR", str(root / "user-cache"))
    config = resolve_config(sets=[
        "dataset.episodes=8", f"dataset.cache_dir={root / 'demo'}", "data.val_fraction=0.3",
        "data.shuffle_buffer=16", "train.max_steps=2", "train.batch_size=2", "train.save_every=2"])
    out = root / "run"
    run_pipeline(config, out, stages=("annotate", "train"), log=lambda line: None)

    comparison = report_attention(out, episodes=1, frames=6)
    result = comparison.objects
    assert set(result.shares) == {"action", "reasoning"} and result.held_out
    for share in result.shares.values():
        assert share.frames == 6
        for estimate in (share.base, share.tuned, share.chance):
            assert 0 < estimate.low <= estimate.mean <= estimate.high < 1
        assert 0.02 < share.chance.mean < 0.25  # two small objects' patches of 64
    # written for other sections, and the same numbers through the shared accessor (memoised)
    written = json.loads((out / "report" / NUMBERS_FILE).read_text())
    assert written["shares"]["action"]["tuned"]["mean"] == pytest.approx(result.shares["action"].tuned.mean)
    assert report_attention(out, episodes=1, frames=6) is comparison
    section = attention_section(out, out / "report", 1, None)
    table = next(b for b in section.blocks if hasattr(b, "rows"))
    assert [row[0] for row in table.rows] == ["action tokens", "reasoning tokens"]
    assert attention_object_numbers(tmp_path_factory.mktemp("empty")) is None  # no checkpoint: no numbers
