"""Hand-computed checks for dynafuse.metrics (expected numbers worked out in comments)."""

import json
import math

import numpy as np
import pytest

from dynafuse.metrics import (
    METRIC_KEYS,
    MMSA_KEYS,
    aggregate,
    compute_class_metrics,
    compute_metrics,
    confusion,
    format_mean_std,
    levels,
)

approx = pytest.approx

# Case A: one zero label, one zero prediction, values beyond the coarse scales.
PRED_A = [1.2, -0.4, 0.3, -2.0, 0.0]
LABEL_A = [1.0, 0.0, -0.6, -1.4, 2.2]


def test_keys_types_and_json():
    m = compute_metrics(PRED_A, LABEL_A)
    assert tuple(m) == METRIC_KEYS + MMSA_KEYS[3.0]  # ours, then MMSA's conventions (tests/test_metrics_mmsa.py)
    assert all(type(v) is float for k, v in m.items() if k != "n")
    assert m["n"] == 5
    json.dumps(m, allow_nan=False)  # plain, finite, serialisable


@pytest.mark.filterwarnings("error")
def test_label_zero_has0_vs_non0():
    m = compute_metrics(PRED_A, LABEL_A)
    # has0: pred<0 = [F,T,F,T,F], label<0 = [F,F,T,T,F] -> agree at 0,3,4 -> 3/5
    assert m["acc2_has0"] == approx(60.0)
    # F1: neg class P=R=1/2 -> 0.5 (support 2); non-neg P=R=2/3 (support 3)
    # weighted = (2*0.5 + 3*2/3) / 5 = 0.6
    assert m["f1_has0"] == approx(60.0)
    # non0: drop idx 1 (label 0). pred>0 = [T,T,F,F] (0.0 is not positive),
    # label>0 = [T,F,F,T] -> agree at 2 of 4; both classes F1 0.5
    assert m["acc2_non0"] == approx(50.0)
    assert m["f1_non0"] == approx(50.0)
    # 7 levels: pred [1,0,0,-2,0], label [1,0,-1,-1,2] -> 2/5; clip at 2 changes nothing
    assert m["acc7"] == approx(40.0)
    assert m["acc5"] == approx(40.0)
    # 3 levels: pred [1,0,0,-1,0], label [1,0,-1,-1,1] -> 3/5
    assert m["acc3"] == approx(60.0)
    # |err| = 0.2+0.4+0.9+0.6+2.2 = 4.3 -> /5
    assert m["mae"] == approx(0.86)
    # 7-level jumps [0,0,1,1,2]
    assert m["jump2"] == approx(0.2)
    assert m["mean_abs_jump"] == approx(0.8)


def test_all_labels_zero_non0_is_zero():
    m = compute_metrics([0.5, -0.5], [0.0, 0.0])
    assert m["acc2_non0"] == 0.0 and m["f1_non0"] == 0.0
    assert m["acc2_has0"] == approx(50.0)


@pytest.mark.filterwarnings("error")
def test_class_absent_from_predictions():
    # pred never negative; label<0 = [T,F,F,T] -> acc 2/4
    m = compute_metrics([0.5, 1.0, 2.0, 0.1], [-1.0, 1.0, 2.0, -0.5])
    assert m["acc2_has0"] == approx(50.0)
    # neg class: never predicted -> F1 0 (support 2); non-neg: P=2/4, R=1 -> F1 2/3 (support 2)
    # weighted = (0 + 2*2/3) / 4 = 1/3
    assert m["f1_has0"] == approx(100 / 3)


def test_pearson_and_qwk_by_hand():
    # corr: deviations p [-1,0,1], y [-1,1,0] -> cov 1, var 2 and 2 -> 1/2
    assert compute_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])["corr"] == approx(0.5)
    # qwk: levels pred [-1,1,1,1], label [-1,-1,1,1]; weight (i-j)^2, only (-1,1) cells matter (4)
    # observed off-diagonal: one (true -1, pred 1) -> 4
    # expected: rows (2,2), cols (1,3), N=4 -> E(-1,1)=1.5, E(1,-1)=0.5 -> 4*2 = 8
    # kappa = 1 - 4/8
    m = compute_metrics([-1.0, 0.8, 1.1, 1.4], [-1.2, -0.9, 1.0, 0.6])
    assert m["qwk"] == approx(0.5)


@pytest.mark.filterwarnings("error")
def test_constant_prediction_no_nan():
    m = compute_metrics([0.0, 0.0, 0.0, 0.0], [-2.0, -1.0, 1.0, 2.0])
    assert all(math.isfinite(v) for v in m.values())
    assert m["corr"] == 0.0  # undefined -> 0.0
    assert m["qwk"] == approx(0.0)  # all in one column: observed == expected
    assert m["acc2_has0"] == approx(50.0)  # pred all ">= 0"
    assert m["acc2_non0"] == approx(50.0)  # pred all "not > 0"
    assert m["mae"] == approx(1.5)  # (2+1+1+2)/4
    assert m["jump2"] == approx(0.5)  # jumps [2,1,1,2]
    assert m["mean_abs_jump"] == approx(1.5)
    # both sides constant and equal: kappa is 0/0 -> 0.0
    m = compute_metrics([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert m["corr"] == 0.0 and m["qwk"] == 0.0 and m["acc7"] == 100.0


def test_perfect_prediction():
    y = np.array([-3.0, -1.5, -0.2, 0.0, 0.7, 2.4])
    m = compute_metrics(y, y.copy())
    for k in ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc3", "acc5", "acc7"):
        assert m[k] == approx(100.0), k
    assert m["mae"] == 0.0
    assert m["corr"] == approx(1.0)
    assert m["qwk"] == approx(1.0)
    assert m["jump2"] == 0.0 and m["mean_abs_jump"] == 0.0


def test_rounding_half_up_at_boundaries():
    x = [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]
    # floor(x + 0.5), then clipped to [-3, 3]; np.round would give -2,-2,-0,0,2,2
    assert levels(x, 7).tolist() == [-3, -2, -1, 0, 1, 2, 3, 3]
    assert levels(x, 5).tolist() == [-2, -2, -1, 0, 1, 2, 2, 2]
    assert levels(x, 3).tolist() == [-1, -1, -1, 0, 1, 1, 1, 1]
    assert levels([0.49, -0.51], 7).tolist() == [0, -1]


def test_binning_value_range_1():
    # acc3: round(clip(x,-1,1)) -> boundaries at -0.5 (to 0) and 0.5 (to 1)
    assert levels([-1, -0.51, -0.5, 0.49, 0.5, 1], 3, 1.0).tolist() == [-1, -1, 0, 0, 1, 1]
    # acc5: round(clip(2x,-2,2)) -> boundaries at ±0.25, ±0.75
    x5 = [-0.76, -0.75, -0.26, -0.25, 0.24, 0.25, 0.74, 0.75]
    assert levels(x5, 5, 1.0).tolist() == [-2, -1, -1, 0, 0, 1, 1, 2]
    # acc7: round(clip(3x,-3,3)) -> boundaries at ±1/6, ±1/2, ±5/6
    x7 = [-1.0, -0.5, -1 / 6, 0.1, 1 / 6, 0.5, 5 / 6, 1.0]
    assert levels(x7, 7, 1.0).tolist() == [-3, -1, 0, 0, 1, 2, 3, 3]

    pred, label = [0.4, -0.3, 0.9], [0.6, -0.1, 0.7]
    m = compute_metrics(pred, label, value_range=1.0)
    assert m["acc3"] == approx(200 / 3)  # [0,0,1] vs [1,0,1]
    assert m["acc5"] == approx(100 / 3)  # 2x: [1,-1,2] vs [1,0,1]
    assert m["acc7"] == 0.0  # 3x: [1,-1,3] vs [2,0,2]
    assert m["jump2"] == 0.0 and m["mean_abs_jump"] == approx(1.0)
    # the same numbers read as [-3,3] data all sit in levels [0,0,1] vs [1,0,1]
    assert compute_metrics(pred, label, value_range=3.0)["acc7"] == approx(200 / 3)


def test_confusion():
    cm = confusion(PRED_A, LABEL_A)
    # true levels [1,0,-1,-1,2], pred levels [1,0,0,-2,0]; index = level + 3
    expected = np.zeros((7, 7), dtype=int)
    for t, p in [(1, 1), (0, 0), (-1, 0), (-1, -2), (2, 0)]:
        expected[t + 3, p + 3] += 1
    np.testing.assert_array_equal(cm, expected)
    assert confusion([0.4, -0.3], [0.6, -0.1], n_levels=3, value_range=1.0).shape == (3, 3)


@pytest.mark.filterwarnings("error")
def test_class_metrics():
    # pred never -1. acc: 3/4
    m = compute_class_metrics([1, 1, 0, 1], [1, -1, 0, 1])
    assert m["acc3"] == approx(75.0)
    # F1: class -1 -> 0 (support 1); class 0 -> 1 (support 1); class 1: P=2/3, R=1 -> 0.8 (support 2)
    # weighted = (0 + 1 + 2*0.8) / 4 = 0.65
    assert m["f1_3"] == approx(65.0)
    assert m["n"] == 4


def test_aggregate_and_format():
    rows = [
        {"acc2": 80.0, "mae": 0.5, "seed": "a"},
        {"acc2": 82.0, "mae": 0.7, "seed": "b"},
        {"acc2": 84.0, "mae": 0.9, "seed": "c"},
    ]
    agg = aggregate(rows)
    assert set(agg) == {"acc2", "mae"}  # non-numeric keys skipped
    # deviations -2,0,2 -> sum of squares 8 / (3-1) = 4 -> std 2
    assert agg["acc2"] == {"mean": approx(82.0), "std": approx(2.0), "n": 3}
    assert agg["mae"]["mean"] == approx(0.7) and agg["mae"]["std"] == approx(0.2)
    assert format_mean_std(agg, "acc2", 2) == "82.00 ± 2.00"
    assert format_mean_std(agg, "mae", 3) == "0.700 ± 0.200"
    single = aggregate([compute_metrics(PRED_A, LABEL_A)])
    assert single["acc7"] == {"mean": approx(40.0), "std": 0.0, "n": 1}
    assert format_mean_std(single, "mae", 3) == f"{single['mae']['mean']:.3f} (1 seed)"  # not "± 0.000"
    json.dumps(single, allow_nan=False)


def test_aggregate_counts_a_diverged_seed_instead_of_averaging_it():
    """A seed whose metric is NaN (a run that diverged, or a metrics.json written by hand) is left out of the mean
    and named, instead of turning the whole cell into "nan ± nan"."""
    agg = aggregate([{"mae": 0.5}, {"mae": float("nan")}, {"mae": 0.7}])
    assert agg["mae"] == {"mean": approx(0.6), "std": approx(0.1414, abs=1e-4), "n": 2, "non_finite": 1}
    assert format_mean_std(agg, "mae", 3) == "0.600 ± 0.141 (1 seed NaN/Inf)"
    one = aggregate([{"mae": 0.5}, {"mae": float("inf")}])
    assert format_mean_std(one, "mae", 3) == "0.500 (1 seed; 1 seed NaN/Inf)"
    none = aggregate([{"mae": float("nan")}, {"mae": float("nan")}])
    assert format_mean_std(none, "mae", 3) == "undefined (2 seeds NaN/Inf)"


@pytest.mark.parametrize(
    "pred, label",
    [
        ([1.0, 2.0], [1.0]),  # length mismatch
        ([1.0, float("nan")], [1.0, 2.0]),
        ([1.0, 2.0], [1.0, float("inf")]),
        ([[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]),  # 2-D
        ([], []),
        (["a", "b"], [1.0, 2.0]),
    ],
)
def test_bad_input_raises(pred, label):
    with pytest.raises(ValueError):
        compute_metrics(pred, label)


def test_other_bad_input():
    m = compute_metrics(np.array([[0.5], [1.0]]), [0.5, 1.0])  # (N,1) squeezes fine
    assert m["n"] == 2
    with pytest.raises(ValueError, match="value_range"):
        compute_metrics([1.0], [1.0], value_range=2.0)
    with pytest.raises(ValueError, match="-1, 0, 1"):
        compute_class_metrics([2, 0], [1, 0])
    with pytest.raises(ValueError):
        aggregate([])
    with pytest.raises(ValueError):
        format_mean_std({}, "acc7")


def test_mse_and_macro_f1_by_hand_and_error_metrics_are_minimised():
    """Case A by hand: squared errors .04 .16 .81 .36 4.84 -> MSE 1.242; has0 F1 per class 0.5 (neg) and 2/3
    -> macro 58.33 beside weighted 60; non0 both classes 0.5 -> 50. MSE (CrossSent's selection) and MMSA's MAE
    are minimised, by the trainer's monitor and by `dynafuse tune`."""
    from dynafuse.experiments.search import direction
    from dynafuse.metrics import lower_is_better
    from dynafuse.training.settings import MONITORS

    m = compute_metrics(PRED_A, LABEL_A)
    assert m["mse"] == approx(1.242) and m["f1_has0_macro"] == approx(175 / 3) and m["f1_non0_macro"] == approx(50.0)
    assert "mse" in MONITORS and lower_is_better("valid/mse") and direction("mae_mmsa") == "minimize"
    assert not lower_is_better("corr_mmsa") and direction("acc7") == "maximize"
