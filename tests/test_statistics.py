"""Statistics on a case worked out on paper, and the statistics cache: a file is reused only for
the dataset identity it records."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from refine_core.statistics import DatasetStatistics, Statistics, cached_statistics, stats_file_name


def test_from_array_on_a_case_worked_out_by_hand():
    # 5 rows, 3 columns; the columns' rows are in different orders, so each is sorted on its own
    values = np.array([[1, 3, 7],
                       [2, -1, 7],
                       [3, 0, 7],
                       [4, 2, 7],
                       [10, 1, 7]])
    stats = Statistics.from_array(values)
    # column 0 = 1 2 3 4 10: mean 20/5 = 4; deviations -3 -2 -1 0 6, squares 9 4 1 0 36 = 50,
    #   population variance 50/5 = 10, std √10.
    # column 1 = sorted -1 0 1 2 3: mean 5/5 = 1; squares 4 1 0 1 4 = 10, variance 2, std √2.
    # column 2 = 7 ×5: mean 7, std 0.
    assert stats.mean.tolist() == [4.0, 1.0, 7.0]
    assert stats.std.tolist() == pytest.approx([math.sqrt(10), math.sqrt(2), 0.0], abs=1e-12)
    assert stats.min.tolist() == [1.0, -1.0, 7.0] and stats.max.tolist() == [10.0, 3.0, 7.0]
    # numpy's default quantile ("linear"): on the sorted column x0..x4, q sits at position
    # h = (n − 1)·q and is x[⌊h⌋] + (h − ⌊h⌋)·(x[⌊h⌋+1] − x[⌊h⌋]).
    #   q01: h = 4·0.01 = 0.04 → x0 + 0.04·(x1 − x0)
    #        column 0: 1 + 0.04·(2 − 1) = 1.04; column 1: −1 + 0.04·(0 − (−1)) = −0.96; column 2: 7
    #   q99: h = 4·0.99 = 3.96 → x3 + 0.96·(x4 − x3)
    #        column 0: 4 + 0.96·(10 − 4) = 9.76; column 1: 2 + 0.96·(3 − 2) = 2.96; column 2: 7
    assert stats.q01.tolist() == pytest.approx([1.04, -0.96, 7.0], abs=1e-12)
    assert stats.q99.tolist() == pytest.approx([9.76, 2.96, 7.0], abs=1e-12)
    assert stats.count == 5 and stats.mask is None and stats.dim == 3
    # q01..q99 → −1..1: column 0's 1.04 → −1, 9.76 → 1, the midpoint 5.4 → 0
    assert stats.normalize(np.array([1.04, 0.0, 0.0]))[0] == pytest.approx(-1.0)
    assert stats.normalize(np.array([9.76, 0.0, 0.0]))[0] == pytest.approx(1.0)
    assert stats.normalize(np.array([5.4, 0.0, 0.0]))[0] == pytest.approx(0.0, abs=1e-12)


def _stats(value: float) -> DatasetStatistics:
    return DatasetStatistics(action=Statistics.from_array(np.full((2, 7), value)), num_episodes=1,
                             num_steps=2)


class Computes:
    """`compute` for cached_statistics, counting its calls."""

    def __init__(self, value: float):
        self.value, self.calls = value, 0

    def __call__(self) -> DatasetStatistics:
        self.calls += 1
        return _stats(self.value)


def test_cache_is_reused_for_its_own_identity(tmp_path):
    compute = Computes(1.0)
    first, path = cached_statistics("bridge:abc", compute, [tmp_path])
    assert path == tmp_path / stats_file_name("bridge:abc") and compute.calls == 1
    assert json.loads(path.read_text())["key"] == "bridge:abc"
    again, same = cached_statistics("bridge:abc", compute, [tmp_path])
    assert same == path and compute.calls == 1 and again.to_dict() == first.to_dict()


def test_a_cache_file_recorded_for_another_identity_is_recomputed_never_reused(tmp_path):
    mine, theirs = "bridge:identity-of-this-data", "bridge:identity-of-other-data"
    # the file this identity would use holds another dataset's statistics (a hash collision, a
    # file copied or renamed by hand): the recorded identity is what counts, not the file name
    planted = tmp_path / stats_file_name(mine)
    planted.write_text(json.dumps({"key": theirs, "statistics": _stats(99.0).to_dict()}))
    compute = Computes(1.0)
    stats, path = cached_statistics(mine, compute, [tmp_path])
    assert compute.calls == 1 and stats.action.mean.tolist() == [1.0] * 7
    # the stale file is replaced by this identity's own, which the next read reuses
    assert path == planted and json.loads(planted.read_text())["key"] == mine
    reread, _ = cached_statistics(mine, compute, [tmp_path])
    assert compute.calls == 1 and reread.action.mean.tolist() == [1.0] * 7

    # nor is it reused from a later directory, nor a file without a recorded identity
    first, second = tmp_path / "data", tmp_path / "user-cache"
    for directory in (first, second):
        directory.mkdir()
    name = stats_file_name(mine)
    (first / name).write_text(json.dumps({"statistics": _stats(98.0).to_dict()}))
    (second / name).write_text(json.dumps({"key": theirs, "statistics": _stats(97.0).to_dict()}))
    compute = Computes(2.0)
    stats, path = cached_statistics(mine, compute, [first, second])
    assert compute.calls == 1 and stats.action.mean.tolist() == [2.0] * 7 and path == first / name
