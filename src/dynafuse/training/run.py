"""The one trainer: config -> data -> model -> Lightning fit (per declared stage) -> select on valid -> test once.

`build_config` composes the typed config of a model on a dataset; `train` runs it into a run folder (see
`RunDir` for what the folder holds); `load_model` / `load_run` rebuild a finished run; `evaluate` writes its
metrics and predictions through the one prediction path.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import pickle
import random
import shutil
import signal
import time
import warnings
import zipfile
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
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ..config import count_or_auto, dump, stage_train, to_dict
from ..data import Bundle, SplitDataset, load_dataset
from ..data.core import MODALITIES, fill_missing
from ..data.text import attach_text, backbone_depth
from ..errors import ConfigError, DynafuseError, first_line
from ..files import atomic_write, atomic_write_csv
from ..metrics import ordinal_stats, score_metrics
from ..models import create_model, model_entry
from ..progress import Lines, on_terminal
from .module import LitMSA
from .predict import predict_batches
from .rundir import CONFIG, INFO, METRICS, ORDINAL, PREDICTIONS, RunDir
from .settings import build_config, run_config

# What a user can neither act on nor needs to read, dropped by its exact text: Lightning's advertisement, and
# torch's deprecation of a call inside Lightning's own code.
ADVERT = "💡 Tip: For seamless cloud logging"
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(lambda record: not record.getMessage().startswith(ADVERT))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename, so a kill never leaves a half checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_write(path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp, storage_options))


def local_processes(t) -> int:
    """How many training processes this machine runs for `train` settings `t`: `devices`, resolved as Lightning
    does for "auto" (every visible GPU when a GPU is used, else 1 CPU process)."""
    if isinstance(t.devices, int):
        return max(t.devices, 1)
    gpu = t.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.cuda.device_count() if gpu else 1


def choose_threads(setting=None, devices: int = 1) -> tuple[int, str]:
    """The torch CPU threads of each of a run's processes, and why: `setting` (train.threads: N or "auto"), else
    $DYNAFUSE_THREADS (N or auto), else 1.

    One thread is the default: it never oversubscribes the cores when other jobs (the experiment runner's
    --workers, another training, any torch process) share them, and it reproduces runs bit for bit (float
    reductions, and with them the epoch early stopping picks, change with the thread count). `auto` takes the
    cores free now: os.cpu_count() minus the 1-minute load average, at least 1, divided by the run's processes
    (one per device). ConfigError for anything else."""
    source = "train.threads"
    if setting is None and os.environ.get("DYNAFUSE_THREADS"):
        raw = os.environ["DYNAFUSE_THREADS"].strip()
        setting, source = (int(raw) if raw.isdigit() else raw), "$DYNAFUSE_THREADS"
    if setting is None:
        return 1, "the default: 1 per process never oversubscribes shared cores and reproduces runs exactly; " \
                  "train.threads=N or auto for more"
    count_or_auto(setting, source, "threads")
    if setting == "auto":
        cores, load = os.cpu_count() or 1, os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = max(1, int(cores - load)) // max(devices, 1)
        return max(1, n), (f"{source}=auto: {cores} cores, 1-minute load average {load:.1f}"
                           + (f", {devices} processes" if devices > 1 else ""))
    return setting, f"{source}={setting}"


def set_threads(cfg: DictConfig) -> tuple[int, str]:
    """Set torch's CPU threads for this run (see `choose_threads`); returns the count and why."""
    t = cfg.train
    n, why = choose_threads(t.threads, local_processes(t))
    torch.set_num_threads(n)
    return torch.get_num_threads(), why


def text_cache_layers(cfg: DictConfig) -> int:
    """The frozen bottom layers of a fine-tuned backbone the model lets the trainer compute once (0: none)."""
    t = cfg.data.text
    if not (t.finetune and t.frozen_cache):
        return 0
    return model_entry(cfg.model.name).cls.text_cache_layers(OmegaConf.to_object(cfg.model), backbone_depth(t.backbone))


def prepare_data(cfg: DictConfig, splits: list[str] | None = None) -> Bundle:
    """The config's dataset with its text attached (frozen token states from the cache, token ids, or the cached
    output of a fine-tuned backbone's frozen bottom layers). `splits`: keep only these (zero-shot transfer needs
    the target's test split alone, so MOSEI's 16k training transcripts are not encoded for it)."""
    d = cfg.data
    options = OmegaConf.to_container(d.options)
    bundle = load_dataset(d.name, d.data_dir, d.value_range, **options)
    if splits:
        bundle.splits = {k: s for k, s in bundle.splits.items() if k in splits}
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
    wanted = model_entry(cfg.model.name).cls.stage_datasets(OmegaConf.to_object(cfg.model), bundle.input_dims(), unimodal)
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


class KeptHistory(ExperimentWriter):
    """Lightning's CSV writer (`logs/<stage>/metrics.csv`) for a resumed run: it keeps the rows of the epochs
    0..`done_epoch` that the checkpoint has done, where Lightning's own deletes the file, and a run killed and
    resumed would keep only its last session's curve. Rows of later epochs (logged after the checkpoint, before
    the kill) are dropped: the resumed run logs them again. The kept rows are rewritten atomically."""

    def __init__(self, log_dir: str, done_epoch: int):
        self.done_epoch = done_epoch
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning calls it once, from __init__, to delete metrics.csv
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if r.get("epoch", "").isdigit() and int(r["epoch"]) <= self.done_epoch]
            keys = list(reader.fieldnames or [])
        atomic_write_csv(self.metrics_file_path, rows, keys)
        self.metrics_keys = sorted(keys)  # Lightning appends below this header, widening it if a key is new


class RunLogger(CSVLogger):
    """Lightning's CSV logger into `logs/<stage>/`; resuming from a checkpoint of epoch `done_epoch`, it keeps
    the epochs logged before the kill (`KeptHistory`)."""

    def __init__(self, save_dir: str | Path, stage: str, done_epoch: int | None = None):
        super().__init__(save_dir, name="logs", version=stage)
        self.done_epoch = done_epoch

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self.done_epoch is not None and rank_zero_only.rank == 0:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeptHistory(self.log_dir, self.done_epoch)
        return super().experiment


class Bar(RichProgressBar):
    """Lightning's rich bar (on stderr, beside the other progress), without `v_num`: our logger's version is the
    stage name, which the bar cuts to `v_num: sion`."""

    def __init__(self):
        super().__init__(console_kwargs={"stderr": True})

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class EpochLines(Callback):
    """Training progress when the output is not a terminal (nohup, CI, a log file, where a live bar shows
    nothing until it ends): one line per epoch with the train loss, the valid score (and the best so far),
    s/epoch and the time left at most (early stopping may end sooner), then one line when the stage ends."""

    def __init__(self, label: str, monitor: str, mode: str):
        self.label, self.monitor, self.mode = label, monitor, mode
        self.lines, self.best = None, None

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.lines = Lines(self.label, trainer.max_epochs, "epochs", done=trainer.current_epoch, every=0,
                               eta="ETA at most")

    def on_train_epoch_end(self, trainer, pl_module):
        if self.lines is None:
            return
        m = trainer.callback_metrics
        score = float(m["valid_score"]) if "valid_score" in m else None
        if score is not None and (self.best is None or (score < self.best if self.mode == "min" else score > self.best)):
            self.best = score
        note = [f"train loss {float(m['train/loss']):.4f}"] if "train/loss" in m else []
        if score is not None:
            note.append(f"valid {self.monitor} {score:.4f} (best {self.best:.4f})")
        self.lines.advance(1, ", ".join(note))

    def on_train_end(self, trainer, pl_module):
        if self.lines is not None:
            self.lines.print(final=True)


def _trainer(cfg: DictConfig, ckpt_dir: Path, run: RunDir, lit: LitMSA, stage: str,
             done_epoch: int | None = None) -> tuple[L.Trainer, ModelCheckpoint, FitClock]:
    t = lit.train_cfg
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="valid_score", mode=lit.monitor_mode(),
                           save_top_k=1, save_last=True, enable_version_counter=False)
    clock = FitClock()
    callbacks = [ckpt, EarlyStopping("valid_score", patience=t.patience, mode=lit.monitor_mode()), clock,
                 RandomState()]
    bar = t.progress and on_terminal()
    if bar:
        callbacks.append(Bar())
    elif t.progress:
        label = f"{cfg.model.name} on {cfg.data.name}" + (f", stage {stage}" if len(lit.model.stages) > 1 else "")
        callbacks.append(EpochLines(label, lit.monitor_key(), lit.monitor_mode()))
    trainer = L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision, deterministic=True, gradient_clip_val=t.grad_clip or None, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()], logger=RunLogger(run.path, stage, done_epoch),
        enable_progress_bar=bar, enable_model_summary=False, num_sanity_val_steps=0,
        # metrics are logged per epoch only (on_step=False): a step interval of 1 never writes a step row, and
        # it keeps Lightning from warning that an epoch has fewer batches than the interval
        log_every_n_steps=1,
    )
    return trainer, ckpt, clock


def read_checkpoint(path: Path, allow_pickle: bool = False, mmap: bool = False) -> dict:
    """A checkpoint's contents, read without executing anything in it (torch's weights-only loader: tensors and
    plain values, which is all dynafuse writes). A file that holds other objects (a pickle payload) is refused
    unless `allow_pickle` (the user trusts it). `mmap` maps the tensors instead of reading them, for a caller
    that wants only a plain value (e.g. the epoch)."""
    if not Path(path).exists():
        raise DynafuseError("no such checkpoint", path)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut or overwritten file is not one
        size = Path(path).stat().st_size
        raise DynafuseError("empty checkpoint (0 bytes)" if size == 0 else f"corrupt or truncated checkpoint ({size} "
                            "bytes that are not a torch zip archive)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle, mmap=mmap)
    except pickle.UnpicklingError as e:
        if not allow_pickle and "Weights only load failed" in str(e):  # something other than plain data in it
            raise DynafuseError("refusing to load it: it holds objects other than weights, which would run code "
                                f"({str(e).splitlines()[-1].strip()[:120]}); dynafuse never writes such "
                                "checkpoints. Load it only if you trust it: --allow-pickle", path) from None
        raise DynafuseError(f"corrupt checkpoint ({first_line(e)})", path) from None
    except (EOFError, RuntimeError, KeyError, TypeError, ValueError, OSError) as e:
        raise DynafuseError(f"corrupt or truncated checkpoint ({type(e).__name__}: {first_line(e)})", path) from None


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
    if other_rank():  # a DDP process other than rank 0 trains its share; rank 0 holds and writes the run folder
        return _train(cfg, run, resume, force, first=False)
    with run.lock():
        return _train(cfg, run, resume, force)


def other_rank() -> bool:
    """Whether this process is a data-parallel process other than the first: Lightning's DDP launcher and torchrun
    set LOCAL_RANK/RANK, a multi-node run NODE_RANK on every node but the first, SLURM SLURM_PROCID (of several
    tasks)."""
    env = os.environ
    ranks = [env.get(k) for k in ("RANK", "LOCAL_RANK", "NODE_RANK")]
    if int(env.get("SLURM_NTASKS") or 1) > 1:
        ranks.append(env.get("SLURM_PROCID"))
    return any(r and r.strip().isdigit() and int(r) > 0 for r in ranks)


def _train(cfg: DictConfig, run: RunDir, resume: bool, force: bool, first: bool = True) -> dict:
    if first and run.finished and not force:
        raise DynafuseError("this run has finished already (use --force to train again, or `dynafuse eval`)",
                            run.path)
    if first and run.started and not (resume or force):
        raise DynafuseError("an unfinished run is here: pass --resume to continue it, or --force to start over",
                            run.path)
    if first and resume and not run.started:
        print(f"--resume: no run started in {run.path}; starting a new one", flush=True)
    if first and force and not resume:
        run.clear_results()
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
    t = cfg.train
    L.seed_everything(t.seed, workers=True, verbose=False)
    threads, why = set_threads(cfg)
    print(f"torch threads: {threads} ({why})", flush=True)

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
    if first:
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
        last = ckpt_dir / "last.ckpt"
        resume_from = last if resume and last.exists() else None
        done_epoch = int(read_checkpoint(resume_from, mmap=True)["epoch"]) if resume_from else None
        trainer, ckpt, clock = _trainer(cfg, ckpt_dir, run, lit, stage, done_epoch)
        try:
            trainer.fit(lit, loader(data, "train", cfg, True), loader(data, "valid", cfg, False),
                        ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
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
                train_seconds=time.time() - started + earlier, threads=threads, threads_why=why,
                input_dims=bundle.input_dims(),
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


def load_run(run_dir: str | Path, allow_pickle: bool = False,
             data_dir: str | Path | None = None) -> tuple[DictConfig, LitMSA, Bundle]:
    """Rebuild a finished run's data and selected model, checking the data still fits the checkpoint. Sets torch's
    threads as the run's config says (`set_threads`) before any text is encoded. `data_dir`: where the data is now
    (else the run's own `data.data_dir`, $DYNAFUSE_DATA or ../shared/datasets)."""
    cfg, info, lit = load_model(run_dir, allow_pickle)
    if data_dir is not None:
        cfg.data.data_dir = str(data_dir)
    set_threads(cfg)
    bundle = prepare_data(cfg)
    expected = info["input_dims"]
    if bundle.input_dims() != expected:
        raise ConfigError(f"data dims {bundle.input_dims()} do not match the checkpoint's {expected}",
                          RunDir(run_dir) / INFO)
    return cfg, lit, bundle


def evaluate_run(run_dir: str | Path, allow_pickle: bool = False, data_dir: str | Path | None = None) -> dict:
    """Re-evaluate a finished run's selected checkpoint: the same metrics.json, predictions.csv, ordinal.json."""
    cfg, lit, bundle = load_run(run_dir, allow_pickle, data_dir)
    return evaluate(lit, bundle, cfg, RunDir(run_dir))

