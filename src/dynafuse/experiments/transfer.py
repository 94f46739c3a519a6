"""Zero-shot cross-dataset transfer: score a trained run on another dataset's test split, without training.

The target is read with the run's own text config (backbone, max_len, token ids or frozen states), so text
features match what the model was trained on; its feature standardisation stays the source's (it lives in the
checkpoint). A modality the model uses but the target lacks is fed as missing (zeros, all-false mask).
Clips the two datasets share are counted by id (`overlap`), and the unshared ones are scored separately.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from ..data import load_dataset
from ..data.core import fill_missing
from ..errors import ConfigError, DynafuseError
from ..metrics import score_metrics
from ..progress import track
from ..training import RunDir, build_config, load_model, predict_batches, prepare_data
from ..training.run import loader, set_threads

SPLIT = "test"


def target_config(cfg: DictConfig, target: str, data_dir=None, limit: int | None = None,
                  allow_pickle: bool = False) -> DictConfig:
    """The run's config pointed at `target`: the target preset's reader options (plus `allow_pickle`: the user
    trusts the target's pickle), the run's text config."""
    out = copy.deepcopy(cfg)
    preset = build_config(cfg.model.name, target).data
    out.data.name, out.data.options, out.data.value_range = target, preset.options, None
    out.data.options.allow_pickle = bool(allow_pickle)
    if data_dir:
        out.data.data_dir = str(data_dir)
    if limit:
        out.data.limit = int(limit)
    return out


def source_ids(cfg: DictConfig, data_dir=None) -> dict[str, np.ndarray] | str:
    """The source dataset's clip ids per split (labels only, no text encoding), or why they cannot be read."""
    try:
        src = load_dataset(cfg.data.name, data_dir or cfg.data.data_dir, cfg.data.value_range,
                           **dict(cfg.data.options))
    except DynafuseError as e:
        return f"not checked ({e})"
    return {k: s.ids for k, s in src.splits.items()}


def _range(value_range: float) -> str:
    return f"[{-value_range:g}, {value_range:g}]"


def transfer_run(run_dir: str | Path, target: str, data_dir=None, limit: int | None = None,
                 allow_pickle: bool = False) -> dict:
    """Score the run's selected model on `target`'s test split; write `RUN_DIR/transfer-<target>.json`.
    `allow_pickle`: the target is a pickle the user trusts (`--allow-pickle`)."""
    run = RunDir(run_dir)
    run_dir = run.path
    cfg, info, lit = load_model(run_dir)
    source = cfg.data.name
    tcfg = target_config(cfg, target, data_dir, limit, allow_pickle)
    set_threads(tcfg)
    bundle = prepare_data(tcfg, splits=[SPLIT])
    if float(bundle.value_range) != float(info["value_range"]):
        raise ConfigError(f"label ranges differ: {source} is {_range(info['value_range'])} but {target} is "
                          f"{_range(bundle.value_range)}; zero-shot transfer needs the same scale", run_dir)
    if SPLIT not in bundle.splits:
        raise ConfigError(f"dataset {target} has no {SPLIT} split", bundle.source)
    # the model is built from the checkpoint's dims; its own train-split statistics come with the weights
    dims = info["input_dims"]
    split, have, missing = bundle.splits[SPLIT], bundle.input_dims(), []
    for m in lit.model.modalities:
        if m not in have:
            fill_missing(split, m, dims[m])
            missing.append(m)
        elif have[m] != dims[m]:
            raise ConfigError(f"modality {m!r} has dim {have[m]} in {target} but {dims[m]} in the checkpoint "
                              f"trained on {source}", run_dir / "run.json")
    batches = track(loader(bundle, SPLIT, tcfg, shuffle=False), f"transfer {run_dir}: {target} {SPLIT}",
                    unit="batches")
    pred = predict_batches(lit.model, batches).pred
    metrics = score_metrics(pred, split.y, lit.model.task, bundle.value_range)
    in_domain = run.metrics().get(SPLIT, {})
    notes = [f"zero-shot: trained on {source}, scored on {target} {SPLIT} without training"]
    notes += [f"{m} is absent in {target}: fed as missing (all-false mask)" for m in missing]
    if limit:
        notes.append(f"first {limit} rows of each split only (data.limit)")
    result = {"run": str(run_dir), "model": cfg.model.name, "source": source, "target": target,
              "split": SPLIT, "metrics": metrics, "in_domain": in_domain, "n": len(split),
              "missing_modalities": missing}

    # Datasets can share clips (SIMS test lies inside SIMSv2 test): count them per source split, and score
    # the target clips the source never held on their own.
    ids = source_ids(cfg, data_dir)
    if isinstance(ids, str):
        result["overlap"] = ids
    else:
        seen = {k: np.isin(split.ids, v) for k, v in ids.items()}
        result["overlap"] = {k: int(v.sum()) for k, v in seen.items()}
        unseen = ~np.any(list(seen.values()), axis=0)
        if not unseen.all():
            where = ", ".join(f"{k}: {v}" for k, v in result["overlap"].items())
            notes.append(f"{int((~unseen).sum())} of the {len(split)} {target} {SPLIT} clips are also in {source} "
                         f"({where}); " + (f"metrics_unseen scores the other {int(unseen.sum())}" if unseen.any()
                                           else f"none is new to {source}"))
            if sum(v for k, v in result["overlap"].items() if k != SPLIT):
                notes.append(f"WARNING: some {target} {SPLIT} clips were in {source}'s train/valid: not held out")
            result["metrics_unseen"] = (score_metrics(pred[unseen], split.y[unseen], lit.model.task,
                                                      bundle.value_range) if unseen.sum() > 1 else {})
    result["notes"] = "; ".join(notes + list(bundle.notes))
    run.write_json(run.transfer_file(target).name, result)
    return result
