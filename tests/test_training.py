"""The trainer on real MOSI: determinism, selection on valid, resume after a kill, DDP, eval, the 3-class task.

Marked `slow` (real data, a few minutes in all); CI runs them with small epoch budgets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dynafuse.errors import ConfigError, DynafuseError
from dynafuse.training import build_config, evaluate_run, load_run, train

pytestmark = pytest.mark.slow
QUICK = ["train.progress=false", "train.max_epochs=3", "train.patience=3"]


def cfg_for(model, data_dir, *extra):
    return build_config(model, "mosi", [*QUICK, f"data.data_dir={data_dir}", *extra])


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dynafuse.cli", *args], capture_output=True, text=True, **kw)


def test_same_seed_same_metrics_and_eval_reproduces(data_dir, tmp_path):
    a = train(cfg_for("early_fusion", data_dir), tmp_path / "a")
    b = train(cfg_for("early_fusion", data_dir), tmp_path / "b")
    assert a == b
    assert set(a) == {"valid", "test"}
    assert {"acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc3", "acc5", "acc7", "mae", "corr", "qwk",
            "jump2", "mean_abs_jump"} <= set(a["test"])
    assert a["test"]["n"] == 686 and a["valid"]["n"] == 229
    run = tmp_path / "a"
    for f in ("config.yaml", "metrics.json", "predictions.csv", "run.json", "checkpoints/best.ckpt",
              "logs/main/metrics.csv"):
        assert (run / f).exists(), f
    assert evaluate_run(run) == a  # the saved checkpoint reproduces the numbers
    with pytest.raises(DynafuseError, match="finished already"):
        train(cfg_for("early_fusion", data_dir), run)


def test_selection_uses_valid_not_test(data_dir, tmp_path):
    """The selected epoch is the one with the best valid MAE in the log."""
    train(cfg_for("attention_fusion", data_dir, "train.max_epochs=5", "train.patience=5"), tmp_path)
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "logs/main/metrics.csv")) if r.get("valid/mae")]
    best = min(float(r["valid/mae"]) for r in rows)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["stages"]["main"]["best_score"] == pytest.approx(best, abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["valid"]["mae"] == pytest.approx(best, abs=1e-4)


def test_three_class_task(data_dir, tmp_path):
    m = train(cfg_for("late_fusion", data_dir, "model.task=3class"), tmp_path)
    assert set(m["test"]) == {"acc3", "f1_3", "n"}
    assert 30 < m["test"]["acc3"] <= 100


def test_resume_after_kill(data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "early_fusion", "--dataset", "mosi", "--out", str(out), "--data-dir", str(data_dir),
            "train.progress=false", "train.max_epochs=40", "train.patience=100"]
    proc = subprocess.Popen([sys.executable, "-m", "dynafuse.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and not (last.exists() and _epochs_logged(out) >= 2):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (out / "metrics.json").exists()
    done_before = _epochs_logged(out)
    refused = cli(*args)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    before = _clock_seconds(last)
    resumed = cli(*args[:-2], "train.max_epochs=6", "train.patience=100", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 686
    # the resumed run started from the checkpointed epoch, not from scratch
    info = json.loads((out / "run.json").read_text())
    assert info["stages"]["main"]["epochs"] == 6
    assert done_before >= 2
    # its timing counts the killed session's epochs as well as the resumed ones
    assert before > 0 and info["stages"]["main"]["seconds"] > before and info["train_seconds"] > before


def _clock_seconds(ckpt: Path) -> float:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]
    return next(v["seconds"] for k, v in state.items() if "FitClock" in k)


def _epochs_logged(run: Path) -> int:
    f = run / "logs" / "main" / "metrics.csv"
    if not f.exists():
        return 0
    import csv

    return len({r["epoch"] for r in csv.DictReader(open(f)) if r.get("valid/mae")})


def test_ddp_two_cpu_processes(data_dir, tmp_path):
    """Data parallel through Lightning: two gloo processes on a real 200-row subset."""
    out = tmp_path / "ddp"
    r = cli("train", "--model", "attention_fusion", "--dataset", "mosi", "--out", str(out), "--data-dir",
            str(data_dir), "train.progress=false", "train.max_epochs=2", "train.devices=2", "train.strategy=ddp",
            "data.limit=200", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["valid"]["n"] == 200 and m["test"]["n"] == 200
    assert "MEMBER: 2/2" in r.stderr  # the second process joined the group


def test_checkpoint_dims_mismatch_is_a_clear_error(data_dir, tmp_path):
    train(cfg_for("unimodal_text", data_dir, "train.max_epochs=1", "data.limit=64"), tmp_path)
    info = json.loads((tmp_path / "run.json").read_text())
    info["input_dims"]["text"] = 768
    (tmp_path / "run.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match=r"does not fit .*mean_text.*\[384\].*\[768\]"):
        load_run(tmp_path)
    r = cli("eval", "--run", str(tmp_path))
    assert r.returncode == 2 and "does not fit" in r.stderr and "Traceback" not in r.stderr
