"""OpenVLA's `norm_stats` (config.json) ⇄ refine `Statistics`.

Upstream layout (openvla `prismatic/extern/hf/configuration_prismatic.py`, filled by the RLDS
loader's dataset statistics)::

    norm_stats = {dataset_name: {"action": {"mean", "std", "max", "min", "q01", "q99", "mask"},
                                 "proprio": {...same keys...},
                                 "num_transitions": int, "num_trajectories": int}}

Upstream reads only `action.q01`, `action.q99` and `action.mask` (`predict_action`), and treats a
missing mask as "every dimension normalised"; so does `statistics_from_entry`. Fields a
checkpoint leaves out (the tiny fixture has only q01/q99/mask) become NaN: codecs only use
q01/q99/mask. `_check_unnorm_key`'s rule picks the entry: the only one when there is one,
otherwise the caller must name it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refine_core import Statistics, UsageError

STAT_FIELDS = ("mean", "std", "max", "min", "q01", "q99")


def resolve_unnorm_key(norm_stats: dict[str, Any], unnorm_key: str | None) -> str:
    """The entry to use; UsageError (one line, the available keys) when unknown or ambiguous."""
    available = ", ".join(sorted(norm_stats)) or "(none)"
    if not norm_stats:
        raise UsageError("this OpenVLA carries no action statistics (config.json has no norm_stats and no "
                         "codec is attached); load a checkpoint with norm_stats or attach a codec first")
    if unnorm_key is None:
        if len(norm_stats) > 1:
            raise UsageError(f"the OpenVLA checkpoint has action statistics for several datasets; set "
                             f"backbone.unnorm_key (or pass unnorm_key=) to one of: {available}")
        return next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        raise UsageError(
            f"unnorm_key '{unnorm_key}' is not in the OpenVLA norm_stats; available: {available}"
        )
    return unnorm_key


def statistics_from_entry(entry: dict[str, Any], where: str = "norm_stats") -> Statistics:
    """One dataset's `norm_stats` entry → the action Statistics, with upstream's mask semantics."""
    action = entry.get("action") if isinstance(entry, dict) else None
    if not isinstance(action, dict) or "q01" not in action or "q99" not in action:
        raise UsageError(f"{where} has no action q01/q99 (expected "
                         f"{{'action': {{'q01': [...], 'q99': [...]}}}})")
    q01 = np.asarray(action["q01"], dtype=np.float64)
    values = {name: np.asarray(action[name],
                               dtype=np.float64) if name in action else np.full(q01.shape, np.nan)
              for name in STAT_FIELDS}
    mask = np.asarray(action["mask"], dtype=bool) if "mask" in action else np.ones(q01.shape, dtype=bool)
    if any(v.shape != q01.shape for v in values.values()) or mask.shape != q01.shape:
        raise UsageError(f"{where}: action statistics of different lengths")
    return Statistics(**values, count=int(entry.get("num_transitions", 0) or 0), mask=mask)


def entry_from_statistics(stats: Statistics) -> dict[str, Any]:
    """Statistics → an upstream-layout entry (the effective mask written out; no proprio block,
    which refine's codecs do not use)."""
    # fields a checkpoint did not carry (NaN here) are left out, as they were there
    action: dict[str, Any] = {name: getattr(stats, name).tolist() for name in STAT_FIELDS
                              if not np.isnan(getattr(stats, name)).all()}
    mask = stats.mask if stats.mask is not None else np.ones(stats.dim, dtype=bool)
    action["mask"] = [bool(m) for m in mask]
    entry: dict[str, Any] = {"action": action}
    if stats.count:
        entry["num_transitions"] = int(stats.count)
    return entry
