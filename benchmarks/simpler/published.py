"""Published SimplerEnv rows printed beside ours in the paper's tables (see tables.py).

Only numbers read from a retrieved source are here, each row naming it. Values are percent,
exactly as printed; the sources give no episode counts or intervals, so none are shown.

Column keys are those of tables.py: Table 1 `<task>/grasp`, `<task>/success`, `average/success`;
Table 2 `<vm|va>/<coke_can|move_near|drawer|average>`; Table 8 `coke_can/<orientation>`,
`coke_can/average`, `drawer/<open|close>`, `drawer/average` (one row per setting).

What is missing, and why:
- ReFineVLA's own per-task and Google Robot numbers (arXiv 2505.19080, Tables 1, 2, 8): the paper's
  tables could not be retrieved here (only its abstracts), so they are left out rather than recalled.
  The one ReFineVLA number below is the WidowX average its OpenReview abstract states.
- Table 8 (coke can per orientation, drawer open/close): no retrieved source breaks these policies'
  results down that way, so Table 8 has no published rows.
The SpatialVLA README's WidowX averages are the mean of its four success columns; its Google Robot
averages are not the mean of its three task columns (see GOOGLE_AVERAGE_CAVEAT).
"""
from __future__ import annotations

from dataclasses import dataclass, field

SPATIALVLA_README = ("github.com/SpatialVLA/SpatialVLA README.md (commit e480753), section 'Performance in "
                     "Simulation and Real-world', table 'SimplerEnv evaluation on {robot} tasks' "
                     "(SpatialVLA, arXiv 2501.15830)")
GOOGLE_AVERAGE_CAVEAT = ("The source's Google Robot averages are not the mean of its three task "
                         "columns (SpatialVLA zero-shot VM: 81.0, 69.6, 59.3 → 71.9) and it does not say how "
                         "they were formed; ours is upstream's mean of coke can, move near and drawer.")
REFINEVLA_ABSTRACT = ("openreview.net/forum?id=DuufClRdBm (ReFineVLA, TMLR submission 5107; arXiv "
                      "2505.19080), abstract: 'reaching 47.7% task success' on the WidowX benchmark")


@dataclass(frozen=True)
class PublishedRow:
    table: str  # the table's file stem in tables.py, e.g. "table1_widowx"
    policy: str  # as the source names it
    source: str
    values: dict[str, float] = field(default_factory=dict)  # column key -> percent as printed
    setting: str | None = None  # Table 8 rows: "vm" or "va"
    caveat: str | None = None  # where the source's numbers are not formed as ours are

    @property
    def label(self) -> str:
        return f"{self.policy} (published)"


def _widowx(spoon: tuple[float, float], carrot: tuple[float, float], block: tuple[float, float],
            eggplant: tuple[float, float], average: float) -> dict[str, float]:
    """Table 1 values from the source's column order: (grasp, success) per task, then the average."""
    values = {"average/success": average}
    for task, (grasp, success) in zip(("spoon_on_towel", "carrot_on_plate", "stack_cube",
                                       "put_eggplant_in_basket"), (spoon, carrot, block, eggplant)):
        values[f"{task}/grasp"], values[f"{task}/success"] = grasp, success
    return values


def _google(vm: tuple[float, float, float, float], va: tuple[float, float, float, float]) -> dict[str, float]:
    """Table 2 values from the source's column order: coke can, move near, drawer, average; VM then VA."""
    parts = ("coke_can", "move_near", "drawer", "average")
    return {**{f"vm/{p}": v for p, v in zip(parts, vm)}, **{f"va/{p}": v for p, v in zip(parts, va)}}


WIDOWX_SOURCE = SPATIALVLA_README.format(robot="WidowX Robot")
GOOGLE_SOURCE = SPATIALVLA_README.format(robot="Google Robot")

PUBLISHED: tuple[PublishedRow, ...] = (
    PublishedRow("table1_widowx", "SpatialVLA zero-shot", WIDOWX_SOURCE,
                 _widowx((25.0, 20.8), (41.7, 20.8), (58.3, 25.0), (79.2, 70.8), 34.4)),
    PublishedRow("table1_widowx", "SpatialVLA fine-tuned", WIDOWX_SOURCE,
                 _widowx((20.8, 16.7), (29.2, 25.0), (62.5, 29.2), (100.0, 100.0), 42.7)),
    PublishedRow("table1_widowx", "OpenVLA", WIDOWX_SOURCE,
                 _widowx((4.1, 0.0), (33.3, 0.0), (12.5, 0.0), (8.3, 4.1), 1.0)),
    PublishedRow("table1_widowx", "ReFineVLA", REFINEVLA_ABSTRACT, {"average/success": 47.7}),
    PublishedRow("table2_google", "SpatialVLA zero-shot", GOOGLE_SOURCE,
                 _google((81.0, 69.6, 59.3, 71.9), (89.5, 71.7, 36.2, 68.8)),
                 caveat=GOOGLE_AVERAGE_CAVEAT),
    PublishedRow("table2_google", "SpatialVLA fine-tuned", GOOGLE_SOURCE,
                 _google((86.0, 77.9, 57.4, 75.1), (88.0, 72.7, 41.8, 70.7)),
                 caveat=GOOGLE_AVERAGE_CAVEAT),
    PublishedRow("table2_google", "OpenVLA", GOOGLE_SOURCE,
                 _google((16.3, 46.2, 35.6, 27.7), (54.5, 47.7, 17.7, 39.8)),
                 caveat=GOOGLE_AVERAGE_CAVEAT),
)


def published_rows(table: str) -> list[PublishedRow]:
    return [row for row in PUBLISHED if row.table == table]
