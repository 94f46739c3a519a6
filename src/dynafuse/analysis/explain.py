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

import sys
from pathlib import Path

import numpy as np

from ..errors import DynafuseError
from ..files import atomic_write_csv, atomic_write_json
from ..metrics import levels
from ..progress import track
from ..training import load_run, predict_batches
from ..training.predict import MIN_SHARE
from ..training.run import loader
from .figures import TSNE_MAX, attention_figure, gates_figure, tsne_figure

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


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


def write_gates_csv(path: Path, ids, y, pred, gates: dict[str, np.ndarray], comps: dict[str, list[str]]) -> Path:
    """One row per sample: id, label, prediction (N,) and every gate's weights, gates[name] (N, components),
    named `gate_<name>_<component>`."""
    header = ["id", "label", "prediction", *(f"gate_{n}_{c}" for n in gates for c in comps[n])]
    rows = ([ids[i], f"{y[i]:.6g}", f"{pred[i]:.6g}",
             *(f"{g[i, j]:.6f}" for g in gates.values() for j in range(g.shape[1]))] for i in range(len(ids)))
    return atomic_write_csv(path, rows, header)


def explain_run(run_dir: str | Path, out: str | Path | None = None, split: str = "test",
                data_dir: str | Path | None = None) -> dict:
    """Explain a finished run (its local checkpoint) on `split` (`data_dir`: where the data is now, as `load_run`);
    return what explain.json holds."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "explain"
    cfg, lit, bundle = load_run(run_dir, data_dir=data_dir)
    if split not in bundle.splits:
        raise DynafuseError(f"no {split!r} split in this run's data; have {sorted(bundle.splits)}", run_dir)
    model = lit.model
    batches = track(loader(bundle, split, cfg, shuffle=False), f"explain {run_dir}: {split} predictions",
                    unit="batches")
    res = predict_batches(model, batches, fused=True, attention=True)
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
        write_gates_csv(out / "gates.csv", ids, res.y, res.pred, res.gates, comps)
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
        print(f"explain {run_dir}: t-SNE of {min(len(res.fused), TSNE_MAX)} fused vectors (seconds to minutes)",
              file=sys.stderr, flush=True)
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
