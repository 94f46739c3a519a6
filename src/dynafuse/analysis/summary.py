"""Collect finished runs and aggregate them: mean ± std per (dataset, model, task, variant)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..data.text import DEFAULT_BACKBONE
from ..errors import DataError, DynafuseError, warn
from ..files import atomic_write_json, atomic_write_text
from ..metrics import aggregate, format_mean_std
from ..training import find_runs as find_run_dirs

SHOWN = ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc3", "acc5", "acc7", "mae", "corr", "qwk", "jump2",
         "mean_abs_jump")
CLASS_SHOWN = ("acc3", "f1_3")
FINE = ("mae", "corr", "qwk", "jump2", "mean_abs_jump")  # shown with 3 decimals, the rest (percentages) with 2


def find_runs(roots: list[str | Path], split: str | None = None) -> list[dict]:
    """Every finished run under the given roots, as `RunDir.record()` rows. A run whose files are damaged
    (truncated run.json or metrics.json, broken config.yaml) or whose metrics lack `split` is skipped with one
    warning line naming the file, so one bad folder does not stop a report over hundreds; none left is an error."""
    rows, skipped, seen = [], 0, {}
    for run in find_run_dirs(roots):
        try:
            row = run.record()
            if split is not None and not isinstance(row["metrics"].get(split), dict):
                raise DataError(f"metrics.json has no {split!r} split", run / "metrics.json")
        except DataError as e:
            warn(f"{e.problem}; skipped this run", e.path)
            skipped += 1
            continue
        twin = seen.setdefault((*group_key(row), row["seed"]), row["dir"])
        if twin != row["dir"]:  # a copied folder would count as another seed
            warn(f"the same model, data, variant and seed {row['seed']} as {twin}; skipped this run", row["dir"])
            continue
        rows.append(row)
    if skipped and not rows:
        raise DynafuseError(f"no readable finished runs: all {skipped} were skipped (see the warnings above)",
                            " ".join(map(str, roots)))
    return rows


def group_key(x: dict) -> tuple:
    """What tells groups of seeds apart: (dataset, task, model, variant, text backbone)."""
    return x["dataset"], x["task"], x["model"], x["variant"], backbone_of(x)


def backbone_of(x: dict) -> str:
    """A run's or group's text backbone (`data.text.backbone`; runs that predate the key used MiniLM)."""
    return x.get("text_backbone") or DEFAULT_BACKBONE


def group_runs(runs: list[dict], split: str = "test") -> list[dict]:
    """Runs grouped by (dataset, task, model, variant, text backbone), with the mean ± std of `split`'s metrics over
    seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[group_key(r)].append(r)
    out = []
    for (dataset, task, model, variant, backbone), rs in sorted(groups.items()):
        out.append({"dataset": dataset, "task": task, "model": model, "variant": variant, "text_backbone": backbone,
                    "n_seeds": len(rs), "seeds": sorted(r["seed"] for r in rs), "params": rs[0]["params"],
                    "sec_per_epoch": sum(r["sec_per_epoch"] for r in rs) / len(rs),
                    "agg": aggregate([r["metrics"][split] for r in rs])})
    return out


def label(g: dict, backbone: bool = True) -> str:
    """A group's (or run's) row name: `model`, `model [variant]` for an ablation; with `backbone`, a text backbone
    other than the default is named too: `model (mpnet) [variant]`."""
    name = backbone_of(g)
    shown = f" ({Path(name).name or name})" if backbone and name != DEFAULT_BACKBONE else ""
    return g["model"] + shown + (f" [{g['variant']}]" if g.get("variant") else "")


def show_backbones(groups: list[dict]) -> bool:
    """Whether tables need a backbone column: some group used a text backbone other than the default."""
    return any(backbone_of(g) != DEFAULT_BACKBONE for g in groups)


def cell(agg: dict, key: str) -> str:
    return format_mean_std(agg, key, 3 if key in FINE else 2) if key in agg else ""


def by_dataset_task(groups: list[dict]) -> dict[tuple[str, str], list[dict]]:
    by = defaultdict(list)
    for g in groups:
        by[(g["dataset"], g["task"])].append(g)
    return dict(by)


def metric_table(groups: list[dict], task: str, keys=None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one (dataset, task) table: rows are models, cells mean ± std over seeds; a `backbone`
    column (the text backbone of each row) when the groups used more than the default one."""
    ks = keys or (CLASS_SHOWN if task == "3class" else SHOWN)
    backbones = show_backbones(groups)
    header = ["model", *(["backbone"] if backbones else []), "seeds", *ks, "params", "s/epoch"]
    rows = []
    for g in groups:
        cost = [f"{g['params']:,}", f"{g['sec_per_epoch']:.1f}"] if g.get("params") else ["", ""]
        rows.append([label(g, backbone=False), *([backbone_of(g)] if backbones else []), str(g["n_seeds"]),
                     *(cell(g["agg"], k) for k in ks), *cost])
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
    table = markdown_table(groups)
    out = Path(out)
    atomic_write_text(out.with_suffix(".md"), table)
    atomic_write_json(out.with_suffix(".json"), groups)
    return table
