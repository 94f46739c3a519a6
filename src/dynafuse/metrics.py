"""Evaluation metrics for multimodal sentiment analysis (MSA).

Regression outputs are scored with the usual MSA-paper metrics by
``compute_metrics``. Accuracies and F1 scores are percentages (0..100); all
other values are plain numbers. Every value is a plain Python number, never NaN.

Binary accuracy
    ``acc2_has0``: negative (< 0) vs non-negative (>= 0), for prediction and label.
    ``acc2_non0``: samples whose label is exactly 0 are dropped, then positive
    (> 0) vs not positive (<= 0); a prediction of exactly 0 counts as not
    positive. If every label is 0, ``acc2_non0`` and ``f1_non0`` are 0.0.
    The F1 scores are sklearn's support-weighted F1 of the same decisions.

Level binning (acc3, acc5, acc7, qwk, jump2, mean_abs_jump, confusion)
    A score is mapped to an integer level in [-h, h], h = (n_levels - 1) / 2:

        level = floor(clip(x * scale, -h, h) + 0.5)

    Rounding is *half up* (towards +inf) so that ties do not depend on
    parity: 0.5 -> 1, 1.5 -> 2, -0.5 -> 0, -1.5 -> -1. (np.round would
    round half to even, giving 0.5 -> 0 but 1.5 -> 2.)

    value_range=3 ([-3, 3] data: MOSI, MOSEI): scale = 1, i.e. the score is
    clipped, not stretched (the usual convention for these datasets):
        acc7: round(clip(x, -3, 3)); acc5: round(clip(x, -2, 2));
        acc3: round(clip(x, -1, 1))  -> neutral is -0.5 <= x < 0.5.
    value_range=1 ([-1, 1] data: CH-SIMS, SIMSv2): scale = h, i.e. the score
    is stretched so that the coarse scales use the whole range:
        acc3: round(clip(x, -1, 1))   boundaries at x = -0.5, 0.5
        acc5: round(clip(2x, -2, 2))  boundaries at x = ±0.25, ±0.75
        acc7: round(clip(3x, -3, 3))  boundaries at x = ±1/6, ±0.5, ±5/6
    A value exactly on a boundary goes to the upper level.

Other metrics
    mae: mean absolute error on the raw (unscaled) values; mse: mean squared error (what CrossSent selects on).
    f1_has0_macro, f1_non0_macro: the same decisions as f1_has0 / f1_non0, unweighted mean over the two classes.
    corr: Pearson correlation; 0.0 when it is undefined (either side constant
        or fewer than two samples).
    qwk: quadratic weighted Cohen's kappa on the 7 levels; 0.0 when undefined
        (e.g. prediction and label both a single identical level).
    jump2: share (0..1) of samples whose 7-level prediction is off by >= 2 levels.
    mean_abs_jump: mean |level_pred - level_label| on the 7 levels.

MMSA's conventions (`*_mmsa` keys, `mmsa_metrics`), so a number can stand beside a table made with MMSA
(thuiar/MMSA, utils/metricsTop.py); ours above stay as documented:
    [-3, 3] data: acc2/F1 has0 and non0 as ours; acc5_mmsa, acc7_mmsa round clip(x, -2, 2) / clip(x, -3, 3) with
        numpy's half-to-even rounding (0.5 -> 0, 1.5 -> 2, -0.5 -> 0); mae and corr on the raw values.
    [-1, 1] data (CH-SIMS): prediction and label are first clipped to [-1, 1]; acc2_mmsa is [-1, 0] vs (0, 1];
        acc3_mmsa bins at -0.1 and 0.1 ([-1, -0.1], (-0.1, 0.1], (0.1, 1]); acc5_mmsa bins at -0.7, -0.1, 0.1,
        0.7; f1_mmsa is the weighted F1 of the acc2_mmsa classes; mae_mmsa and corr_mmsa use the clipped values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
)

_VALUE_RANGES = (1.0, 3.0)
CLASS_LABELS = (-1, 0, 1)  # negative, neutral, positive

METRIC_KEYS = (
    "acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc3", "acc5", "acc7",
    "mae", "corr", "qwk", "jump2", "mean_abs_jump", "mse", "f1_has0_macro", "f1_non0_macro", "n",
)
CLASS_KEYS = ("acc3", "f1_3")  # what the 3-class task computes (compute_class_metrics, besides n)
MMSA_KEYS = {3.0: ("acc2_has0_mmsa", "acc2_non0_mmsa", "f1_has0_mmsa", "f1_non0_mmsa", "acc5_mmsa", "acc7_mmsa",
                   "mae_mmsa", "corr_mmsa"),
             1.0: ("acc2_mmsa", "acc3_mmsa", "acc5_mmsa", "f1_mmsa", "mae_mmsa", "corr_mmsa")}


def _as_1d(x, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    arr = np.atleast_1d(arr.squeeze())
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D after squeeze, got shape {np.shape(x)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _check_pair(pred, label) -> tuple[np.ndarray, np.ndarray]:
    p, y = _as_1d(pred, "pred"), _as_1d(label, "label")
    if p.shape != y.shape:
        raise ValueError(f"pred and label shapes differ: {p.shape} vs {y.shape}")
    if p.size == 0:
        raise ValueError("pred and label are empty")
    return p, y


def _check_value_range(value_range: float) -> float:
    # Only the two dataset conventions are defined; anything else is a caller bug.
    if float(value_range) not in _VALUE_RANGES:
        raise ValueError(f"value_range must be 1.0 or 3.0, got {value_range}")
    return float(value_range)


def levels(x, n_levels: int, value_range: float = 3.0) -> np.ndarray:
    """Integer levels in [-(n_levels-1)/2, (n_levels-1)/2]; see the module docstring."""
    if n_levels not in (3, 5, 7):
        raise ValueError(f"n_levels must be 3, 5 or 7, got {n_levels}")
    value_range = _check_value_range(value_range)
    h = (n_levels - 1) // 2
    scale = 1.0 if value_range == 3.0 else float(h)
    s = np.clip(np.asarray(x, dtype=np.float64) * scale, -h, h)
    return np.floor(s + 0.5).astype(np.int64)  # round half up, not half to even


def _pct(value: float) -> float:
    return float(100.0 * value)


def _weighted_f1(y_true, y_pred, average: str = "weighted") -> float:
    # zero_division=0: a class never predicted scores 0 instead of warning / NaN.
    return float(f1_score(y_true, y_pred, average=average, zero_division=0))


def _pearson(p: np.ndarray, y: np.ndarray) -> float:
    # Undefined for constant input; report 0.0 rather than NaN.
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0
    r = float(np.corrcoef(p, y)[0, 1])
    return float(np.clip(r, -1.0, 1.0)) if math.isfinite(r) else 0.0


def qwk(lp: np.ndarray, ly: np.ndarray) -> float:
    """Quadratic weighted Cohen's kappa of predicted levels `lp` against true levels `ly` (integers in -3..3);
    0.0 when undefined. Levels unused by both sides carry no counts, so 3-class kappa is the same computation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn/numpy warn on 0/0 when undefined
        k = cohen_kappa_score(ly, lp, labels=list(range(-3, 4)), weights="quadratic")
    return float(k) if math.isfinite(k) else 0.0


def compute_metrics(pred, label, value_range: float = 3.0) -> dict[str, float]:
    """All regression metrics for predictions ``pred`` against gold ``label`` (shape (N,))."""
    p, y = _check_pair(pred, label)
    _check_value_range(value_range)

    out: dict[str, float] = {}
    neg_p, neg_y = p < 0, y < 0
    out["acc2_has0"] = _pct(accuracy_score(neg_y, neg_p))
    out["f1_has0"] = _pct(_weighted_f1(neg_y, neg_p))
    out["f1_has0_macro"] = _pct(_weighted_f1(neg_y, neg_p, "macro"))

    keep = y != 0
    if keep.any():
        pos_p, pos_y = p[keep] > 0, y[keep] > 0
        out["acc2_non0"] = _pct(accuracy_score(pos_y, pos_p))
        out["f1_non0"] = _pct(_weighted_f1(pos_y, pos_p))
        out["f1_non0_macro"] = _pct(_weighted_f1(pos_y, pos_p, "macro"))
    else:
        out["acc2_non0"] = out["f1_non0"] = out["f1_non0_macro"] = 0.0

    for n in (3, 5, 7):
        out[f"acc{n}"] = _pct(np.mean(levels(p, n, value_range) == levels(y, n, value_range)))

    out["mae"] = float(np.mean(np.abs(p - y)))
    out["mse"] = float(np.mean((p - y) ** 2))
    out["corr"] = _pearson(p, y)

    lp, ly = levels(p, 7, value_range), levels(y, 7, value_range)
    jump = np.abs(lp - ly)
    out["qwk"] = qwk(lp, ly)
    out["jump2"] = float(np.mean(jump >= 2))
    out["mean_abs_jump"] = float(np.mean(jump))
    out["n"] = int(p.size)
    return {**{k: out[k] for k in METRIC_KEYS}, **mmsa_metrics(p, y, value_range)}


SIMS_BOUNDS = {2: (0.0,), 3: (-0.1, 0.1), 5: (-0.7, -0.1, 0.1, 0.7)}  # MMSA's [-1, 1] bins, right-closed


def _sims_bins(x: np.ndarray, n: int) -> np.ndarray:
    """MMSA's [-1, 1] binning: class i holds (b_{i-1}, b_i], the first class includes -1 (in float32, as MMSA
    compares its float32 tensors, so a value at a boundary lands where it lands there)."""
    return np.searchsorted(np.asarray(SIMS_BOUNDS[n], np.float32), x.astype(np.float32), side="left")


def mmsa_metrics(pred, label, value_range: float = 3.0) -> dict[str, float]:
    """The metrics as MMSA's metricsTop computes them (see the module docstring), `_mmsa` keys, percentages."""
    p, y = _check_pair(pred, label)
    value_range = _check_value_range(value_range)
    out: dict[str, float] = {}
    if value_range == 3.0:
        keep = y != 0
        out["acc2_has0_mmsa"] = _pct(accuracy_score(y >= 0, p >= 0))
        out["f1_has0_mmsa"] = _pct(_weighted_f1(y >= 0, p >= 0))
        out["acc2_non0_mmsa"] = _pct(accuracy_score(y[keep] > 0, p[keep] > 0)) if keep.any() else 0.0
        out["f1_non0_mmsa"] = _pct(_weighted_f1(y[keep] > 0, p[keep] > 0)) if keep.any() else 0.0
        p32, y32 = p.astype(np.float32), y.astype(np.float32)  # MMSA rounds its float32 tensors, half to even
        for n, h in ((5, 2.0), (7, 3.0)):
            out[f"acc{n}_mmsa"] = _pct(np.mean(np.round(np.clip(p32, -h, h)) == np.round(np.clip(y32, -h, h))))
        out["mae_mmsa"], out["corr_mmsa"] = float(np.mean(np.abs(p - y))), _pearson(p, y)
    else:
        p, y = np.clip(p, -1.0, 1.0), np.clip(y, -1.0, 1.0)
        for n in (2, 3, 5):
            out[f"acc{n}_mmsa"] = _pct(np.mean(_sims_bins(p, n) == _sims_bins(y, n)))
        out["f1_mmsa"] = _pct(_weighted_f1(_sims_bins(y, 2), _sims_bins(p, 2)))
        out["mae_mmsa"], out["corr_mmsa"] = float(np.mean(np.abs(p - y))), _pearson(p, y)
    return {k: out[k] for k in MMSA_KEYS[value_range]}


def compute_class_metrics(pred_class, label_class) -> dict[str, float]:
    """Accuracy and weighted F1 (both %) for the 3-class task with classes -1, 0, 1."""
    p, y = _check_pair(pred_class, label_class)
    for name, arr in (("pred_class", p), ("label_class", y)):
        if not np.all(np.isin(arr, CLASS_LABELS)):
            bad = sorted(set(np.unique(arr).tolist()) - set(CLASS_LABELS))
            raise ValueError(f"{name} must contain only -1, 0, 1; found {bad[:5]}")
    p, y = p.astype(np.int64), y.astype(np.int64)
    return {
        "acc3": _pct(accuracy_score(y, p)),
        "f1_3": _pct(f1_score(y, p, labels=list(CLASS_LABELS), average="weighted", zero_division=0)),
        "n": int(p.size),
    }


LOWER_IS_BETTER = frozenset({"mae", "mse", "jump2", "mean_abs_jump", "loss"})


def lower_is_better(metric: str) -> bool:
    """True for error metrics (MAE, MSE, Jump2+, MeanAbsJump, a loss; also under MMSA's rules, `mae_mmsa`), False
    for accuracies, F1, Corr, QWK. `metric` may carry a split prefix (`valid/mae`)."""
    return metric.split("/")[-1].removesuffix("_mmsa") in LOWER_IS_BETTER


def score_metrics(pred, y, task: str = "regression", value_range: float = 3.0) -> dict[str, float]:
    """The metric suite of a run: `compute_metrics` for regression; for the 3-class task (2501.08085), accuracy
    and weighted F1 of the predicted class in {-1, 0, 1} against the label's Acc-3 level."""
    if task == "3class":
        return compute_class_metrics(pred, levels(np.asarray(y, dtype=np.float64), 3, value_range))
    return compute_metrics(pred, y, value_range=value_range)


def ordinal_stats(pred, y, task: str = "regression", value_range: float = 3.0) -> dict:
    """Confusion matrix over the ordinal levels (rows = true level, columns = predicted level) with qwk, jump2
    and mean_abs_jump: 7 levels for regression (the suite's binning), the 3 classes for the 3-class task
    (predictions are already -1/0/1; the label's class is its 3-level bin, the same as the training target)."""
    y = np.asarray(y, dtype=np.float64)
    if task == "3class":
        n, lp = 3, np.asarray(pred).astype(np.int64)
    else:
        n, lp = 7, levels(pred, 7, value_range)
    ly = levels(y, n, value_range)
    h = (n - 1) // 2
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (ly + h, lp + h), 1)
    jump = np.abs(lp - ly)
    return {"levels": list(range(-h, h + 1)), "confusion": cm.tolist(), "qwk": qwk(lp, ly),
            "jump2": float(np.mean(jump >= 2)), "mean_abs_jump": float(np.mean(jump)), "n": int(len(y))}


def confusion(pred, label, n_levels: int = 7, value_range: float = 3.0) -> np.ndarray:
    """(n_levels, n_levels) counts; row i = true level i - h, column j = predicted level j - h."""
    p, y = _check_pair(pred, label)
    h = (n_levels - 1) // 2
    return confusion_matrix(
        levels(y, n_levels, value_range),
        levels(p, n_levels, value_range),
        labels=list(range(-h, h + 1)),
    )


def aggregate(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean, sample std (ddof=1; 0.0 for a single row) and count `n` of every numeric key shared by all rows,
    over its finite values; `non_finite` counts the rows whose value was NaN or Inf (a diverged seed), when any."""
    if not rows:
        raise ValueError("aggregate needs at least one row")

    def numeric(v) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    keys = [k for k in rows[0] if all(k in r and numeric(r[k]) for r in rows)]
    agg = {}
    for k in keys:
        every = np.array([float(r[k]) for r in rows])
        vals = every[np.isfinite(every)]  # a diverged seed's NaN is counted as such, not averaged into the rest
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        agg[k] = {"mean": float(np.mean(vals)) if len(vals) else float("nan"), "std": std, "n": len(vals)}
        if len(vals) < len(every):
            agg[k]["non_finite"] = len(every) - len(vals)
    return agg


def format_mean_std(agg: dict[str, dict[str, float]], key: str, digits: int = 2) -> str:
    """E.g. ``"83.40 ± 0.52"`` for ``agg[key]``; ``"83.40 (1 seed)"`` for a single value, whose std of 0 would read
    as a measured spread; ``"83.40 ± 0.52 (1 seed NaN/Inf)"`` when a seed's value was not finite, ``"undefined
    (...)"`` when none was."""
    if key not in agg:
        raise ValueError(f"unknown metric {key!r}; have {sorted(agg)}")
    m = agg[key]
    bad = f"{m['non_finite']} seed{'s' * (m['non_finite'] > 1)} NaN/Inf" if m.get("non_finite") else ""
    if m.get("n") == 0:
        return f"undefined ({bad})"
    if m.get("n") == 1:
        return f"{m['mean']:.{digits}f} (1 seed{'; ' + bad if bad else ''})"
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}" + (f" ({bad})" if bad else "")
