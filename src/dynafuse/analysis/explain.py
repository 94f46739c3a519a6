"""`dynafuse explain`: look inside a trained run on one split.

Writes into OUT (default RUN_DIR/explain), each file atomically:
- `gates.png`: the distribution of every gate's weights per component (modalities for a modality gate, global/local
  for DPDF-LQ's path gate), and each component's mean weight by true sentiment level;
- `attention.png`: every attention map the model returns, averaged over the split;
- `tsne.png`: a t-SNE of the fused representation, coloured by the label;
- `explain.json` (gate statistics, what was drawn and what was not, and why) and `gates.csv` (per-sample gate
  weights beside id, label and prediction).
A model that returns no gates, attention or fused representation gets a note in explain.json, not an empty figure.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..errors import DynafuseError
from ..files import atomic_write_json, atomic_write_text
from ..metrics import levels
from ..training import load_run, predict_batches
from ..training.predict import MIN_SHARE
from ..training.run import loader
from .report import pyplot, save_figure

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
TSNE_MAX = 2000  # t-SNE is quadratic in the samples: a fixed random subset beyond this


def gate_stats(g: np.ndarray, comps: list[str], level: np.ndarray) -> dict:
    """Mean, std and quantiles per component; the mean weight per true level; the range of the row sums."""
    lv = sorted(set(level.tolist()))
    return {
        "components": comps,
        "stats": {c: {"mean": float(g[:, i].mean()), "std": float(g[:, i].std()),
                      **{f"q{int(q * 100):02d}": float(np.quantile(g[:, i], q)) for q in QUANTILES}}
                  for i, c in enumerate(comps)},
        "mean_by_level": {c: {str(v): float(g[level == v, i].mean()) for v in lv} for i, c in enumerate(comps)},
        "count_by_level": {str(v): int((level == v).sum()) for v in lv},
        "row_sum": {"min": float(g.sum(1).min()), "max": float(g.sum(1).max())},
    }


def gates_figure(gates: dict[str, np.ndarray], stats: dict, path: Path, title: str) -> Path:
    """Top row: a violin per component of each gate; bottom row: each component's mean weight by true level."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(gates), figsize=(4.2 * len(gates), 6.4), squeeze=False)
    for j, (name, g) in enumerate(gates.items()):
        comps = stats[name]["components"]
        ax = axes[0][j]
        # a constant component has no spread to draw a violin from: a box (a line) shows it instead
        if all(np.ptp(g[:, i]) > 0 for i in range(g.shape[1])):
            ax.violinplot([g[:, i] for i in range(g.shape[1])], showmedians=True)
        else:
            ax.boxplot([g[:, i] for i in range(g.shape[1])], showfliers=False)
        ax.set_xticks(range(1, len(comps) + 1), comps)
        ax.set_title(f"gate '{name}': weight per sample", fontsize=10)
        ax.set_ylabel("weight")
        ax.grid(alpha=0.3)
        ax = axes[1][j]
        by = stats[name]["mean_by_level"]
        for c in comps:
            lv = [int(v) for v in by[c]]
            ax.plot(lv, list(by[c].values()), marker="o", label=c)
        ax.set_xlabel("true sentiment level")
        ax.set_ylabel("mean weight")
        ax.set_title(f"gate '{name}': mean weight by level", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def attention_figure(maps: dict[str, np.ndarray], path: Path, title: str) -> Path:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    cols = min(3, len(maps))
    rows = -(-len(maps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, m) in zip(axes.flat, maps.items()):
        im = ax.imshow(m, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(f"{name} ({m.shape[0]}×{m.shape[1]})", fontsize=10)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=ax)
    for ax in list(axes.flat)[len(maps):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def tsne_figure(fused: np.ndarray, y: np.ndarray, path: Path, title: str, seed: int = 0) -> dict:
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(fused), TSNE_MAX, replace=False)) if len(fused) > TSNE_MAX else np.arange(len(fused))
    perplexity = float(min(30.0, (len(keep) - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(fused[keep])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 5))
    lim = float(np.abs(y).max()) or 1.0
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=y[keep], cmap="coolwarm", vmin=-lim, vmax=lim, s=9, alpha=0.8)
    fig.colorbar(sc, ax=ax, label="label (sentiment score)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)
    return {"points": int(len(keep)), "perplexity": perplexity, "random_state": seed, "dim": int(fused.shape[1])}


def gates_csv(ids, y, pred, gates: dict[str, np.ndarray], comps: dict[str, list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "label", "prediction", *(f"gate_{n}_{c}" for n in gates for c in comps[n])])
    for i in range(len(ids)):
        w.writerow([ids[i], f"{y[i]:.6g}", f"{pred[i]:.6g}",
                    *(f"{g[i, j]:.6f}" for g in gates.values() for j in range(g.shape[1]))])
    return buf.getvalue()


def explain_run(run_dir: str | Path, out: str | Path | None = None, split: str = "test") -> dict:
    """Explain a finished run (its local checkpoint) on `split`; return what explain.json holds."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "explain"
    cfg, lit, bundle = load_run(run_dir)
    if split not in bundle.splits:
        raise DynafuseError(f"no {split!r} split in this run's data; have {sorted(bundle.splits)}", run_dir)
    model = lit.model
    res = predict_batches(model, loader(bundle, split, cfg, shuffle=False), fused=True, attention=True)
    ids = np.asarray(bundle.splits[split].ids)[res.index]
    n_levels = 3 if model.task == "3class" else 7
    level = levels(res.y, n_levels, bundle.value_range)
    title = f"{cfg.model.name} on {cfg.data.name} ({split}, n={len(ids)})"
    info = {"run": str(run_dir), "model": cfg.model.name, "dataset": cfg.data.name, "split": split,
            "task": model.task, "modalities": model.modalities, "n": int(len(ids)),
            "level_binning": f"{n_levels} levels of the label (metrics.levels)", "gates": {}, "attention": {},
            "figures": [], "notes": []}

    gates, comps = {}, {}
    for name, g in res.gates.items():
        comps[name] = model.gate_components(name, g.shape[1])
        info["gates"][name] = gate_stats(g, comps[name], level)
        if g.shape[1] == 1 and np.ptp(g) == 0:
            info["notes"].append(f"gate '{name}' has one component and is constant ({g[0, 0]:g}): not drawn")
        else:
            gates[name] = g
    if res.other_gates:
        info["notes"].append(f"gates {res.other_gates} are not (batch, components) weights: not summarised")
    if res.gates:
        atomic_write_text(out / "gates.csv", gates_csv(ids, res.y, res.pred, res.gates, comps))
    if gates:
        gates_figure(gates, info["gates"], out / "gates.png", title)
        info["figures"].append("gates.png")
    if not res.gates:
        info["notes"].append("this model has no gates (ModelOutput.gates is empty): no gates.png / gates.csv")

    maps = {}
    for name, acc in res.attention.items():
        m = acc.mean()
        info["attention"][name] = {"shape": list(m.shape)}
        if m.shape[1] <= 1:  # softmax over a single key is 1 everywhere: nothing to see
            info["attention"][name]["note"] = "a single key position: the weight is always 1, not drawn"
        else:
            maps[name] = m
    if maps:
        attention_figure(maps, out / "attention.png", title + ": mean attention (valid positions only)")
        info["figures"].append("attention.png")
        info["attention_method"] = ("heads averaged; each cell averaged over the samples where both its query "
                                    f"and key are real (not padding); positions in < {MIN_SHARE:.0%} of the "
                                    "samples cut off. Late key positions exist only in long samples, whose "
                                    "weights spread over more keys, so they look weaker for that reason too")
    else:
        info["notes"].append("no attention map worth drawing (ModelOutput.attention is empty or single-key)")

    if res.fused is not None and len(res.fused) > 5:
        info["tsne"] = tsne_figure(res.fused, res.y, out / "tsne.png",
                                   title + ": t-SNE of the fused representation")
        info["figures"].append("tsne.png")
    else:
        info["notes"].append("no fused representation (ModelOutput.fused is None): no t-SNE")
    for stale in {"gates.png", "attention.png", "tsne.png", "gates.csv"} - set(info["figures"]) - (
            {"gates.csv"} if res.gates else set()):
        (out / stale).unlink(missing_ok=True)  # left by an earlier explain of another model in this folder
    atomic_write_json(out / "explain.json", info)
    return info
