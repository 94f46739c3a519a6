"""`dynafuse report`: one report over finished runs, built only from the files in the run folders.

Writes, each atomically, beside `OUT` (e.g. `reports/foundation`):
- `OUT.md` and `OUT.html` (the same tables; the HTML embeds the figures, so it is one self-contained file);
- `OUT.csv` (one row per run) and `OUT_summary.csv` (mean and std of every metric per group of seeds);
- `OUT.json` (runs, groups, published anchors and the extra analyses);
- `OUT_figures/*.png`.

Sections per dataset: mean ± std of every metric (ours), the published rows (other features, not like for like),
MAE/Corr per model, the ordinal analysis (confusion over the 7 levels, qwk, jumps); then robustness
(`robustness.json`), cross-dataset transfer (`transfer-<target>.json`) and links to `dynafuse explain` figures,
wherever the run folders hold them.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..data.registry import resolve_data_dir
from ..errors import DataError, DynafuseError
from ..files import atomic_write, atomic_write_json, atomic_write_text, safe_name
from ..metrics import METRIC_KEYS, aggregate, format_mean_std, ordinal_stats
from ..training import RunDir
from .anchors import load_anchors
from .summary import (
    FINE,
    by_dataset_task,
    cell,
    find_runs,
    group_runs,
    label,
    md_table,
    metric_table,
)

ANCHOR_KEYS = ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc3", "acc5", "acc7", "mae", "corr")
HEADLINE = {"regression": ("mae", "corr"), "3class": ("acc3", "f1_3")}  # per-model figure, robustness tables
TRANSFER_KEYS = ("acc2_has0", "acc2_non0", "acc3", "f1_3", "mae", "corr")
ORDINAL_KEYS = ("qwk", "jump2", "mean_abs_jump")
PUBLISHED_NOTE = "published — different features (BERT + COVAREP/Facet), not like-for-like"

# A report is a list of blocks, rendered once as Markdown and once as HTML:
# ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", relative path, caption)
# | ("links", text, [(relative path, name)])


# --------------------------------------------------------------------------- reading run folders


def ordinal_from_predictions(path: Path, task: str, value_range: float) -> dict:
    """Per split, the same numbers as a run's ordinal.json, from predictions.csv (runs older than ordinal.json)."""
    pred, y = defaultdict(list), defaultdict(list)
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                pred[row["split"]].append(float(row["prediction"]))
                y[row["split"]].append(float(row["label"]))
    except (KeyError, ValueError) as e:
        raise DataError(f"malformed predictions file (need split, label, prediction columns): {e}", path) from None
    return {s: ordinal_stats(pred[s], y[s], task, value_range) for s in pred}


def run_extras(run: dict) -> dict:
    """What else a run folder holds: ordinal stats, robustness, transfer results, explanation figures."""
    rd = RunDir(run["dir"])
    d = rd.path
    ordinal = rd.read_json("ordinal.json")
    if ordinal is None and (d / "predictions.csv").exists():
        ordinal = ordinal_from_predictions(d / "predictions.csv", run["task"], run["value_range"])
    explain = sorted(str(p) for p in (d / "explain").glob("*.png")) if (d / "explain").is_dir() else []
    return {"ordinal": ordinal, "robustness": rd.read_json("robustness.json"),
            "transfer": [rd.read_json(p.name) for p in sorted(d.glob("transfer-*.json"))],
            "explain": explain}


def group_key(x: dict) -> tuple:
    return x["dataset"], x["task"], x["model"], x["variant"]


def runs_by_group(runs: list[dict]) -> dict[tuple, list[dict]]:
    out = defaultdict(list)
    for r in runs:
        out[group_key(r)].append(r)
    return out


def mean_std(rows: list[dict], key: str, digits: int = 3) -> str:
    """`mean ± std` of `key` over the rows that have it (blank when none does)."""
    vals = [{key: r[key]} for r in rows if isinstance(r.get(key), (int, float))]
    return format_mean_std(aggregate(vals), key, digits) if vals else ""


# --------------------------------------------------------------------------- figures


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    pyplot().close(fig)
    return path


def metrics_figure(groups: list[dict], keys: tuple[str, ...], title: str, path: Path) -> Path:
    """One panel per metric: mean over seeds with a ± std error bar, one row per model. Points, not bars from
    zero, so that differences of a few hundredths stay visible."""
    plt = pyplot()
    names = [label(g) for g in groups]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys) + 1.5, 0.32 * len(names) + 1.4),
                             squeeze=False, sharey=True)
    for ax, k in zip(axes[0], keys):
        mean = [g["agg"].get(k, {}).get("mean", np.nan) for g in groups]
        std = [g["agg"].get(k, {}).get("std", 0.0) for g in groups]
        ax.errorbar(mean, range(len(names)), xerr=std, fmt="o", color="tab:blue", capsize=3, ms=4)
        ax.set_xlabel(f"{k} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0][0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(title)
    return save_figure(fig, path)


def confusion_figure(cm: np.ndarray, levels: list[int], title: str, path: Path) -> Path:
    """Heatmap coloured by the share of each true level (rows), annotated with the counts."""
    plt = pyplot()
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(levels), 0.8 + 0.6 * len(levels)))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(levels)):
        for j in range(len(levels)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(levels)), levels)
    ax.set_yticks(range(len(levels)), levels)
    ax.set_xlabel("predicted level")
    ax.set_ylabel("true level")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="share of the true level")
    return save_figure(fig, path)


def curves_figure(curves: dict[str, dict[str, dict]], keys: tuple[str, ...], title: str, path: Path) -> Path:
    """curves[curve][model] = {"levels": [...], metric: [mean over seeds per level]}: one panel per curve and
    metric, one line per model."""
    plt = pyplot()
    names = list(curves)  # robustness.json's order: noise per modality, then token drop
    fig, axes = plt.subplots(len(keys), len(names), figsize=(3.6 * len(names), 2.8 * len(keys)), squeeze=False)
    for j, curve in enumerate(names):
        for i, k in enumerate(keys):
            ax = axes[i][j]
            for model, c in sorted(curves[curve].items()):
                if k in c:
                    ax.plot(c["levels"], c[k], marker="o", ms=3, label=model)
            ax.set_title(curve, fontsize=9)
            ax.set_xlabel("level")
            ax.set_ylabel(k)
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- sections


def overview_blocks(groups: list[dict], split: str) -> list:
    """The main table: one row per model (ablation variants left out), the headline metrics per dataset."""
    main = [g for g in groups if not g["variant"]]
    columns = list(dict.fromkeys((g["dataset"], g["task"]) for g in main))  # groups come sorted by dataset
    cells = {(g["model"], g["dataset"], g["task"]): g for g in main}
    header = ["model"] + [f"{d}{'' if t == 'regression' else f' ({t})'} {' / '.join(HEADLINE[t])}"
                          for d, t in columns]
    rows = []
    for model in sorted({g["model"] for g in main}):
        row = [model]
        for d, t in columns:
            g = cells.get((model, d, t))
            row.append("" if g is None else " / ".join(cell(g["agg"], k) for k in HEADLINE[t])
                       + f" ({g['n_seeds']})")
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


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def to_html(blocks: list, base: Path, title: str) -> str:
    """A single self-contained page: the figures are embedded as data URIs, links point at the files."""
    body = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode((base / b[1]).read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b[2])}">'
                        f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
        elif b[0] == "links":
            links = ", ".join(f'<a href="{html.escape(p)}">{html.escape(n)}</a>' for p, n in b[2])
            body.append(f"<p>{html.escape(b[1])} {links}</p>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}th{background:#f3f3f3}img{max-width:100%}figcaption{font-size:12px;color:#555}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def runs_csv(runs: list[dict], split: str) -> str:
    keys = [k for k in METRIC_KEYS if any(k in r["metrics"][split] for r in runs)]
    keys += sorted({k for r in runs for k in r["metrics"][split]} - set(keys))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "model", "variant", "task", "seed", "dir", *keys])
    for r in runs:
        m = r["metrics"][split]
        w.writerow([r["dataset"], r["model"], r["variant"], r["task"], r["seed"], r["dir"],
                    *(m.get(k, "") for k in keys)])
    return buf.getvalue()


def summary_csv(groups: list[dict]) -> str:
    keys = [k for k in METRIC_KEYS if any(k in g["agg"] for g in groups)]
    keys += sorted({k for g in groups for k in g["agg"]} - set(keys))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "model", "variant", "task", "n_seeds", "seeds", *(f"{k}_{s}" for k in keys
                                                                             for s in ("mean", "std"))])
    for g in groups:
        vals = [g["agg"][k][s] if k in g["agg"] else "" for k in keys for s in ("mean", "std")]
        w.writerow([g["dataset"], g["model"], g["variant"], g["task"], g["n_seeds"],
                    " ".join(map(str, g["seeds"])), *vals])
    return buf.getvalue()


# --------------------------------------------------------------------------- the report


def write_report(run_dirs_or_roots, out: str | Path, split: str = "test", data_dir=None) -> str:
    """Build the report for every finished run under the given folders; return its Markdown."""
    roots = [Path(r) for r in ([run_dirs_or_roots] if isinstance(run_dirs_or_roots, (str, Path))
                               else run_dirs_or_roots)]
    for r in roots:
        if not r.is_dir():
            raise DynafuseError("no such run folder", r)
    runs = find_runs(roots)
    if not runs:
        raise DynafuseError("no finished runs (metrics.json + run.json) found", " ".join(map(str, roots)))
    missing = [r["dir"] for r in runs if split not in r["metrics"]]
    if missing:
        raise DataError(f"metrics.json has no {split!r} split", Path(missing[0]) / "metrics.json")
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
    atomic_write_text(base / f"{name}.csv", runs_csv(runs, split))
    atomic_write_text(base / f"{name}_summary.csv", summary_csv(groups))
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
