"""Reference rows for the CH-SIMSv2 trimodal benchmark (`--dataset simsv2-scores`), computed, not typed.

- each released unimodal score alone (pred_t, pred_a, pred_v) as the prediction, and refitted by a 1-D linear map
  on train;
- the linear stacker: least-squares weights on [pred_t, pred_a, pred_v] (an empty pred_v, no face, is 0 with an
  indicator column), fitted on train (whose scores are in-sample) and, separately, on valid.
Every row is scored on the official test split with the project's metric suite (value range 1).

    .venv/bin/python scripts/stacker_reference.py [--data-dir DIR]    # -> reports/simsv2_scores_reference.{md,json}
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LinearRegression

from dynafuse.data.registry import resolve_data_dir, simsv2_unimodal_scores
from dynafuse.errors import run_script
from dynafuse.files import atomic_write_json, atomic_write_text
from dynafuse.metrics import compute_metrics

COLUMNS = ("pred_t", "pred_a", "pred_v")
SHOWN = ("mae", "corr", "acc2_non0", "acc5", "acc7", "acc2_mmsa", "acc3_mmsa", "acc5_mmsa")


def load(data_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per split: X (N, 4) = pred_t, pred_a, pred_v (0 when empty), no-face indicator; y (N,); the raw scores."""
    table, scores, _ = simsv2_unimodal_scores(data_dir, COLUMNS)
    out = {}
    for s in ("train", "valid", "test"):
        raw = {c: scores[c][table["mode"] == s] for c in COLUMNS}
        no_face = ~np.isfinite(raw["pred_v"])
        x = np.stack([np.nan_to_num(raw[c], nan=0.0) for c in COLUMNS] + [no_face.astype(float)], 1)
        out[s] = {"x": x, "y": table["label"][table["mode"] == s], "raw": raw}
    return out


def rows(data: dict) -> list[dict]:
    test = data["test"]
    out = []
    for i, c in enumerate(COLUMNS):
        known = np.isfinite(test["raw"][c])
        note = "" if known.all() else f" (the {int((~known).sum())} clips without it: 0)"
        out.append({"row": f"{c} alone, as the prediction{note}", "pred": test["x"][:, i]})
        fit = LinearRegression().fit(data["train"]["x"][:, [i]], data["train"]["y"])
        out.append({"row": f"{c} alone, linear map fitted on train", "pred": fit.predict(test["x"][:, [i]])})
    for split in ("train", "valid"):
        fit = LinearRegression().fit(data[split]["x"], data[split]["y"])
        out.append({"row": f"linear stacker of the three scores, fitted on {split}", "pred": fit.predict(test["x"]),
                    "weights": dict(zip([*COLUMNS, "no_face"], np.round(fit.coef_, 4).tolist())),
                    "intercept": round(float(fit.intercept_), 4)})
    for r in out:
        r["metrics"] = compute_metrics(r.pop("pred"), test["y"], value_range=1.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default="reports/simsv2_scores_reference")
    a = ap.parse_args()
    result = rows(load(resolve_data_dir(a.data_dir)))
    lines = ["Reference rows on CH-SIMSv2 test (n = 1034), from `python scripts/stacker_reference.py`: the released "
             "unimodal models' scores (`simsv2/unimodal_scores.csv`) alone and linearly stacked. Train-split scores "
             "are in-sample, so the train fit over-trusts them; the valid fit does not.", "",
             "| reference | " + " | ".join(SHOWN) + " |", "|---|" + "---|" * len(SHOWN)]
    lines += ["| " + r["row"] + " | " + " | ".join(f"{r['metrics'][k]:.3f}" if k in ("mae", "corr")
                                                  else f"{r['metrics'][k]:.2f}" for k in SHOWN) + " |" for r in result]
    md = "\n".join(lines) + "\n"
    atomic_write_text(Path(a.out).with_suffix(".md"), md)
    atomic_write_json(Path(a.out).with_suffix(".json"), result)
    print(md)


if __name__ == "__main__":
    run_script(main)
