"""Collect finished runs and aggregate them: mean ± std per (dataset, model, task, variant)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from ..metrics import _qwk, aggregate, format_mean_std, levels

SHOWN = ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc3", "acc5", "acc7", "mae", "corr", "qwk", "jump2",
         "mean_abs_jump")
CLASS_SHOWN = ("acc3", "f1_3")
FINE = ("mae", "corr", "qwk", "jump2", "mean_abs_jump")  # shown with 3 decimals, the rest (percentages) with 2


def find_runs(roots: list[str | Path]) -> list[dict]:
    """Every finished run (a folder with metrics.json and run.json) under the given roots."""
    runs = []
    for root in roots:
        for m in sorted(Path(root).rglob("metrics.json")):
            info_path = m.parent / "run.json"
            if not info_path.exists():
                continue
            info = json.loads(info_path.read_text())
            cfg = yaml.safe_load((m.parent / "config.yaml").read_text())
            stages = info.get("stages", {}).values()
            epochs = sum(s.get("epochs", 0) for s in stages)
            runs.append({"dir": str(m.parent), "model": info["model"], "dataset": info["dataset"],
                         "seed": info["seed"], "task": cfg["model"].get("task", "regression"),
                         "variant": cfg.get("variant", ""), "metrics": json.loads(m.read_text()),
                         "params": info.get("params"), "value_range": info.get("value_range", 3.0),
                         "sec_per_epoch": sum(s.get("seconds", 0) for s in stages) / max(epochs, 1)})
    return runs


def group_runs(runs: list[dict], split: str = "test") -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["dataset"], r["task"], r["model"], r["variant"])].append(r)
    out = []
    for (dataset, task, model, variant), rs in sorted(groups.items()):
        out.append({"dataset": dataset, "task": task, "model": model, "variant": variant, "n_seeds": len(rs),
                    "seeds": sorted(r["seed"] for r in rs), "params": rs[0]["params"],
                    "sec_per_epoch": sum(r["sec_per_epoch"] for r in rs) / len(rs),
                    "agg": aggregate([r["metrics"][split] for r in rs])})
    return out


def label(g: dict) -> str:
    """A group's row name: `model`, or `model [variant]` for an ablation."""
    return g["model"] + (f" [{g['variant']}]" if g.get("variant") else "")


def cell(agg: dict, key: str) -> str:
    return format_mean_std(agg, key, 3 if key in FINE else 2) if key in agg else ""


def by_dataset_task(groups: list[dict]) -> dict[tuple[str, str], list[dict]]:
    by = defaultdict(list)
    for g in groups:
        by[(g["dataset"], g["task"])].append(g)
    return dict(by)


def metric_table(groups: list[dict], task: str, keys=None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one (dataset, task) table: rows are models, cells mean ± std over seeds."""
    ks = keys or (CLASS_SHOWN if task == "3class" else SHOWN)
    header = ["model", "seeds", *ks, "params", "s/epoch"]
    rows = []
    for g in groups:
        cost = [f"{g['params']:,}", f"{g['sec_per_epoch']:.1f}"] if g.get("params") else ["", ""]
        rows.append([label(g), str(g["n_seeds"]), *(cell(g["agg"], k) for k in ks), *cost])
    return header, rows


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_table(groups: list[dict], keys=None, split: str = "test") -> str:
    """One Markdown table per (dataset, task): rows are models, cells mean ± std over seeds."""
    parts = []
    for (dataset, task), gs in by_dataset_task(groups).items():
        parts += [f"\n**{dataset}** ({task}, {split} split, mean ± std over seeds)\n",
                  md_table(*metric_table(gs, task, keys))]
    return "\n".join(parts) + "\n"


def write_summary(groups: list[dict], out: str | Path) -> str:
    """Write grouped runs to OUT.md (tables) and OUT.json (numbers); return the Markdown."""
    from ..io import atomic_write_json, atomic_write_text

    table = markdown_table(groups)
    out = Path(out)
    atomic_write_text(out.with_suffix(".md"), table)
    atomic_write_json(out.with_suffix(".json"), groups)
    return table


def ordinal_stats(pred, y, task: str = "regression", value_range: float = 3.0) -> dict:
    """Confusion matrix over the ordinal levels (rows = true level, columns = predicted level) with qwk, jump2
    and mean_abs_jump: 7 levels for regression (the metric suite's binning), the 3 classes for the 3-class task
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
    # _qwk's label list is the 7 levels; unused levels have no counts, so the 3-class kappa is unchanged
    return {"levels": list(range(-h, h + 1)), "confusion": cm.tolist(), "qwk": _qwk(lp, ly),
            "jump2": float(np.mean(jump >= 2)), "mean_abs_jump": float(np.mean(jump)), "n": int(len(y))}
