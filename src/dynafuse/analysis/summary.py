"""Collect finished runs and aggregate them: mean ± std per (dataset, model, task, variant)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import yaml

from ..metrics import aggregate, format_mean_std

SHOWN = ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc3", "acc5", "acc7", "mae", "corr", "qwk", "jump2",
         "mean_abs_jump")
CLASS_SHOWN = ("acc3", "f1_3")


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
                         "params": info.get("params"),
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


def markdown_table(groups: list[dict], keys=None) -> str:
    """One Markdown table per (dataset, task): rows are models, cells mean ± std over seeds."""
    lines = []
    by = defaultdict(list)
    for g in groups:
        by[(g["dataset"], g["task"])].append(g)
    for (dataset, task), gs in by.items():
        ks = keys or (CLASS_SHOWN if task == "3class" else SHOWN)
        lines += [f"\n**{dataset}** ({task}, test split, mean ± std over seeds)\n",
                  "| model | seeds | " + " | ".join(ks) + " | params | s/epoch |", "|---|---|" + "---|" * (len(ks) + 2)]
        for g in gs:
            name = g["model"] + (f" [{g['variant']}]" if g["variant"] else "")
            digits = lambda k: 3 if k in ("mae", "corr", "qwk", "jump2", "mean_abs_jump") else 2  # noqa: E731
            cells = [format_mean_std(g["agg"], k, digits(k)) if k in g["agg"] else "" for k in ks]
            cost = f"{g['params']:,} | {g['sec_per_epoch']:.1f}" if g.get("params") else " | "
            lines.append(f"| {name} | {g['n_seeds']} | " + " | ".join(cells) + f" | {cost} |")
    return "\n".join(lines) + "\n"


def write_summary(groups: list[dict], out: str | Path) -> str:
    """Write grouped runs to OUT.md (tables) and OUT.json (numbers); return the Markdown."""
    from ..io import atomic_write_json, atomic_write_text

    table = markdown_table(groups)
    out = Path(out)
    atomic_write_text(out.with_suffix(".md"), table)
    atomic_write_json(out.with_suffix(".json"), groups)
    return table
