"""`dynafuse report`: one report over finished runs, built only from the files in the run folders.

Writes, each atomically, beside `OUT` (e.g. `reports/foundation`):
- `OUT.md` and `OUT.html` (the same tables; the HTML, rendered from the Jinja2 template `templates/report.html.j2`,
  embeds the figures, so it is one self-contained file);
- `OUT.csv` (one row per run) and `OUT_summary.csv` (mean and std of every metric per group of seeds);
- `OUT.json` (runs, groups, published anchors and the extra analyses);
- `OUT_figures/*.png` (drawn by `figures.py`).

Sections per dataset: mean ± std of every metric (ours), the published rows (other features, not like for like),
MAE/Corr per model, the ordinal analysis (confusion over the 7 levels, qwk, jumps); then robustness
(`robustness.json`), cross-dataset transfer (`transfer-<target>.json`) and links to `dynafuse explain` figures,
wherever the run folders hold them.
"""

from __future__ import annotations

import base64
import functools
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

import jinja2
import numpy as np

from ..data.registry import resolve_data_dir
from ..data.tables import parse_floats, read_csv
from ..errors import DataError, DynafuseError, warn
from ..files import atomic_write_csv, atomic_write_json, atomic_write_text, safe_name
from ..metrics import METRIC_KEYS, aggregate, format_mean_std, ordinal_stats
from ..training import RunDir
from .anchors import load_anchors
from .figures import confusion_figure, curves_figure, metrics_figure
from .summary import (
    FINE,
    backbone_of,
    by_dataset_task,
    cell,
    find_runs,
    group_key,
    group_runs,
    label,
    md_table,
    metric_table,
    show_backbones,
)

ANCHOR_KEYS = ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc3", "acc5", "acc7", "mae", "corr")
HEADLINE = {"regression": ("mae", "corr"), "3class": ("acc3", "f1_3")}  # per-model figure, robustness tables
TRANSFER_KEYS = ("acc2_has0", "acc2_non0", "acc3", "f1_3", "mae", "corr")
ORDINAL_KEYS = ("qwk", "jump2", "mean_abs_jump")
PUBLISHED_NOTE = "published — different features (BERT + COVAREP/Facet), not like-for-like"

# A report is a list of blocks, rendered once as Markdown and once as HTML (templates/report.html.j2):
# ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", relative path, caption)
# | ("links", text, [(relative path, name)]). The template names the fields after the kind:
BLOCK_FIELDS = {"h": ("level", "text"), "p": ("text",), "table": ("header", "rows"), "img": ("path", "caption"),
                "links": ("text", "links")}


# --------------------------------------------------------------------------- reading run folders


def ordinal_from_predictions(path: Path, task: str, value_range: float) -> dict:
    """Per split, the same numbers as a run's ordinal.json, from predictions.csv (runs older than ordinal.json)."""
    t = read_csv(path, ("split", "label", "prediction"))
    pred, y = defaultdict(list), defaultdict(list)
    label, prediction = (parse_floats(t, c, path, dtype=np.float64) for c in ("label", "prediction"))
    for row, yi, pi in zip(t.rows, label, prediction):
        pred[row["split"]].append(float(pi))
        y[row["split"]].append(float(yi))
    return {s: ordinal_stats(pred[s], y[s], task, value_range) for s in pred}


def _optional(read, default=None):
    """An extra file of a run (read by `read`): a damaged one is skipped with a warning naming it."""
    try:
        return read()
    except DataError as e:
        warn(f"{e.problem}; left out of the report", e.path)
        return default


def run_extras(run: dict) -> dict:
    """What else a run folder holds: ordinal stats, robustness, transfer results, explanation figures. A damaged
    file among them is left out with a warning line; the run's main results still count."""
    rd = RunDir(run["dir"])
    d = rd.path
    ordinal = _optional(lambda: rd.read_json("ordinal.json"))
    if ordinal is None and (d / "predictions.csv").exists():
        ordinal = _optional(lambda: ordinal_from_predictions(d / "predictions.csv", run["task"], run["value_range"]))
    explain = sorted(str(p) for p in (d / "explain").glob("*.png")) if (d / "explain").is_dir() else []
    transfer = [_optional(lambda p=p: rd.read_json(p.name)) for p in sorted(d.glob("transfer-*.json"))]
    return {"ordinal": ordinal, "robustness": _optional(lambda: rd.read_json("robustness.json")),
            "transfer": [t for t in transfer if isinstance(t, dict)], "explain": explain}


def runs_by_group(runs: list[dict]) -> dict[tuple, list[dict]]:
    out = defaultdict(list)
    for r in runs:
        out[group_key(r)].append(r)
    return out


def mean_std(rows: list[dict], key: str, digits: int = 3) -> str:
    """`mean ± std` of `key` over the rows that have it (blank when none does)."""
    vals = [{key: r[key]} for r in rows if isinstance(r.get(key), (int, float))]
    return format_mean_std(aggregate(vals), key, digits) if vals else ""


# --------------------------------------------------------------------------- sections


def overview_blocks(groups: list[dict], split: str) -> list:
    """The main table: one row per model (ablation variants left out), the headline metrics per dataset; one row
    per model and text backbone, in a `backbone` column, when some run used another backbone than the default."""
    main = [g for g in groups if not g["variant"]]
    columns = list(dict.fromkeys((g["dataset"], g["task"]) for g in main))  # groups come sorted by dataset
    cells = {(g["model"], backbone_of(g), g["dataset"], g["task"]): g for g in main}
    backbones = show_backbones(main)
    header = ["model", *(["backbone"] if backbones else [])] + [
        f"{d}{'' if t == 'regression' else f' ({t})'} {' / '.join(HEADLINE[t])}" for d, t in columns]
    rows = []
    for model, backbone in sorted({(g["model"], backbone_of(g)) for g in main}):
        row = [model, *([backbone] if backbones else [])]
        for d, t in columns:
            g = cells.get((model, backbone, d, t))
            row.append("" if g is None else " / ".join(cell(g["agg"], k) for k in HEADLINE[t])
                       + (f" ({g['n_seeds']})" if g["n_seeds"] > 1 else ""))  # one seed: each cell says so
        rows.append(row)
    return [("h", 2, f"Main table ({split} split, mean ± std over seeds; seeds in brackets)"),
            ("table", header, rows)]


def results_blocks(dataset: str, task: str, gs: list[dict], split: str, fig: Path, rel: str) -> list:
    keys = HEADLINE[task]
    metrics_figure(gs, keys, f"{dataset} ({task}, {split}): {' and '.join(keys)} per model", fig)
    return [("h", 3, f"{dataset} — {task}, ours ({split} split, mean ± std over seeds)"),
            ("table", *metric_table(gs, task)),
            ("img", rel, f"{dataset}: {' and '.join(keys)} per model, error bars ± std over seeds")]


def anchor_blocks(dataset: str, data_dir) -> tuple[list, list[dict]]:
    """The published rows for this dataset (mosi-bclstm is MOSI with other features: MOSI's rows)."""
    rows = load_anchors(dataset.split("-")[0], data_dir)
    if not rows:
        return [], []
    keys = [k for k in ANCHOR_KEYS if any(r.get(k) is not None for r in rows)]
    body = [[r["model"], r["source"], r["features"],
             *("" if r.get(k) is None else f"{r[k]:.{3 if k in FINE else 2}f}" for k in keys)] for r in rows]
    return [("h", 3, f"{dataset} — {PUBLISHED_NOTE}"),
            ("p", "Numbers as the papers report them (shared/anchors/published_results.csv), for orientation only: "
                  "their features (BERT/RoBERTa + COVAREP/Facet) differ from ours."),
            ("table", ["model", "source", "features", *keys], body)], rows


def ordinal_blocks(dataset: str, task: str, gs: list[dict], members: dict, split: str, fig: Path, rel: str):
    have = [g for g in gs if any(r["extras"]["ordinal"] and split in r["extras"]["ordinal"]
                                 for r in members[group_key(g)])]
    if not have:
        return [], None
    rows, stats = [], {}
    for g in have:
        ords = [r["extras"]["ordinal"][split] for r in members[group_key(g)]
                if r["extras"]["ordinal"] and split in r["extras"]["ordinal"]]
        stats[label(g)] = ords
        rows.append([label(g), str(len(ords)), *(mean_std(ords, k) for k in ORDINAL_KEYS)])
    key, better = ("mae", min) if task == "regression" else ("acc3", max)
    best = better((g for g in have if key in g["agg"]), key=lambda g: g["agg"][key]["mean"], default=have[0])
    cm = np.sum([np.asarray(o["confusion"]) for o in stats[label(best)]], axis=0)
    levels = stats[label(best)][0]["levels"]
    n_levels = f"{len(levels)} levels" if task == "regression" else "3 classes"
    confusion_figure(cm, levels, f"{dataset}: {label(best)}, {split}, summed over {len(stats[label(best)])} seeds",
                     fig)
    blocks = [("h", 3, f"{dataset} — {task}, ordinal analysis ({split} split, {n_levels})"),
              ("p", f"Best model by mean {key}: **{label(best)}**. Its confusion matrix summed over seeds "
                    "(rows: true level, columns: predicted level; colour: share of the true level). jump2 is the "
                    "share of samples off by 2 or more levels."),
              ("img", rel, f"{dataset}: confusion matrix of {label(best)}"),
              ("table", ["model", "seeds", *ORDINAL_KEYS], rows)]
    summary = {"best": label(best), "by": key, "levels": levels, "confusion": cm.tolist(),
               "table": {name: {k: aggregate(o)[k] for k in ORDINAL_KEYS} for name, o in stats.items()}}
    return blocks, summary


def robustness_blocks(dataset: str, task: str, gs: list[dict], members: dict, fig: Path, rel: str):
    robs = {label(g): [r["extras"]["robustness"] for r in members[group_key(g)] if r["extras"]["robustness"]]
            for g in gs}
    robs = {k: v for k, v in robs.items() if v}
    if not robs:
        return [], None
    first = next(iter(robs.values()))[0]
    keys = [k for k in HEADLINE[task] if k in first.get("clean", {})] or list(first.get("clean", {}))[:2]
    blocks = [("h", 3, f"{dataset} — {task}, robustness ({first.get('split', 'test')} split, "
                       "mean ± std over seeds)")]
    for k in keys:
        curves = list(dict.fromkeys(c for rs in robs.values() for r in rs for c in r.get("relative_robustness", {})))
        rows = [[name, str(len(rs)), *(mean_std([{c: r["relative_robustness"].get(c, {}).get(k)} for r in rs], c)
                                      for c in curves)] for name, rs in robs.items()]
        blocks += [("p", f"Relative robustness for {k} per perturbation curve (robustness.json's "
                         "`relative_robustness`: the curve's area over the level span, on the metric's own scale):"),
                   ("table", ["model", "seeds", *curves], rows)]
        drops = list(dict.fromkeys(d for rs in robs.values() for r in rs for d in r.get("drop", {})))
        if drops:
            rows = [[name, mean_std([r.get("clean", {}) for r in rs], k),
                     *(mean_std([r["drop"].get(d, {}) for r in rs], k) for d in drops)] for name, rs in robs.items()]
            blocks += [("p", f"{k} with modalities dropped (the named modalities removed):"),
                       ("table", ["model", "clean", *(f"drop {d}" for d in drops)], rows)]
    curves = mean_curves(robs)
    if curves:
        curves_figure(curves, tuple(keys), f"{dataset}: metric against perturbation level (mean over seeds)", fig)
        blocks.append(("img", rel, f"{dataset}: robustness curves"))
    summary = {"metrics": keys, "curves": curves,
               "relative_robustness": {name: {c: aggregate([r["relative_robustness"][c] for r in rs])
                                              for c in rs[0].get("relative_robustness", {})
                                              if all(c in r.get("relative_robustness", {}) for r in rs)}
                                       for name, rs in robs.items()}}
    return blocks, summary


def mean_curves(robs: dict[str, list[dict]]) -> dict:
    """curve ("noise/text", "token_drop/text", ...) -> model -> its levels and each metric averaged over seeds.
    The first seed's levels are the reference; a seed measured at other levels is left out of the mean."""
    out: dict = defaultdict(dict)
    for name, rs in robs.items():
        for family in ("noise", "token_drop"):
            ref = rs[0].get(family) or {}
            same = [r[family]["curves"] for r in rs if (r.get(family) or {}).get("levels") == ref.get("levels")]
            for curve, metrics in ref.get("curves", {}).items():
                seeds = [c[curve] for c in same if curve in c]
                out[f"{family}/{curve}"][name] = {
                    "levels": ref["levels"],
                    **{k: np.mean([c[k] for c in seeds], axis=0).tolist() for k in metrics
                       if all(len(c.get(k, ())) == len(ref["levels"]) for c in seeds)}}
    return dict(out)


def transfer_blocks(runs: list[dict]):
    items = [(r, t) for r in runs for t in r["extras"]["transfer"]]
    if not items:
        return [], None
    groups = defaultdict(list)
    for r, t in items:
        groups[(t.get("source", r["dataset"]), t["target"], r["task"], label(r))].append(t)
    present = {k for _, t in items for k in t.get("metrics", {})}
    keys = [k for k in TRANSFER_KEYS if k in present]
    header = ["source → target", "model", "seeds", "n",
              *(f"{k} {w}" for k in keys for w in ("zero-shot", "in-domain")), "missing modalities"]
    rows, summary, notes = [], [], []
    for (src, tgt, task, name), ts in sorted(groups.items()):
        cells = [mean_std([t.get(part) or {} for t in ts], k, 3 if k in FINE else 2)
                 for k in keys for part in ("metrics", "in_domain")]
        missing = sorted({m for t in ts for m in t.get("missing_modalities") or []})
        rows.append([f"{src} → {tgt}", name, str(len(ts)), str(ts[0].get("n", "")), *cells, ", ".join(missing)])
        notes += [n for t in ts for n in ([t["notes"]] if isinstance(t.get("notes"), str) else t.get("notes") or [])]
        summary.append({"source": src, "target": tgt, "task": task, "model": name, "seeds": len(ts),
                        "zero_shot": aggregate([t["metrics"] for t in ts]),
                        "in_domain": aggregate([t["in_domain"] for t in ts]) if all(t.get("in_domain") for t in ts)
                        else None})
    blocks = [("h", 2, "Cross-dataset transfer (zero-shot, mean ± std over seeds)"),
              ("p", "A model trained on the source is scored on the target without any training there "
                    "(zero-shot), beside its in-domain score on the source."),
              ("table", header, rows)]
    blocks += [("p", f"Note: {n}") for n in dict.fromkeys(notes)]
    return blocks, summary


def explain_blocks(runs: list[dict], base: Path):
    have = [r for r in runs if r["extras"]["explain"]]
    if not have:
        return [], None
    blocks = [("h", 2, "Explanations (`dynafuse explain`)")]
    summary = {}
    for r in have:
        links = [(os.path.relpath(p, base), Path(p).name) for p in r["extras"]["explain"]]
        blocks.append(("links", f"{r['dataset']} / {label(r)} / seed {r['seed']}:", links))
        summary[r["dir"]] = r["extras"]["explain"]
    return blocks, summary


# --------------------------------------------------------------------------- rendering


def to_markdown(blocks: list) -> str:
    parts = []
    for b in blocks:
        if b[0] == "h":
            parts.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            parts.append(b[1])
        elif b[0] == "table":
            parts.append(md_table(b[1], b[2]))
        elif b[0] == "img":
            parts.append(f"![{b[2]}]({b[1]})")
        elif b[0] == "links":
            parts.append(b[1] + " " + ", ".join(f"[{name}]({p})" for p, name in b[2]))
    return "\n\n".join(parts) + "\n"


def _bold_parts(text: str) -> list[str]:
    """`text` split at Markdown's **bold**: the odd-numbered parts (0-based) are the bold ones."""
    return re.split(r"\*\*(.+?)\*\*", text)


@functools.cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("dynafuse.analysis", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["bold_parts"] = _bold_parts
    return env


def to_html(blocks: list, base: Path, title: str) -> str:
    """A single self-contained page (templates/report.html.j2): the figures are embedded as data URIs, links
    point at the files (relative to `base`, where the page is written)."""
    items = []
    for kind, *fields in blocks:
        item = {"kind": kind, **dict(zip(BLOCK_FIELDS[kind], fields))}
        if kind == "img":
            item["data"] = base64.b64encode((base / item["path"]).read_bytes()).decode()
        items.append(item)
    return _templates().get_template("report.html.j2").render(title=title, blocks=items)


def metric_columns(metric_dicts: list[dict]) -> list[str]:
    """Every key of the dicts: those of METRIC_KEYS in its order, then the others sorted."""
    keys = [k for k in METRIC_KEYS if any(k in m for m in metric_dicts)]
    return keys + sorted({k for m in metric_dicts for k in m} - set(keys))


def name_columns(items: list[dict]) -> tuple[list[str], Callable[[dict], list]]:
    """The naming columns of the CSVs: dataset, model, variant, task, and `backbone` when some item used a text
    backbone other than the default; with the function giving an item's values for them."""
    backbones = show_backbones(items)
    header = ["dataset", "model", "variant", *(["backbone"] if backbones else []), "task"]
    return header, lambda x: [x["dataset"], x["model"], x["variant"], *([backbone_of(x)] if backbones else []),
                              x["task"]]


def write_runs_csv(path: Path, runs: list[dict], split: str) -> Path:
    """One row per run: dataset, model, variant, (backbone), task, seed, dir and every metric of `split`."""
    keys = metric_columns([r["metrics"][split] for r in runs])
    names, values = name_columns(runs)
    rows = ([*values(r), r["seed"], r["dir"], *(r["metrics"][split].get(k, "") for k in keys)] for r in runs)
    return atomic_write_csv(path, rows, [*names, "seed", "dir", *keys])


def write_summary_csv(path: Path, groups: list[dict]) -> Path:
    """One row per group of seeds: the mean and std of every metric."""
    keys = metric_columns([g["agg"] for g in groups])
    names, values = name_columns(groups)
    rows = ([*values(g), g["n_seeds"], " ".join(map(str, g["seeds"])),
             *(g["agg"][k][s] if k in g["agg"] else "" for k in keys for s in ("mean", "std"))] for g in groups)
    return atomic_write_csv(path, rows, [*names, "n_seeds", "seeds",
                                         *(f"{k}_{s}" for k in keys for s in ("mean", "std"))])


# --------------------------------------------------------------------------- the report


def write_report(run_dirs_or_roots, out: str | Path, split: str = "test", data_dir=None) -> str:
    """Build the report for every finished run under the given folders; return its Markdown."""
    roots = [Path(r) for r in ([run_dirs_or_roots] if isinstance(run_dirs_or_roots, (str, Path))
                               else run_dirs_or_roots)]
    for r in roots:
        if not r.is_dir():
            raise DynafuseError("no such run folder", r)
    runs = find_runs(roots, split)
    if not runs:
        raise DynafuseError("no finished runs (metrics.json + run.json) found", " ".join(map(str, roots)))
    for r in runs:
        r["extras"] = run_extras(r)
    out = Path(out)
    base, name = out.parent, out.name
    figs = base / f"{name}_figures"
    groups = group_runs(runs, split)
    members = runs_by_group(runs)

    where = ", ".join(map(str, roots)) if len(roots) <= 3 else f"{len(roots)} folders, e.g. {roots[0]}"
    blocks = [("h", 1, f"Report: {name}"),
              ("p", f"{len(runs)} finished runs in {len(groups)} groups, {split} split; every number below is read "
                    f"from the run folders ({where}). Cells are mean ± std over seeds.")]
    overview = overview_blocks(groups, split)
    blocks += overview
    extras = {"ordinal": {}, "robustness": {}}
    anchors = {}
    data_dir = data_dir or anchor_data_dir(runs)
    for (dataset, task), gs in by_dataset_task(groups).items():
        stem = safe_name(f"{dataset}-{task}")
        blocks += [("h", 2, f"{dataset} ({task})")]
        blocks += results_blocks(dataset, task, gs, split, figs / f"{stem}-metrics.png",
                                 f"{figs.name}/{stem}-metrics.png")
        if dataset not in anchors:
            ablocks, anchors[dataset] = anchor_blocks(dataset, data_dir)
            blocks += ablocks
        oblocks, extras["ordinal"][f"{dataset}/{task}"] = ordinal_blocks(
            dataset, task, gs, members, split, figs / f"{stem}-confusion.png", f"{figs.name}/{stem}-confusion.png")
        rblocks, extras["robustness"][f"{dataset}/{task}"] = robustness_blocks(
            dataset, task, gs, members, figs / f"{stem}-robustness.png", f"{figs.name}/{stem}-robustness.png")
        blocks += oblocks + rblocks
    tblocks, extras["transfer"] = transfer_blocks(runs)
    eblocks, extras["explain"] = explain_blocks(runs, base)
    blocks += tblocks + eblocks

    markdown = to_markdown(blocks)
    atomic_write_text(base / f"{name}.md", markdown)
    atomic_write_text(base / f"{name}_overview.md", to_markdown(overview))  # the README shows this one
    atomic_write_text(base / f"{name}.html", to_html(blocks, base, f"dynafuse report: {name}"))
    write_runs_csv(base / f"{name}.csv", runs, split)
    write_summary_csv(base / f"{name}_summary.csv", groups)
    atomic_write_json(base / f"{name}.json", {"split": split, "runs": runs, "groups": groups, "anchors": anchors,
                                              "extras": extras})
    return markdown


def anchor_data_dir(runs: list[dict]):
    """The data folder the runs were trained from (their config), which locates ../anchors beside it."""
    for r in runs:
        cfg = RunDir(r["dir"]).raw_config()
        try:
            return resolve_data_dir(cfg.get("data", {}).get("data_dir"))
        except DataError:
            continue
    return None
