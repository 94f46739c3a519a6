"""Every figure of `dynafuse report` and `dynafuse explain`, written atomically as PNG (matplotlib, Agg backend).

Report: per-model metrics with ± std bars, the ordinal confusion matrix, robustness curves.
Explain: gate weight distributions, mean attention maps, a t-SNE of the fused representation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_write
from .summary import label

TSNE_MAX = 2000  # t-SNE is quadratic in the samples: a fixed random subset beyond this


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write `fig` to `path` as a PNG at 110 dpi, atomically, and close it. Returns `path`."""
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


# --------------------------------------------------------------------------- explain


def gates_figure(gates: dict[str, np.ndarray], stats: dict, path: Path, title: str) -> Path:
    """Top row: a violin per component of each gate; bottom row: each component's mean weight by true level.

    gates[name] is (N, components); stats[name] is explain's `gate_stats` (components, mean_by_level)."""
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
    """One heatmap per mean attention map (Tq, Tk), query rows against key columns, up to three per row."""
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
    """A 2-D t-SNE (scikit-learn) of the fused vectors (N, D), coloured by the label y (N,); at most TSNE_MAX
    points, a seeded random subset beyond. Returns what was computed (points, perplexity, random_state, dim)."""
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
