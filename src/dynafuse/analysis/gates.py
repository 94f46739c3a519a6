"""Do the gates move to the modality that is right for a clip? (CH-SIMSv2 trimodal benchmark, issue 14.)

On `simsv2-scores` each modality is one released unimodal model's score, so each modality's own error on a clip is
known: |score_m - label| (`pred_t` for text, whatever the text input was; `pred_a`, `pred_v`). For every finished
run with per-sample modality gates (predictions.csv, test split), this measures
- `corr_weight_error[m]`: Spearman correlation, over the clips, between the weight on m and m's own error. A gate
  that moves away from a wrong modality gives a negative value; a static gate gives 0 (undefined: reported as 0);
- `weight_when_best[m]` / `weight_when_worst[m]`: the mean weight on m over the clips where m has the smallest /
  the largest error of the three;
- `argmax_is_best`: the share of clips whose largest weight is on the modality with the smallest error (chance:
  1/3 with three modalities);
- `no_face_vision_weight`: the mean weight on vision over the clips without a face (vision missing), beside
  `face_vision_weight` over the others.
The figure plots, per modality, the mean weight in bins of that modality's own error, one line per model.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ..data.registry import SCORE_COLUMNS, simsv2_unimodal_scores
from ..errors import DataError
from ..files import atomic_write_json, atomic_write_text
from ..metrics import aggregate, format_mean_std
from ..training import RunDir, find_runs
from .figures import pyplot, save_figure
from .summary import label

MODS = ("text", "audio", "vision")
BINS = np.array([0.0, 0.1, 0.2, 0.4, 0.7, 2.0])  # error bins on the [-1, 1] scale


def clip_errors(data_dir: Path) -> dict[str, dict[str, float]]:
    """id -> {modality: |score - label|} (NaN where the score is missing, e.g. no face)."""
    table, scores, _ = simsv2_unimodal_scores(data_dir)
    return {i: {m: float(abs(scores[c][k] - table["label"][k])) for m, c in SCORE_COLUMNS.items()}
            for k, i in enumerate(table["ids"])}


def read_gates(run: RunDir, split: str = "test") -> tuple[list[str], np.ndarray] | None:
    """(ids, gate weights (N, 3) in text/audio/vision order) of a run's predictions.csv, or None without gates."""
    path = run / "predictions.csv"
    if not path.exists():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    cols = [f"gate_modality_{m}" for m in MODS]
    if not rows or not all(c in rows[0] for c in cols):
        return None
    try:
        return [r["id"] for r in rows], np.array([[float(r[c]) for c in cols] for r in rows])
    except ValueError as e:
        raise DataError(f"malformed gate column ({e})", path) from None


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def run_stats(ids: list[str], w: np.ndarray, errors: dict) -> dict:
    """The numbers of the module docstring for one run."""
    err = np.array([[errors[i][m] for m in MODS] for i in ids])
    face = np.isfinite(err[:, 2])
    out = {"n": len(ids), "no_face": int((~face).sum())}
    full = face  # clips where every modality has a score
    best, worst = np.nanargmin(np.where(full[:, None], err, np.inf), 1), np.nanargmax(np.where(full[:, None], err, -1), 1)
    for j, m in enumerate(MODS):
        out[f"corr_weight_error_{m}"] = _spearman(w[full, j], err[full, j])
        out[f"weight_when_best_{m}"] = float(w[full & (best == j), j].mean()) if (full & (best == j)).any() else 0.0
        out[f"weight_when_worst_{m}"] = float(w[full & (worst == j), j].mean()) if (full & (worst == j)).any() else 0.0
        out[f"mean_weight_{m}"] = float(w[:, j].mean())
    out["argmax_is_best"] = float(np.mean(w[full].argmax(1) == best[full]))
    out["no_face_vision_weight"] = float(w[~face, 2].mean()) if (~face).any() else 0.0
    out["face_vision_weight"] = float(w[face, 2].mean())
    return out


def binned(ids: list[str], w: np.ndarray, errors: dict) -> dict[str, list[float]]:
    """Per modality, the mean weight in each error bin (NaN for an empty bin)."""
    err = np.array([[errors[i][m] for m in MODS] for i in ids])
    out = {}
    for j, m in enumerate(MODS):
        k = np.digitize(err[:, j], BINS[1:-1])
        out[m] = [float(w[(k == b) & np.isfinite(err[:, j]), j].mean()) if ((k == b) & np.isfinite(err[:, j])).any()
                  else float("nan") for b in range(len(BINS) - 1)]
    return out


SHOWN = ("argmax_is_best", *(f"corr_weight_error_{m}" for m in MODS), "weight_when_best_audio",
         "weight_when_worst_audio", "no_face_vision_weight", "face_vision_weight")


def gate_analysis(roots: list[str | Path], data_dir: Path, out: str | Path, dataset: str = "simsv2-scores") -> str:
    """Measure every finished `dataset` run under `roots` that has modality gates; write OUT.md, OUT.json and
    OUT.png; return the Markdown."""
    errors = clip_errors(data_dir)
    per_group: dict[str, list[dict]] = defaultdict(list)
    curves: dict[str, list[dict]] = defaultdict(list)
    for run in find_runs(roots):
        rec = run.record()
        if rec["dataset"] != dataset:
            continue
        gates = read_gates(run)
        if gates is None:
            continue
        name = label(rec)
        per_group[name].append(run_stats(*gates, errors))
        curves[name].append(binned(*gates, errors))
    if not per_group:
        raise DataError(f"no finished {dataset} run with modality gates and predictions.csv", " ".join(map(str, roots)))
    out = Path(out)
    header = ["model", "seeds", *SHOWN]
    lines = [f"Gate analysis on {dataset} test (n = {next(iter(per_group.values()))[0]['n']}; "
             f"{next(iter(per_group.values()))[0]['no_face']} clips without a face), mean ± std over seeds, from "
             "`python scripts/gate_analysis.py`. Each modality's own error is |its released model's score - label|. "
             "`argmax_is_best`: share of clips whose largest weight is on the modality with the smallest error "
             "(chance 1/3). `corr_weight_error_m`: Spearman correlation of the weight on m with m's error "
             "(negative: the gate moves away from a wrong modality).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = {}
    for name, stats in sorted(per_group.items()):
        agg = aggregate(stats)
        summary[name] = {"seeds": len(stats), **agg}
        lines.append("| " + " | ".join([name, str(len(stats)), *(format_mean_std(agg, k, 3) for k in SHOWN)]) + " |")
    md = "\n".join(lines) + "\n"
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    centres = (BINS[:-1] + BINS[1:]) / 2
    for j, m in enumerate(MODS):
        ax = axes[j]
        for name, cs in sorted(curves.items()):
            ax.plot(centres, np.nanmean([c[m] for c in cs], 0), marker="o", ms=3, label=name)
        ax.set_title(f"weight on {m} against {m}'s own error", fontsize=9)
        ax.set_xlabel(f"|score_{m} - label| (binned)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean gate weight")
    axes[-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    save_figure(fig, out.with_suffix(".png"))
    atomic_write_text(out.with_suffix(".md"), md + f"\n![gate weight against each modality's error]({out.name}.png)\n")
    atomic_write_json(out.with_suffix(".json"), {"dataset": dataset, "groups": summary, "bins": BINS.tolist()})
    return md
