"""The offline data set is a fair test of transfer: pretrained head-only beats scratch by >= 25 points."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "transfer_gap", Path(__file__).parent.parent / "benchmarks" / "transfer_gap.py")
transfer_gap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(transfer_gap)


def test_head_only_transfer_beats_scratch_by_25_points(capsys):
    result = transfer_gap.transfer_gap(seeds=(0, 1, 2), per_class=20)
    with capsys.disabled():
        print(f"\n[transfer gap] head-only {result['head_only']:.1%}, scratch {result['scratch']:.1%}, "
              f"gap {result['gap_points']:.1f} points (mean of 3 seeds)")
    assert result["gap_points"] >= 25
