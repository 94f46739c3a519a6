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


def test_resume_after_kill_reproduces_the_unkilled_run(data_dir, tmp_path):
    """Killed (SIGKILL) after 2 epochs and resumed, a run ends with exactly the metrics of the same run never killed:
    every random state (data order, dropout) comes back from the checkpoint. Its `metrics.csv` keeps the epochs
    logged before the kill (Lightning's CSV logger would delete them), each epoch once."""
    out = tmp_path / "run"
    args = ["train", "--model", "early_fusion", "--dataset", "mosi", "--out", str(out), "--data-dir", str(data_dir),
            "train.progress=false", "train.max_epochs=8", "train.patience=100"]
    proc = subprocess.Popen([sys.executable, "-m", "dynafuse.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and not (last.exists() and _epochs_logged(out) >= 2):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (out / "run.json").exists()
    done_before = _epochs_logged(out)
    refused = cli(*args)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    before = _clock_seconds(last)
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    unkilled = cli(*[a if a != str(out) else str(tmp_path / "unkilled") for a in args])
    assert unkilled.returncode == 0, unkilled.stderr[-2000:]
    assert 2 <= done_before < 8
    assert json.loads((out / "metrics.json").read_text()) == json.loads((tmp_path / "unkilled/metrics.json").read_text())
    info = json.loads((out / "run.json").read_text())
    assert info["stages"]["main"]["epochs"] == 8
    assert _valid_curve(out) == _valid_curve(tmp_path / "unkilled") and len(_valid_curve(out)) == 8
    # its timing counts the killed session's epochs as well as the resumed ones
    assert before > 0 and info["stages"]["main"]["seconds"] > before and info["train_seconds"] > before


def test_resume_with_other_settings_is_one_line(data_dir, tmp_path):
    """Resuming with another model size (or any setting that changes what is computed) is refused before training."""
    out = tmp_path / "run"
    base = ["train", "--model", "early_fusion", "--dataset", "mosi", "--out", str(out), "--data-dir", str(data_dir),
            "train.progress=false", "train.max_epochs=1", "data.limit=64"]
    assert cli(*base).returncode == 0
    (out / "run.json").unlink()  # as if killed before the end
    r = cli(*base, "model.d_model=128", "--resume")
    assert r.returncode == 2 and "model.d_model: 64 -> 128" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert cli(*base, "train.threads=1", "--resume").returncode == 0  # a change that computes the same is fine


def long_training(out: Path, data_dir, **popen):
    """`dynafuse train` of early fusion on MOSI for 500 epochs (~10 min: longer than any second command takes to
    start under load; the tests stop it) into `out`, started in the background: its args and process."""
    args = ["train", "--model", "early_fusion", "--dataset", "mosi", "--out", str(out), "--data-dir", str(data_dir),
            "train.progress=false", "train.max_epochs=500", "train.patience=500"]
    return args, subprocess.Popen([sys.executable, "-m", "dynafuse.cli", *args], stdout=subprocess.DEVNULL, **popen)


def test_ctrl_c_stops_with_the_projects_message_and_keeps_the_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    _, proc = long_training(out, data_dir, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300  # interrupt once an epoch's checkpoint is on disk (the metrics log can come first)
    while time.time() < deadline and not (out / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-1500:]
    assert "interrupted (resume with --resume)" in err and "Traceback" not in err
    assert not (out / "run.json").exists() and (out / "checkpoints" / "last.ckpt").exists()


def test_two_trainings_into_one_folder(data_dir, tmp_path):
    """The second training into a folder that is being trained stops at once, in one line saying who holds it."""
    out = tmp_path / "run"
    args, first = long_training(out, data_dir, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 900  # under load the first one can take minutes to import and take the lock
        while time.time() < deadline and not (out / ".lock.owner").exists() and first.poll() is None:
            time.sleep(0.1)
        assert (out / ".lock.owner").exists(), "the first training never took the lock"
        second = cli(*args, "--force")
        assert second.returncode == 2 and "another training is using this run folder" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_checkpoint_payload_never_runs(data_dir, tmp_path):
    """A checkpoint carrying a pickle payload (it would create a file when unpickled) is refused by `eval`, and
    nothing executes; with --allow-pickle the user takes responsibility."""
    run = tmp_path / "run"
    train(cfg_for("unimodal_text", data_dir, "train.max_epochs=1", "data.limit=64"), run)
    marker = tmp_path / "pwned"
    ckpt = run / "checkpoints" / "best.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state["payload"] = _Payload(str(marker))
    torch.save(state, ckpt)
    r = cli("eval", "--run", str(run))
    assert r.returncode == 2 and "refusing to load it" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


class _Payload:
    """Unpickling this runs `open(path, "w")`: the marker file proves that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_finished_is_one_fact(data_dir, tmp_path):
    """A kill between metrics.json and run.json: eval says unfinished, and --resume finishes it (no
    contradicting advice); run.json is the one fact both read."""
    run = tmp_path / "run"
    args = ["train", "--model", "unimodal_text", "--dataset", "mosi", "--out", str(run), "--data-dir", str(data_dir),
            "train.progress=false", "train.max_epochs=1", "data.limit=64"]
    assert cli(*args).returncode == 0
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "run.json").unlink()
    e = cli("eval", "--run", str(run))
    assert e.returncode == 2 and "has not finished" in e.stderr and "--resume" in e.stderr
    t = cli(*args)
    assert t.returncode == 2 and "--resume" in t.stderr and "finished already" not in t.stderr
    assert cli(*args, "--resume").returncode == 0
    assert json.loads((run / "metrics.json").read_text()) == metrics and (run / "run.json").exists()


def test_disk_full_names_the_file_being_written(tmp_path, monkeypatch):
    """ENOSPC while a result is written: one error naming that file, the old content kept, no temporary left."""
    import errno

    from dynafuse.files import atomic_write_json

    target = tmp_path / "run" / "metrics.json"
    atomic_write_json(target, {"old": 1})

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DynafuseError, match=r"metrics.json: .*No space left on device"):
        atomic_write_json(target, {"new": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1} and len(list(target.parent.iterdir())) == 1


def _clock_seconds(ckpt: Path) -> float:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]
    return next(v["seconds"] for k, v in state.items() if "FitClock" in k)


def _valid_curve(run: Path) -> list[tuple[str, str]]:
    """(epoch, valid MAE) per logged validation row of a run's metrics.csv (none before the file exists)."""
    f = run / "logs" / "main" / "metrics.csv"
    if not f.exists():
        return []
    import csv

    with open(f, newline="") as rows:
        return [(r["epoch"], r["valid/mae"]) for r in csv.DictReader(rows) if r.get("valid/mae")]


def _epochs_logged(run: Path) -> int:
    return len({epoch for epoch, _ in _valid_curve(run)})


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


def test_a_failed_training_leaves_no_empty_folders(tmp_path):
    """A run folder made only to hold the lock goes again, with the parents made for it (./runs/ when no --out was
    given), and a parent that already held something stays."""
    from dynafuse.training.rundir import RunDir

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "other.txt").write_text("x")
    for out, gone, stays in ((tmp_path / "runs/mosi/early", tmp_path / "runs", tmp_path),
                             (tmp_path / "kept/new/run", tmp_path / "kept/new", tmp_path / "kept")):
        with pytest.raises(RuntimeError):
            with RunDir(out).lock():
                raise RuntimeError("the training failed before writing anything")
        assert not gone.exists() and stays.is_dir()
    (tmp_path / "empty").mkdir()  # an --out that existed, empty: it stays, without a .lock
    with pytest.raises(RuntimeError):
        with RunDir(tmp_path / "empty").lock():
            raise RuntimeError("the training failed before writing anything")
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_a_folder_holding_other_data_is_not_trained_into(tmp_path):
    """--out pointing at a data folder (here one with simsv2/ and a CSV) is refused before anything is written."""
    from dynafuse.training.rundir import RunDir

    (tmp_path / "simsv2").mkdir()
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(DynafuseError, match=r"holds other files than a run's \(notes.csv, simsv2\)"):
        with RunDir(tmp_path).lock():
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.csv", "simsv2"]
