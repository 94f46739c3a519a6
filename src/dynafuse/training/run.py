"""The one trainer: data -> model -> Lightning fit (per declared stage) -> select on valid -> test once.

A run folder holds `config.yaml`, `checkpoints/`, `logs/metrics.csv`, `metrics.json`
(`{"valid": {...}, "test": {...}}`), `predictions.csv` and `run.json` (timing, sizes, selection).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger

from ..analysis.summary import ordinal_stats
from ..config import dump
from ..data import Bundle, SplitDataset, load_dataset
from ..data.text import attach_text
from ..errors import ConfigError, DynafuseError
from ..models.base import gate_components
from ..io import atomic_write, atomic_write_csv, atomic_write_json, atomic_write_text
from .module import LitMSA, score_metrics


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename, so a kill never leaves a half checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_write(path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp, storage_options))


def set_threads(cfg: dict) -> None:
    """train.threads, else $DYNAFUSE_THREADS, else the cores shared by the run's processes (one per device).

    On a busy machine DYNAFUSE_THREADS=1 avoids oversubscription."""
    t = cfg["train"]
    devices = t.get("devices", 1) if isinstance(t.get("devices", 1), int) else 1
    threads = t.get("threads") or os.environ.get("DYNAFUSE_THREADS") or (os.cpu_count() or 1) // max(devices, 1)
    torch.set_num_threads(max(1, int(threads)))


def prepare_data(cfg: dict) -> Bundle:
    d = cfg["data"]
    options = dict(d.get("options") or {})
    bundle = load_dataset(d["name"], d.get("data_dir"), **options)
    if d.get("limit"):  # the first N rows of each split: quick smoke runs and tests on real data
        bundle.splits = {k: s.subset(np.arange(min(len(s), int(d["limit"])))) for k, s in bundle.splits.items()}
    cache = Path(os.environ.get("DYNAFUSE_CACHE", d.get("cache_dir", ".cache/dynafuse")))
    return attach_text(bundle, d.get("text", {}), cache)


def new_module(cfg: dict, input_dims: dict[str, int], value_range: float) -> LitMSA:
    """The LightningModule for this config; the model also learns the backbone to fine-tune and the label range."""
    model_cfg = {**cfg["model"], "backbone": cfg["data"]["text"].get("backbone"), "value_range": value_range}
    return LitMSA(cfg["model"]["name"], input_dims, model_cfg, cfg["train"], value_range)


def build_module(cfg: dict, bundle: Bundle) -> LitMSA:
    """The module for this config and data, standardising with the data's train-split statistics."""
    lit = new_module(cfg, bundle.input_dims(), bundle.value_range)
    lit.model.set_feature_stats(bundle.feature_stats())
    return lit


def loader(bundle: Bundle, split: str, cfg: dict, shuffle: bool) -> torch.utils.data.DataLoader:
    ds = SplitDataset(bundle.splits[split])
    return torch.utils.data.DataLoader(ds, batch_size=cfg["data"]["batch_size"], shuffle=shuffle,
                                       collate_fn=ds.collate, num_workers=cfg["data"].get("num_workers", 0))


@torch.inference_mode()
def predict(lit: LitMSA, dl) -> dict[str, np.ndarray]:
    """Predictions plus per-sample gate weights, in loader order."""
    lit.eval()
    preds, gates = [], {}
    for batch in dl:
        out = lit.model(batch)
        preds.append(out.pred.float().numpy())
        for name, g in out.gates.items():
            if g.dim() == 2:
                gates.setdefault(name, []).append(g.float().numpy())
    return {"pred": np.concatenate(preds), **{f"gate_{k}": np.concatenate(v) for k, v in gates.items()}}


def evaluate(lit: LitMSA, bundle: Bundle, cfg: dict, run_dir: Path) -> dict:
    """Score valid and test with the selected weights; write metrics.json, ordinal.json (confusion over the
    sentiment levels, qwk, jumps) and predictions.csv atomically."""
    metrics, ordinal, rows = {}, {}, []
    modal_names = lit.model.modalities
    for split in ("valid", "test"):
        s = bundle.splits[split]
        out = predict(lit, loader(bundle, split, cfg, shuffle=False))
        metrics[split] = score_metrics(out["pred"], s.y, lit.model.task, bundle.value_range)
        ordinal[split] = ordinal_stats(out["pred"], s.y, lit.model.task, bundle.value_range)
        for i in range(len(s)):
            row = {"split": split, "id": s.ids[i], "label": float(s.y[i]), "prediction": float(out["pred"][i])}
            for k, g in out.items():
                if k.startswith("gate_"):
                    names = gate_components(k[len("gate_"):], g.shape[1], modal_names)
                    row.update({f"{k}_{n}": round(float(v), 6) for n, v in zip(names, g[i])})
            rows.append(row)
    atomic_write_csv(run_dir / "predictions.csv", rows)
    atomic_write_json(run_dir / "ordinal.json", ordinal)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


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


def _trainer(cfg: dict, ckpt_dir: Path, run_dir: Path, lit: LitMSA,
             stage: str) -> tuple[L.Trainer, ModelCheckpoint, FitClock]:
    t = cfg["train"]
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="valid_score", mode=lit.monitor_mode(),
                           save_top_k=1, save_last=True, enable_version_counter=False)
    clock = FitClock()
    callbacks = [ckpt, EarlyStopping("valid_score", patience=t.get("patience", 8), mode=lit.monitor_mode()), clock]
    if t.get("progress", True):
        callbacks.append(RichProgressBar())
    trainer = L.Trainer(
        max_epochs=t.get("max_epochs", 40), accelerator=t.get("accelerator", "cpu"), devices=t.get("devices", 1),
        strategy=t.get("strategy", "auto"), precision=t.get("precision", "32-true"), deterministic=True,
        gradient_clip_val=t.get("grad_clip") or None, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        logger=CSVLogger(run_dir, name="logs", version=stage), enable_progress_bar=t.get("progress", True),
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=10,
    )
    return trainer, ckpt, clock


def _load_weights(lit: LitMSA, path: Path, strict: bool = True) -> None:
    if not Path(path).exists():
        raise DynafuseError("no such checkpoint", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    except (EOFError, RuntimeError, KeyError, pickle.UnpicklingError) as e:
        raise DynafuseError(f"corrupt or truncated checkpoint ({type(e).__name__}: {e})", path) from None
    try:
        result = lit.load_state_dict(state, strict=strict)
    except RuntimeError as e:  # size mismatch: other feature dims or another model config
        detail = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(f"checkpoint does not fit this model ({detail})", path) from None
    if not strict and result.unexpected_keys:
        raise ConfigError(f"checkpoint does not fit this model: unexpected weights {result.unexpected_keys[:3]}", path)


def train(cfg: dict, out_dir: str | Path, resume: bool = False, force: bool = False) -> dict:
    """Train one run into `out_dir` and return its metrics; `resume` continues a killed run."""
    run_dir = Path(out_dir)
    if (run_dir / "metrics.json").exists() and not force:
        raise DynafuseError("this run has finished already (use --force to train again, or `dynafuse eval`)", run_dir)
    if (run_dir / "checkpoints").exists() and not (resume or force):
        raise DynafuseError("an unfinished run is here: pass --resume to continue it, or --force to start over",
                            run_dir)
    if force and not resume:
        for f in ("metrics.json", "predictions.csv", "run.json"):
            (run_dir / f).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    t = cfg["train"]
    L.seed_everything(t.get("seed", 0), workers=True, verbose=False)
    set_threads(cfg)

    bundle = prepare_data(cfg)
    lit = build_module(cfg, bundle)
    if t.get("init_from"):  # e.g. KuDA's saved stage-1 weights, reused with train.skip_stages=[unimodal]
        _load_weights(lit, Path(t["init_from"]), strict=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump(cfg))
    train_dl, valid_dl = loader(bundle, "train", cfg, True), loader(bundle, "valid", cfg, False)

    started, earlier, info = time.time(), 0.0, {"stages": {}}  # earlier: fit seconds from sessions before a kill
    stages = lit.model.stages
    for stage in stages:
        if stage in (t.get("skip_stages") or []):
            continue
        ckpt_dir = run_dir / "checkpoints" / (stage if len(stages) > 1 else "")
        done = ckpt_dir / "done.json"
        lit.model.stage_setup(stage)
        if done.exists():  # a finished stage of a resumed run: take its selected weights and move on
            info["stages"][stage] = json.loads(done.read_text())
            earlier += info["stages"][stage].get("seconds", 0.0)
            _load_weights(lit, Path(info["stages"][stage]["best"]))
            continue
        trainer, ckpt, clock = _trainer(cfg, ckpt_dir, run_dir, lit, stage)
        last = ckpt_dir / "last.ckpt"
        trainer.fit(lit, train_dl, valid_dl, ckpt_path=str(last) if resume and last.exists() else None)
        best = Path(ckpt.best_model_path or last)
        earlier += clock.before
        info["stages"][stage] = {"best": str(best), "best_score": float(ckpt.best_model_score or float("nan")),
                                 "epochs": trainer.current_epoch, "seconds": clock.seconds()}
        if trainer.is_global_zero:
            atomic_write_json(done, info["stages"][stage])
        _load_weights(lit, best)  # the next stage (or the test) starts from the weights valid selected
        if not trainer.is_global_zero:
            return {}
    metrics = evaluate(lit, bundle, cfg, run_dir)
    n_params = sum(p.numel() for p in lit.model.parameters())
    info.update(model=cfg["model"]["name"], dataset=cfg["data"]["name"], seed=t.get("seed", 0),
                params=n_params, trainable_params=sum(p.numel() for p in lit.model.parameters() if p.requires_grad),
                train_seconds=time.time() - started + earlier, input_dims=bundle.input_dims(),
                value_range=bundle.value_range, monitor=lit.monitor_key(), notes=bundle.notes,
                feature_spec=bundle.feature_spec)
    atomic_write_json(run_dir / "run.json", info)
    return metrics


def read_run(run_dir: str | Path) -> tuple[dict, dict, Path]:
    """A finished run's config, run.json (input_dims as ints) and selected checkpoint (which must be on this
    machine)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise DynafuseError("not a run folder (no config.yaml)", run_dir)
    if not (run_dir / "run.json").exists():
        raise DynafuseError("the run has not finished (no run.json); resume it with --resume", run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    info = json.loads((run_dir / "run.json").read_text())
    info["input_dims"] = {k: int(v) for k, v in info["input_dims"].items()}
    best = Path(info["stages"][list(info["stages"])[-1]]["best"])
    if not best.exists():
        raise DynafuseError("checkpoint missing (checkpoints stay on the machine that trained the run)", best)
    return cfg, info, best


def load_model(run_dir: str | Path) -> tuple[dict, dict, LitMSA]:
    """A finished run's config, run.json and selected model, without its data: the checkpoint carries the
    train-split feature statistics, so new inputs need nothing else."""
    cfg, info, best = read_run(run_dir)
    lit = new_module(cfg, info["input_dims"], float(info["value_range"]))
    _load_weights(lit, best)
    return cfg, info, lit


def load_run(run_dir: str | Path) -> tuple[dict, LitMSA, Bundle]:
    """Rebuild a finished run's data and selected model, checking the data still fits the checkpoint."""
    cfg, info, lit = load_model(run_dir)
    bundle = prepare_data(cfg)
    expected = info["input_dims"]
    if bundle.input_dims() != expected:
        raise ConfigError(f"data dims {bundle.input_dims()} do not match the checkpoint's {expected}",
                          Path(run_dir) / "run.json")
    return cfg, lit, bundle


def evaluate_run(run_dir: str | Path) -> dict:
    cfg, lit, bundle = load_run(run_dir)
    return evaluate(lit, bundle, cfg, Path(run_dir))
