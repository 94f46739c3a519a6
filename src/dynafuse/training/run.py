"""The one trainer: config -> data -> model -> Lightning fit (per declared stage) -> select on valid -> test once.

`build_config` composes the typed config of a model on a dataset; `train` runs it into a run folder (see
`RunDir` for what the folder holds); `load_model` / `load_run` rebuild a finished run; `evaluate` writes its
metrics and predictions through the one prediction path.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import shutil
import signal
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from ..config import compose, dump, load_run_config, stage_train, to_dict
from ..data import Bundle, SplitDataset, load_dataset
from ..data.core import MODALITIES, fill_missing
from ..data.text import attach_text, backbone_depth
from ..errors import ConfigError, DataError, DynafuseError
from ..files import atomic_write, atomic_write_csv
from ..metrics import METRIC_KEYS, ordinal_stats, score_metrics
from ..models import create_model, model_config, model_entry
from .module import LitMSA
from .predict import predict_batches
from .rundir import CONFIG, INFO, METRICS, ORDINAL, PREDICTIONS, RunDir

MONITORS = (*[k for k in METRIC_KEYS if k != "n"], "f1_3", "auto")


def build_config(model: str, dataset: str, overrides: list[str] | dict | None = None,
                 config_file: str | Path | None = None, preset: str | None = None) -> DictConfig:
    """The typed run config of `model` on `dataset`: the model family's defaults <- dataset preset <- model
    preset <- named `preset` <- `config_file` <- `overrides` (`key.path=value`). ConfigError (one line) on an
    unknown model, key, wrong type or out-of-range value, before any data is read."""
    cfg = compose(model_config(model), model, dataset, overrides, config_file, preset)
    if cfg.train.monitor not in MONITORS:
        raise ConfigError(f"train.monitor={cfg.train.monitor!r} is not a metric; choose one of {', '.join(MONITORS)}")
    return cfg


def run_config(run: RunDir) -> DictConfig:
    """A run folder's config.yaml read back through its model's schema (checked like a new config)."""
    raw = run.raw_config()
    name = (raw.get("model") or {}).get("name")
    if not name:
        raise DataError("config.yaml names no model (model.name)", run / CONFIG)
    return load_run_config(model_config(name), raw, run / CONFIG)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename, so a kill never leaves a half checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_write(path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp, storage_options))


def set_threads(cfg: DictConfig) -> int:
    """train.threads, else $DYNAFUSE_THREADS, else the cores shared by the run's processes (one per device).

    On a busy machine DYNAFUSE_THREADS=1 avoids oversubscription. Returns the thread count set."""
    t = cfg.train
    devices = t.devices if isinstance(t.devices, int) else 1
    threads = t.threads or os.environ.get("DYNAFUSE_THREADS") or (os.cpu_count() or 1) // max(devices, 1)
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def text_cache_layers(cfg: DictConfig) -> int:
    """The frozen bottom layers of a fine-tuned backbone the model lets the trainer compute once (0: none)."""
    t = cfg.data.text
    if not (t.finetune and t.frozen_cache):
        return 0
    return model_entry(cfg.model.name).cls.text_cache_layers(OmegaConf.to_object(cfg.model), backbone_depth(t.backbone))


def prepare_data(cfg: DictConfig) -> Bundle:
    """The config's dataset with its text attached (frozen token states from the cache, token ids, or the cached
    output of a fine-tuned backbone's frozen bottom layers)."""
    d = cfg.data
    options = OmegaConf.to_container(d.options)
    bundle = load_dataset(d.name, d.data_dir, d.value_range, **options)
    if d.limit:  # the first N rows of each split: quick smoke runs and tests on real data
        bundle.splits = {k: s.subset(np.arange(min(len(s), int(d.limit)))) for k, s in bundle.splits.items()}
    cache = Path(os.environ.get("DYNAFUSE_CACHE", d.cache_dir))
    return attach_text(bundle, d.text, cache, text_cache_layers(cfg))


def new_module(cfg: DictConfig, input_dims: dict[str, int], value_range: float, context: dict | None = None) -> LitMSA:
    """The LightningModule for this config: the registered model, told the label range, the text backbone and
    what else the data says (`context`: unimodal labels, stage datasets; see `MSAModel.__init__`)."""
    model = create_model(cfg.model.name, input_dims, cfg.model, value_range=value_range,
                         backbone=cfg.data.text.backbone, text_cached_layers=text_cache_layers(cfg), **(context or {}))
    return LitMSA(model, OmegaConf.to_object(cfg.train), value_range)


def stage_data(cfg: DictConfig, name: str, target: Bundle) -> tuple[Bundle, list[str]]:
    """Another dataset that one stage trains on (e.g. KuDA's external knowledge), read with this run's text settings
    and put on the target's terms: labels (and unimodal labels) rescaled to the target's range; a modality the
    target has but this dataset lacks, or provides with other dims or another feature spec, is fed as missing.
    Returns the bundle and the modalities it does provide."""
    scfg = copy.deepcopy(cfg)
    scfg.data.name, scfg.data.options = name, build_config(cfg.model.name, name).data.options
    scfg.data.value_range = None
    bundle = prepare_data(scfg)
    scale = target.value_range / bundle.value_range
    want, have = target.input_dims(), bundle.input_dims()
    provided = [m for m in want if have.get(m) == want[m]
                and bundle.feature_spec.get(m) == target.feature_spec.get(m) and target.feature_spec.get(m)]
    for split in bundle.splits.values():
        split.y = split.y * scale
        split.unimodal = {m: v * scale for m, v in split.unimodal.items()}
        for m in set(want) - set(provided):
            fill_missing(split, m, want[m])
    bundle.value_range = target.value_range
    return bundle, provided


def data_context(cfg: DictConfig, bundle: Bundle) -> tuple[dict, dict[str, Bundle]]:
    """What the model is told about the data (recorded in run.json as `model_context`), and the bundles of the
    stages its family trains on other datasets."""
    unimodal = bundle.unimodal_label_modalities()
    wanted = model_entry(cfg.model.name).cls.stage_datasets(OmegaConf.to_object(cfg.model), unimodal)
    stages = {stage: stage_data(cfg, name, bundle) for stage, name in wanted.items()}
    context = {"unimodal_labels": list(unimodal), "stage_modalities": {s: p for s, (_, p) in stages.items()}}
    return context, {s: b for s, (b, _) in stages.items()}


def build_module(cfg: DictConfig, bundle: Bundle, context: dict | None = None) -> LitMSA:
    """The module for this config and data, standardising with the data's train-split statistics."""
    lit = new_module(cfg, bundle.input_dims(), bundle.value_range, context)
    lit.model.set_feature_stats(bundle.feature_stats())
    return lit


def loader(bundle: Bundle, split: str, cfg: DictConfig, shuffle: bool) -> torch.utils.data.DataLoader:
    ds = SplitDataset(bundle.splits[split])
    return torch.utils.data.DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=shuffle,
                                       collate_fn=ds.collate, num_workers=cfg.data.num_workers)


def evaluate(lit: LitMSA, bundle: Bundle, cfg: DictConfig, run: RunDir) -> dict:
    """Score valid and test with the selected weights; write metrics.json, ordinal.json (confusion over the
    sentiment levels, qwk, jumps) and predictions.csv (with per-sample gate weights) atomically."""
    metrics, ordinal, rows = {}, {}, []
    model = lit.model
    for split in ("valid", "test"):
        s = bundle.splits[split]
        out = predict_batches(model, loader(bundle, split, cfg, shuffle=False))
        metrics[split] = score_metrics(out.pred, s.y, model.task, bundle.value_range)
        ordinal[split] = ordinal_stats(out.pred, s.y, model.task, bundle.value_range)
        names = {k: model.gate_components(k, g.shape[1]) for k, g in out.gates.items()}
        for i in range(len(s)):
            row = {"split": split, "id": s.ids[i], "label": float(s.y[i]), "prediction": float(out.pred[i])}
            for k, g in out.gates.items():
                row.update({f"gate_{k}_{n}": round(float(v), 6) for n, v in zip(names[k], g[i])})
            rows.append(row)
    atomic_write_csv(run / PREDICTIONS, rows)
    run.write_json(ORDINAL, ordinal)
    run.write_json(METRICS, metrics)
    return metrics


class RandomState(Callback):
    """Every random generator's state (torch, numpy, Python), kept in each checkpoint and restored on resume, so a
    run killed and resumed draws the same data order and dropout masks as the run that was never killed."""

    def state_dict(self) -> dict:
        # plain tensors, ints and tuples only, so the checkpoint still loads with weights_only=True
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])


class FitClock(Callback):
    """Wall seconds spent fitting, kept in every checkpoint: a resumed run's timing (s/epoch in the reports) then
    counts the sessions before the kill, not only the last one."""

    def __init__(self):
        self.before, self.started = 0.0, time.time()

    def seconds(self) -> float:
        return self.before + time.time() - self.started

    def state_dict(self) -> dict:
        return {"seconds": self.seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.before = float(state.get("seconds", 0.0))


def _trainer(cfg: DictConfig, ckpt_dir: Path, run: RunDir, lit: LitMSA,
             stage: str) -> tuple[L.Trainer, ModelCheckpoint, FitClock]:
    t = lit.train_cfg
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="valid_score", mode=lit.monitor_mode(),
                           save_top_k=1, save_last=True, enable_version_counter=False)
    clock = FitClock()
    callbacks = [ckpt, EarlyStopping("valid_score", patience=t.patience, mode=lit.monitor_mode()), clock,
                 RandomState()]
    if t.progress:
        callbacks.append(RichProgressBar())
    trainer = L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        precision=t.precision, deterministic=True, gradient_clip_val=t.grad_clip or None, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()], logger=CSVLogger(run.path, name="logs", version=stage),
        enable_progress_bar=t.progress, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=10,
    )
    return trainer, ckpt, clock


def read_checkpoint(path: Path, allow_pickle: bool = False) -> dict:
    """A checkpoint's contents, read without executing anything in it (torch's weights-only loader: tensors and
    plain values, which is all dynafuse writes). A file that holds other objects (a pickle payload) is refused
    unless `allow_pickle` (the user trusts it)."""
    if not Path(path).exists():
        raise DynafuseError("no such checkpoint", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:  # torch's weights-only unpickler met something other than plain data
        raise DynafuseError("refusing to load it: it holds objects other than weights, which would run code "
                            f"({str(e).splitlines()[-1].strip()[:120]}); dynafuse never writes such checkpoints. "
                            "Load it only if you trust it: --allow-pickle", path) from None
    except (EOFError, RuntimeError, KeyError, TypeError, ValueError, OSError) as e:
        raise DynafuseError(f"corrupt or truncated checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})",
                            path) from None


def load_weights(lit: LitMSA, path: Path, strict: bool = True, allow_pickle: bool = False) -> None:
    """Load a checkpoint's weights into `lit` (tensors only: nothing in the file is executed)."""
    try:
        state = read_checkpoint(path, allow_pickle)["state_dict"]
    except (KeyError, TypeError):
        raise DynafuseError("not a dynafuse checkpoint (no state_dict)", path) from None
    try:
        result = lit.load_state_dict(state, strict=strict)
    except RuntimeError as e:  # size mismatch: other feature dims or another model config
        detail = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(f"checkpoint does not fit this model ({detail})", path) from None
    if not strict and result.unexpected_keys:
        raise ConfigError(f"checkpoint does not fit this model: unexpected weights {result.unexpected_keys[:3]}", path)


# settings a resumed run may change: where things are and how fast they run, not what is computed
RESUMABLE_CHANGES = ("train.progress", "train.threads", "data.data_dir", "data.cache_dir", "data.num_workers")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resume(run: RunDir, cfg: DictConfig, lit: LitMSA) -> None:
    """A resumed run must be the same run: the same config as its config.yaml (but for RESUMABLE_CHANGES), and
    its last checkpoint must fit the model. Either mismatch is one ConfigError line, before training."""
    # read through the schema: a key added to dynafuse since the run started takes its default there
    saved, new = _flat(to_dict(run_config(run))), _flat(to_dict(cfg))
    changed = [k for k in sorted(set(saved) | set(new))
               if saved.get(k, "<unset>") != new.get(k, "<unset>") and k not in RESUMABLE_CHANGES]
    if changed:
        what = "; ".join(f"{k}: {saved.get(k, '<unset>')} -> {new.get(k, '<unset>')}" for k in changed[:4])
        raise ConfigError(f"--resume with settings other than this run's config.yaml ({what}): resume with the "
                          "same settings, or start over with --force", run.path)
    for last in sorted((run / "checkpoints").rglob("last.ckpt")):
        state = read_checkpoint(last).get("state_dict", {})
        want = lit.state_dict()
        bad = [k for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
        missing = [k for k in want if k not in state and not k.startswith("model.text_backbone.")]
        if bad or missing:
            detail = (f"{bad[0]} is {tuple(state[bad[0]].shape)} there, {tuple(want[bad[0]].shape)} here" if bad
                      else f"it lacks {missing[0]}")
            raise ConfigError(f"the checkpoint does not fit this config ({detail}); resume with the settings it "
                              "was trained with, or start over with --force", last)


def train(cfg: DictConfig, out_dir: str | Path, resume: bool = False, force: bool = False) -> dict:
    """Train one run into `out_dir` and return its metrics; `resume` continues a killed run.

    The run folder is locked while training: a second `train` into it stops at once with one line saying which
    process holds it. Ctrl-C stops cleanly (KeyboardInterrupt; the CLI says how to resume, exit 130)."""
    run = RunDir(out_dir)
    with run.lock():
        return _train(cfg, run, resume, force)


def _train(cfg: DictConfig, run: RunDir, resume: bool, force: bool) -> dict:
    if run.finished and not force:
        raise DynafuseError("this run has finished already (use --force to train again, or `dynafuse eval`)",
                            run.path)
    if run.started and not (resume or force):
        raise DynafuseError("an unfinished run is here: pass --resume to continue it, or --force to start over",
                            run.path)
    if force and not resume:
        run.clear_results()
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
    t = cfg.train
    L.seed_everything(t.seed, workers=True, verbose=False)
    set_threads(cfg)

    bundle = prepare_data(cfg)
    context, stage_bundles = data_context(cfg, bundle)
    lit = build_module(cfg, bundle, context)
    absent = [m for m in MODALITIES if m not in bundle.input_dims()]
    print(f"{cfg.model.name} on {cfg.data.name}: modalities {', '.join(lit.model.modalities)}"
          + (f" ({', '.join(absent)}: not in this dataset)" if absent else ""))
    for key, value in lit.model.run_info().items():  # e.g. where KuDA's knowledge comes from: the run says so
        print(f"{cfg.model.name} {key}: {json.dumps(value, ensure_ascii=False)}")
    if t.init_from:  # e.g. KuDA's saved stage-1 weights, reused with train.skip_stages=[unimodal]
        load_weights(lit, Path(t.init_from), strict=False)
    if resume and run.started and (run / CONFIG).exists():
        check_resume(run, cfg, lit)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(dump(cfg))
    train_cfg = OmegaConf.to_object(cfg.train)

    started, earlier, info = time.time(), 0.0, {"stages": {}}  # earlier: fit seconds from sessions before a kill
    stages = lit.model.stages
    for stage in stages:
        if stage in t.skip_stages:
            continue
        ckpt_dir = run.stage_dir(stage, len(stages))
        done = ckpt_dir / "done.json"
        lit.model.stage_setup(stage)
        lit.train_cfg = stage_train(train_cfg, stage)
        data = stage_bundles.get(stage, bundle)
        if done.exists():  # a finished stage of a resumed run: take its selected weights and move on
            info["stages"][stage] = run.read_json(run.relative(done))
            earlier += info["stages"][stage].get("seconds", 0.0)
            load_weights(lit, run.resolve(info["stages"][stage]["best"]))
            continue
        trainer, ckpt, clock = _trainer(cfg, ckpt_dir, run, lit, stage)
        last = ckpt_dir / "last.ckpt"
        try:
            trainer.fit(lit, loader(data, "train", cfg, True), loader(data, "valid", cfg, False),
                        ckpt_path=str(last) if resume and last.exists() else None, weights_only=True)
        except SystemExit:  # Lightning ends a Ctrl-C with sys.exit(1): say it was an interrupt instead
            if trainer.interrupted:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt from None
            raise
        if trainer.interrupted:
            raise KeyboardInterrupt
        best = Path(ckpt.best_model_path or last)
        earlier += clock.before
        info["stages"][stage] = {"best": run.relative(best), "dataset": data.name,
                                 "best_score": float(ckpt.best_model_score or float("nan")),
                                 "epochs": trainer.current_epoch, "seconds": clock.seconds()}
        if trainer.is_global_zero:
            run.write_json(run.relative(done), info["stages"][stage])
        load_weights(lit, best)  # the next stage (or the test) starts from the weights valid selected
        if not trainer.is_global_zero:
            return {}
    metrics = evaluate(lit, bundle, cfg, run)
    n_params = sum(p.numel() for p in lit.model.parameters())
    info.update(model=cfg.model.name, dataset=cfg.data.name, seed=t.seed,
                params=n_params, trainable_params=sum(p.numel() for p in lit.model.parameters() if p.requires_grad),
                train_seconds=time.time() - started + earlier, input_dims=bundle.input_dims(),
                value_range=bundle.value_range, monitor=lit.monitor_key(), notes=bundle.notes,
                feature_spec=bundle.feature_spec, modalities=lit.model.modalities, model_context=context,
                model_info=lit.model.run_info())
    run.write_json(INFO, info)  # last: its presence means "finished"
    return metrics


def load_model(run_dir: str | Path, allow_pickle: bool = False) -> tuple[DictConfig, dict, LitMSA]:
    """A finished run's config, run.json and selected model, without its data: the checkpoint carries the
    train-split feature statistics, so new inputs need nothing else. `allow_pickle`: load a checkpoint that holds
    more than plain weights (it can run code; only for files the user trusts)."""
    run = RunDir(run_dir)
    info = run.info()
    cfg = run_config(run)
    best = run.best_checkpoint()
    lit = new_module(cfg, info["input_dims"], float(info["value_range"]), info.get("model_context"))
    load_weights(lit, best, allow_pickle=allow_pickle)
    return cfg, info, lit


def load_run(run_dir: str | Path, allow_pickle: bool = False) -> tuple[DictConfig, LitMSA, Bundle]:
    """Rebuild a finished run's data and selected model, checking the data still fits the checkpoint."""
    cfg, info, lit = load_model(run_dir, allow_pickle)
    bundle = prepare_data(cfg)
    expected = info["input_dims"]
    if bundle.input_dims() != expected:
        raise ConfigError(f"data dims {bundle.input_dims()} do not match the checkpoint's {expected}",
                          RunDir(run_dir) / INFO)
    return cfg, lit, bundle


def evaluate_run(run_dir: str | Path, allow_pickle: bool = False) -> dict:
    """Re-evaluate a finished run's selected checkpoint: the same metrics.json, predictions.csv, ordinal.json."""
    cfg, lit, bundle = load_run(run_dir, allow_pickle)
    return evaluate(lit, bundle, cfg, RunDir(run_dir))

