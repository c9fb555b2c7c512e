"""bench/size_filter_search.py --nested: a held-out group never takes part in choosing its own
setting (the cross-validated figures are of tiles that chose nothing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "size_filter_search.py"


def _bench():
    spec = importlib.util.spec_from_file_location("size_filter_search", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tile(aji, pq):
    return {"aji": aji, "dice": 0.8, "pq": pq, "f1": 0.7}


def test_groups_are_tnbc_patients_and_monuseg_slides():
    b = _bench()
    assert b.group_of("tnbc_10_3") == b.group_of("tnbc_10_1@0.5x") == "tnbc_10"
    assert b.group_of("TCGA-HE-7130-01Z-00-DX1@0.5x") == "TCGA-HE-7130-01Z-00-DX1"


def test_each_fold_chooses_without_its_own_group():
    b = _bench()
    shipped, big = (0.3, 60), (0.3, 130)
    names = ["tnbc_10_1", "tnbc_11_1", "S1", "tnbc_10_1@0.5x", "tnbc_11_1@0.5x", "S1@0.5x"]
    # The larger clip gains PQ on tnbc_10 alone, by enough to win the mean whenever it is in.
    scores = {
        shipped: {n: _tile(0.6, 0.60) for n in names},
        big: {n: _tile(0.6, 0.90 if n.startswith("tnbc_10") else 0.59) for n in names},
    }
    out = b.nested(scores, names, shipped)
    assert out["all_groups_pick"] == list(big)
    assert out["picks"]["tnbc_10"] == list(shipped)  # chosen on tnbc_11 and S1, where it loses
    assert out["picks"]["tnbc_11"] == out["picks"]["S1"] == list(big)
    # tnbc_10 is scored with the shipped setting (0.60), the others with the clip (0.59).
    assert abs(out["cross_validated"]["pq"] - (0.60 + 0.59 + 0.59) / 3) < 1e-4  # rounded


def test_a_setting_that_loses_aji_is_not_chosen():
    b = _bench()
    names = ["S1", "S1@0.5x"]
    scores = {
        (0.3, 60): {n: _tile(0.60, 0.60) for n in names},
        (0.5, 130): {n: _tile(0.60 - 2 * b.AJI_SLACK_40X, 0.70) for n in names},
    }
    assert b.choose(scores, names, (0.3, 60)) == (0.3, 60)
