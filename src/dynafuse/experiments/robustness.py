"""Robustness of a trained run at test time: missing modalities, feature noise, dropped tokens/frames.

The corruptions live in `dynafuse.data.corrupt` (the same missing-modality mask drives `train.modality_dropout`),
so "a modality is missing" means one thing in training and in testing.

Relative robustness follows MultiBench: the area under the metric-vs-level curve (trapezoid), divided by the
level span so it stays on the metric's own scale.
"""

from __future__ import annotations

import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from ..data.corrupt import add_noise, drop_modalities, drop_positions
from ..errors import ConfigError
from ..metrics import score_metrics
from ..progress import progress
from ..training import RunDir, load_run, predict_batches
from ..training.run import loader

LEVELS = [round(i / 10, 1) for i in range(10)]  # 0, 0.1, ..., 0.9
SHOWN = {"regression": ["mae", "corr", "acc2_non0", "acc7"], "3class": ["acc3", "f1_3"]}


def relative_robustness(levels, values) -> float:
    """Area under the curve (trapezoid) divided by the level span: on the metric's own scale."""
    levels, values = np.asarray(levels, float), np.asarray(values, float)
    span = levels[-1] - levels[0]
    area = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(levels)))
    return area / span if span else float(values[0])


# ---- evaluation of a run ------------------------------------------------------------------------------------

def parse_levels(text: str) -> list[float]:
    """`0,0.2,0.4` -> [0.0, 0.2, 0.4]."""
    try:
        return check_levels([float(v) for v in text.split(",")])
    except ValueError:
        raise ConfigError(f"--levels must be comma-separated numbers, not {text!r}") from None


def check_levels(levels) -> list[float]:
    levels = [float(v) for v in levels]
    if len(levels) < 2 or any(b <= a for a, b in zip(levels, levels[1:])) or not 0 <= levels[0] <= levels[-1] <= 1:
        raise ConfigError(f"corruption levels must be at least two increasing values in [0, 1], not {levels}")
    return levels


def _score(lit, bundle, cfg, split: str, corrupt) -> dict:
    out = predict_batches(lit.model, (corrupt(b) for b in loader(bundle, split, cfg, shuffle=False)))
    return score_metrics(out.pred, bundle.splits[split].y, lit.model.task, bundle.value_range)


def _curves(score, names: dict[str, list[str]], levels, clean: dict, make, seed: int) -> dict:
    """metric -> values over the levels, per named modality set; `make(batch, mods, level, gen)` corrupts a batch.
    Level 0 leaves the batch as it is, so it reuses the clean scores; "all" over one modality reuses its curve."""
    curves, done = {}, {}
    for name, mods in names.items():
        if tuple(mods) in done:
            curves[name] = curves[done[tuple(mods)]]
            continue
        done[tuple(mods)], rows = name, []
        for level in levels:
            if level == 0:
                rows.append(clean)
                continue
            gen = torch.Generator().manual_seed(seed)  # same draws at every level: smoother curves
            rows.append(score(lambda b, mods=mods, level=level, gen=gen: make(b, mods, level, gen)))
        curves[name] = {k: [float(r[k]) for r in rows] for k in clean if k != "n"}
    return curves


def robustness_run(run_dir: str | Path, split: str = "test", seed: int = 0, levels=None,
                   data_dir: str | Path | None = None) -> dict:
    """Evaluate a finished run under every corruption and write `RUN_DIR/robustness.json` atomically (`data_dir`:
    where the data is now, as `load_run`)."""
    run_dir, levels = Path(run_dir), check_levels(LEVELS if levels is None else levels)
    cfg, lit, bundle = load_run(run_dir, data_dir=data_dir)
    if split not in bundle.splits:
        raise ConfigError(f"the run's dataset has no {split!r} split", run_dir)
    started = time.time()
    model = lit.model
    mods = list(model.modalities)
    dropped = [s for k in range(1, len(mods)) for s in combinations(mods, k)]
    # Token ids (a fine-tuned backbone's text) have no feature scale to add noise to.
    std = {m: getattr(model, f"std_{m}").detach() for m in mods if hasattr(model, f"std_{m}")}
    noise_skipped = {m: "token ids" for m in mods if m not in std}
    noisy = {m: [m] for m in std} | ({"all": list(std)} if std else {})
    # A modality with one position per sample (an utterance vector) cannot lose tokens without going missing.
    lengths = bundle.splits[split].lengths
    droppable = [m for m in mods if int(np.max(lengths[m], initial=0)) > 1]
    drop_skipped = {m: "one position per sample" for m in mods if m not in droppable}
    thinned = {m: [m] for m in droppable} | ({"all": droppable} if droppable else {})
    n_curves = len({tuple(v) for v in noisy.values()}) + len({tuple(v) for v in thinned.values()})
    passes = 1 + len(dropped) + n_curves * sum(level != 0 for level in levels)

    with progress(f"robustness of {run_dir} on {split}", passes, "passes") as bar:
        def score(corrupt):
            result = _score(lit, bundle, cfg, split, corrupt)
            bar.advance()
            return result

        clean = score(lambda b: b)
        drop = {"+".join(sorted(s)): score(lambda b, s=s: drop_modalities(b, s)) for s in dropped}
        noise = _curves(score, noisy, levels, clean, lambda b, ms, lv, g: add_noise(b, ms, lv, std, g), seed)
        tokens = _curves(score, thinned, levels, clean, drop_positions, seed)

    rel = {f"{kind}/{name}": {k: relative_robustness(levels, v) for k, v in curve.items()}
           for kind, curves in (("noise", noise), ("token_drop", tokens)) for name, curve in curves.items()}
    result = {
        "run": str(run_dir), "model": cfg.model.name, "dataset": cfg.data.name, "split": split,
        "seed": seed, "task": model.task, "modalities": mods, "clean": clean, "drop": drop,
        "noise": {"levels": levels, "curves": noise, "skipped": noise_skipped},
        "token_drop": {"levels": levels, "curves": tokens, "skipped": drop_skipped},
        "relative_robustness": rel, "seconds": round(time.time() - started, 1),
    }
    RunDir(run_dir).write_json("robustness.json", result)
    return result


def print_robustness(result: dict) -> None:
    """One row per condition: clean, each dropped set, then the relative robustness of each curve."""
    from rich.console import Console
    from rich.table import Table

    keys = SHOWN.get(result["task"], SHOWN["regression"])
    t = Table(title=f"{result['model']} on {result['dataset']} {result['split']}: robustness (seed {result['seed']})")
    t.add_column("condition")
    for k in keys:
        t.add_column(k, justify="right")
    rows = {"clean": result["clean"], **{f"drop {k}": v for k, v in result["drop"].items()},
            **{f"RR {k}": v for k, v in result["relative_robustness"].items()}}
    for name, m in rows.items():
        t.add_row(name, *[f"{m[k]:.3f}" for k in keys])
    Console().print(t)
    for kind in ("noise", "token_drop"):
        for m, why in result[kind]["skipped"].items():
            Console().print(f"[dim]{kind} on {m} skipped: {why}[/dim]")
