"""The statistics of benchmarks/compare_trees.py, on hand-made timings."""
import importlib.util
import os

import pytest
from helpers import ROOT

_spec = importlib.util.spec_from_file_location("compare_trees", os.path.join(ROOT, "benchmarks", "compare_trees.py"))
compare_trees = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_trees)
paired_ratio, after_over_before = compare_trees.paired_ratio, compare_trees.after_over_before


def test_paired_ratio_is_the_geometric_mean_of_pair_ratios():
    # pairs 110/100 and 180/200: ratios 1.1 and 0.9, geometric mean sqrt(0.99)
    assert paired_ratio([100.0, 200.0], [110.0, 180.0]) == pytest.approx(0.99 ** 0.5)
    # a slow machine phase scales both models of a pair alike and cancels
    assert paired_ratio([100.0, 300.0], [105.0, 315.0]) == pytest.approx(1.05)
    with pytest.raises(ValueError):
        paired_ratio([100.0, 200.0], [110.0])  # every call needs its pair


def test_after_over_before_estimate_and_interval():
    before = [0.98, 1.00, 1.02, 0.99, 1.01]
    after = [r * 1.10 for r in before]  # the same scatter, 10% slower
    est, low, high = after_over_before(before, after, draws=500)
    assert est == pytest.approx(1.10)
    assert low < est < high  # runs scatter, so the interval has width ...
    assert 1.05 < low and high < 1.15  # ... but not enough to reach "no change"
    # identical runs: no scatter, the interval is the point
    assert after_over_before([1.0, 1.0], [1.02, 1.02], draws=50) == pytest.approx((1.02, 1.02, 1.02))
    # seeded: the same interval every time
    assert after_over_before(before, after, draws=500) == after_over_before(before, after, draws=500)
