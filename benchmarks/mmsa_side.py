"""Run one MMSA model on one converted pickle, inside MMSA's own virtual environment.

    benchmarks/.venv-mmsa/bin/python benchmarks/mmsa_side.py MODEL DATA.pkl OUT.json WORK_DIR

MMSA 2.2.1 was written for CUDA and an older torch; on a CPU-only torch 2.13 it needs two run-time shims,
applied here before MMSA is imported, never by editing its files:
- `torch.cuda.set_device(device)` is called unconditionally by `MMSA_run` and raises on a CPU device;
- its MulT (and MMIM, TFR-Net) trainers pass `verbose=` to `ReduceLROnPlateau`, a keyword torch removed.

Measurement hooks (also at run time): the trainer's `do_train` is timed (wall and CPU), epochs are
counted from MMSA's own per-epoch "VAL-" log lines, and the test predictions are kept by wrapping MMSA's
metric function, so the driver can score them with the same metric code as ours.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

SEED = 1111  # MMSA's first default seed


def apply_cpu_shims() -> None:
    """Make MMSA run on a CPU-only torch 2.13 (see the module docstring)."""
    torch.cuda.set_device = lambda device: None

    base = torch.optim.lr_scheduler.ReduceLROnPlateau

    class ReduceLROnPlateau(base):
        def __init__(self, *args, verbose=None, **kwargs):  # `verbose` only printed LR changes
            super().__init__(*args, **kwargs)

    torch.optim.lr_scheduler.ReduceLROnPlateau = ReduceLROnPlateau


class EpochCounter(logging.Handler):
    """Counts MMSA's per-epoch "VAL-(model) ..." log lines and keeps its parameter count.

    Every trainer validates once per epoch with mode="VAL"; their training lines differ (MFM's say
    "Training mfm ...", the others "TRAIN-(...)")."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.epochs, self.params = 0, None

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("VAL-"):
            self.epochs += 1
        elif msg.startswith("The model has ") and "trainable parameters" in msg:
            self.params = int(msg.split()[3])


def install_hooks(record: dict) -> None:
    """Time `do_train` and keep the (pred, true) of MMSA's last metric call, which is the test split."""
    from MMSA.trains import ATIO
    from MMSA.utils import MetricsTop

    get_train = ATIO.getTrain

    def timed_get_train(self, args):
        trainer = get_train(self, args)
        do_train = trainer.do_train

        def timed(*a, **kw):
            t0, c0 = time.time(), time.process_time()
            out = do_train(*a, **kw)
            record["train_seconds"], record["train_cpu_seconds"] = time.time() - t0, time.process_time() - c0
            return out

        trainer.do_train = timed
        return trainer

    get_metrics = MetricsTop.getMetics

    def recording_get_metrics(self, dataset_name):
        metric = get_metrics(self, dataset_name)

        def scored(y_pred, y_true, *a, **kw):
            result = metric(y_pred, y_true, *a, **kw)
            record["last_pred"] = y_pred.detach().cpu().numpy().reshape(-1).tolist()
            record["last_true"] = y_true.detach().cpu().numpy().reshape(-1).tolist()
            record["last_metrics"] = {k: float(v) for k, v in result.items()}
            return result

        return scored

    ATIO.getTrain = timed_get_train
    MetricsTop.getMetics = recording_get_metrics


def data_shapes(pkl: Path) -> tuple[list[int], list[int]]:
    """Feature dims and sequence lengths (T, A, V) of the converted data, read from its sidecar."""
    info = json.loads(pkl.with_suffix(".json").read_text())
    order = ("text", "audio", "vision")
    return [info["dims"][m] for m in order], [info["seq_lens"][m] for m in order]


def config_overrides(model: str, dims: list[int], seq_lens: list[int]) -> tuple[dict, dict]:
    """MMSA's default MOSI hyper-parameters, with dims/lengths from the data.

    MulT's temporal convolutions use kernel 5 with no padding, which cannot run on a length-1 sequence;
    a kernel longer than its sequence is shortened to the sequence length. Returns (config, changed)."""
    from MMSA import get_config_regression

    default = get_config_regression(model, "mosi")
    config = {"feature_dims": list(dims), "seq_lens": list(seq_lens)}
    changed = {}
    for key, length in zip(("conv1d_kernel_size_l", "conv1d_kernel_size_a", "conv1d_kernel_size_v"), seq_lens):
        if key in default and default[key] > length:
            config[key] = changed[key] = length
    return config, changed


def run(model: str, pkl: Path, work: Path) -> dict:
    apply_cpu_shims()
    torch.set_num_threads(1)
    from MMSA import MMSA_run

    record: dict = {}
    install_hooks(record)
    counter = EpochCounter()
    logging.getLogger("MMSA").addHandler(counter)
    dims, seq_lens = data_shapes(pkl)
    config, changed = config_overrides(model, dims, seq_lens)
    MMSA_run(model, "mosi", config=config, seeds=[SEED], custom_feature=str(pkl), gpu_ids=[], num_workers=0,
             verbose_level=0, model_save_dir=work / "saved_models", res_save_dir=work / "results",
             log_dir=work / "logs")
    pred, true = np.asarray(record["last_pred"]), np.asarray(record["last_true"])
    return {"status": "ok", "seed": SEED, "epochs": counter.epochs, "params": counter.params,
            "train_seconds": record["train_seconds"],
            "sec_per_epoch": record["train_seconds"] / max(counter.epochs, 1),
            "cpu_sec_per_epoch": record["train_cpu_seconds"] / max(counter.epochs, 1),
            "config_changes": changed, "mmsa_test_metrics": record["last_metrics"],
            "test_pred": pred.tolist(), "test_label": true.tolist()}


def main() -> None:
    model, pkl, out, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    t0 = time.time()
    try:
        result = run(model, pkl, work)
    except Exception as e:  # the failure reason goes into the table
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    result.update(model=model, framework="MMSA 2.2.1", data=str(pkl), wall_seconds=time.time() - t0,
                  torch=torch.__version__, threads=torch.get_num_threads())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)  # atomic: a killed run leaves no half result behind
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("test_")}, indent=1))


if __name__ == "__main__":
    main()
