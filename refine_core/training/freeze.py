"""Selective transfer: which backbone parameters train, and a table of them by module group.

ReFineVLA freezes the vision tower and the first N language-model blocks and trains the rest.
The backbone contract names the parts (`vision_modules()`, `embedding_modules()`, `blocks()`),
so the rules here work for any backbone:

- `freeze.vision`: every parameter under a vision module is frozen.
- `freeze.embeddings`: the input embeddings are frozen. Backbones that tie the output layer to
  the input embeddings (PaliGemma, Gemma) share one tensor, so this freezes `lm_head` too: the
  logits of every token — action bins included — are read out through the frozen embedding
  rows, and only the blocks above (and the final norm) adapt. Set it false to train them.
- `freeze.first_n_layers`: None = all but the last `RECIPE_TRAINABLE_BLOCKS` blocks (ReFineVLA: 24
  of Gemma-2's 26); n >= 0 freezes blocks 0..n-1; n < 0 keeps the last |n| blocks trainable. More
  blocks than the backbone has is a usage error.

Settings left unset (null) take the backbone's `transfer_recipe()`: ReFineVLA's (vision and
embeddings frozen, all but the last 2 blocks) for pretrained weights; a randomly initialised
preset has no knowledge to protect, so its recipe trains everything.

Everything else (projector, final norm, untied heads) trains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from refine_core.config import FreezeSettings
from refine_core.errors import UsageError
from refine_core.training.lora import is_adapter_parameter

RECIPE_TRAINABLE_BLOCKS = 2
LORA_GROUP = "lora"


def frozen_block_count(first_n_layers: int | None, num_blocks: int, backbone_name: str) -> int:
    """How many leading blocks to freeze for a `freeze.first_n_layers` value."""
    if first_n_layers is None:
        return max(0, num_blocks - RECIPE_TRAINABLE_BLOCKS)
    if abs(first_n_layers) > num_blocks:
        raise UsageError(f"freeze.first_n_layers={first_n_layers} but backbone {backbone_name} has "
                         f"{num_blocks} blocks; use a value between -{num_blocks} and {num_blocks}")
    return first_n_layers if first_n_layers >= 0 else num_blocks + first_n_layers


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@dataclass
class ParameterGroups:
    """Parameter names of a model assigned to the groups the table and the rules use."""

    vision: set[str] = field(default_factory=set)
    embeddings: set[str] = field(default_factory=set)
    blocks: list[set[str]] = field(default_factory=list)

    @classmethod
    def of(cls, backbone: Any) -> "ParameterGroups":
        model = backbone.model
        groups = cls(blocks=[set() for _ in backbone.blocks()])
        vision = [n for n, _ in backbone.vision_modules()]
        embeddings = [n for n, _ in backbone.embedding_modules()]
        blocks = [n for n, _ in backbone.blocks()]
        for name, _ in model.named_parameters():
            if any(_under(name, p) for p in vision):
                groups.vision.add(name)
            elif any(_under(name, p) for p in embeddings):
                groups.embeddings.add(name)
            else:
                for index, prefix in enumerate(blocks):
                    if _under(name, prefix):
                        groups.blocks[index].add(name)
                        break
        return groups

    def label(self, name: str) -> str:
        """The table row a parameter belongs to."""
        if is_adapter_parameter(name):
            return LORA_GROUP
        if name in self.vision:
            return "vision"
        if name in self.embeddings:
            return "embeddings"
        for index, names in enumerate(self.blocks):
            if name in names:
                return f"block {index}"
        module = name.rsplit(".", 1)[0] if "." in name else name
        return ".".join(module.split(".")[:3])


def resolve_freeze(backbone: Any, settings: FreezeSettings) -> FreezeSettings:
    """`freeze.*` left unset (null) take the backbone's `transfer_recipe()`."""
    recipe = backbone.transfer_recipe()
    return FreezeSettings(**{key: recipe.get(key) if value is None else value
                             for key, value in settings.model_dump().items()})


def apply_freeze(backbone: Any, settings: FreezeSettings) -> int:
    """Set `requires_grad` by the rules above; returns the number of frozen leading blocks."""
    model = backbone.model
    settings = resolve_freeze(backbone, settings)
    groups = ParameterGroups.of(backbone)
    n_frozen = frozen_block_count(settings.first_n_layers, len(groups.blocks), backbone.name)
    frozen: set[str] = set()
    if settings.vision:
        frozen |= groups.vision
    if settings.embeddings:
        frozen |= groups.embeddings
    for names in groups.blocks[:n_frozen]:
        frozen |= names
    always = [prefix for prefix, _ in backbone.frozen_modules()]
    for name, parameter in model.named_parameters():
        if any(_under(name, prefix) for prefix in always):
            frozen.add(name)
        parameter.requires_grad_(name not in frozen)
    return n_frozen


def parameter_rows(backbone: Any) -> list[dict[str, Any]]:
    """Rows `group, parameters, trainable, frozen`, in model order; consecutive blocks in the
    same state are merged into one row ("blocks 0-23")."""
    groups = ParameterGroups.of(backbone)
    totals: dict[str, list[int]] = {}
    for name, parameter in backbone.model.named_parameters():
        row = totals.setdefault(groups.label(name), [0, 0])
        row[0 if parameter.requires_grad else 1] += parameter.numel()
    rows: list[dict[str, Any]] = []
    for label, (trainable, frozen) in totals.items():
        state = (trainable > 0, frozen > 0)
        if label.startswith("block ") and rows and rows[-1].get("_state") == state and "_blocks" in rows[-1]:
            previous = rows[-1]
            previous["_blocks"].append(int(label.split()[1]))
            previous["trainable"] += trainable
            previous["frozen"] += frozen
            continue
        row = {"group": label, "trainable": trainable, "frozen": frozen, "_state": state}
        if label.startswith("block "):
            row["_blocks"] = [int(label.split()[1])]
        rows.append(row)
    for row in rows:
        blocks = row.pop("_blocks", None)
        row.pop("_state")
        if blocks:
            row["group"] = f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {blocks[0]}-{blocks[-1]}"
        row["parameters"] = row["trainable"] + row["frozen"]
    return rows


def output_tied_to_input(model: Any) -> bool:
    """Whether the output layer shares its weight with the input embeddings (tied lm_head)."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings",
                                                                            None)
    if get_in is None or get_out is None:
        return False
    inp, out = get_in(), get_out()
    return inp is not None and out is not None and out.weight is inp.weight


def count_trainable(parameters: Iterable[Any]) -> int:
    return sum(p.numel() for p in parameters if p.requires_grad)


def print_parameter_table(backbone: Any, console: Any, title: str = "parameters") -> None:
    from rich.table import Table

    rows = parameter_rows(backbone)
    table = Table(title=title)
    for column in ("group", "parameters", "trainable", "frozen"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for row in rows:
        table.add_row(row["group"], f"{row['parameters']:,}", f"{row['trainable']:,}", f"{row['frozen']:,}")
    total = [sum(r[k] for r in rows) for k in ("parameters", "trainable", "frozen")]
    table.add_row("[bold]total[/]", *(f"[bold]{v:,}[/]" for v in total))
    if output_tied_to_input(backbone.model):
        table.caption = "lm_head is tied to the input embeddings (counted once, under embeddings)"
    console.print(table)
