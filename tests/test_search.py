"""Hyper-parameter search: selection on the valid split only, resumable trials, results files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

from dynafuse.errors import ConfigError, DynafuseError  # noqa: E402
from dynafuse.experiments import search  # noqa: E402


def _write(tmp_path, **over) -> Path:
    spec = {"model": "early_fusion", "dataset": "mosi", "out": str(tmp_path / "tune"), "trials": 6, "seed": 0,
            "metric": "mae", "overrides": ["train.progress=false"],
            "space": {"train.lr": {"loguniform": ["1e-4", "3e-3"]}, "model.d_model": {"choice": [16, 32, 64]},
                      "model.dropout": {"uniform": [0.0, 0.3]}, "model.layers": {"int": [1, 3]}}, **over}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _fake_trainer(trained):
    """Stands in for the training process (synthetic scores): valid and test disagree on purpose.

    valid MAE falls with the learning rate, test MAE rises with it, so the test's favourite is the valid's worst."""

    def run_cell(cell, out, data_dir, cwd=None):
        run = cell.run_dir(out)
        lr = json.loads((run / "params.json").read_text())["train.lr"]
        trained.append(run.name)
        (run / "metrics.json").write_text(json.dumps({"valid": {"mae": 1.0 - 100 * lr, "corr": 0.5},
                                                      "test": {"mae": 0.5 + 100 * lr, "corr": 0.9}}))
        (run / "run.json").write_text(json.dumps({"stages": {}}))  # written last by training: "finished"
        return cell, "", 0, 0.0

    return run_cell


def test_selection_follows_valid_never_test(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(search, "run_cell", _fake_trainer(trained))
    best = search.tune(_write(tmp_path))
    out = tmp_path / "tune"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 6 == len(trained)
    assert not any("test" in k for k in rows[0])  # no test number is even listed
    valid = {r["trial"]: float(r["valid_mae"]) for r in rows}
    test = {t: json.loads((out / t / "metrics.json").read_text())["test"]["mae"] for t in valid}
    assert best["trial"] == min(valid, key=valid.get) != min(test, key=test.get)
    saved = yaml.safe_load((out / "best.yaml").read_text())
    assert saved["selected_on"] == "valid" and saved["valid_score"] == pytest.approx(valid[best["trial"]])
    params = json.loads((out / best["trial"] / "params.json").read_text())
    assert saved["params"] == params and f"train.lr={json.dumps(params['train.lr'])}" in saved["overrides"]
    assert 1 <= params["model.layers"] <= 3 and params["model.d_model"] in (16, 32, 64)

    # a maximised metric picks the largest valid score
    monkeypatch.setattr(search, "direction", lambda m: "maximize")
    assert search.best_trial([{"trial": "a", "valid_x": 1.0}, {"trial": "b", "valid_x": 2.0}], "x")["trial"] == "b"


def test_rerun_adds_only_missing_trials_and_resumes_a_killed_one(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(search, "run_cell", _fake_trainer(trained))
    path = _write(tmp_path, trials=3)
    search.tune(path)
    assert search.tune(path)["trials_finished"] == 3 and len(trained) == 3  # nothing reruns

    # a search killed mid-trial leaves the trial RUNNING in the study and its folder without metrics.json
    optuna = search._optuna()
    study, _ = search.open_study(search.load_search(path))
    killed = study.ask(search.distributions(search.load_search(path)["space"]))
    folder = search.trial_dir(tmp_path / "tune", killed.params)
    del study
    trained.clear()
    best = search.tune(path, trials=5)
    assert trained[0] == folder.name and len(trained) == 2  # the killed trial's folder first, then one new trial
    states = [t.state for t in optuna.load_study(study_name="dynafuse",
                                                 storage=f"sqlite:///{tmp_path / 'tune/study.db'}").trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 5 and best["trials_finished"] == 5
    assert len({json.dumps(json.loads((p / "params.json").read_text()), sort_keys=True)
                for p in (tmp_path / "tune").glob("trial-*")}) == 5  # no trial proposed twice


def test_one_search_per_folder(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    (tmp_path / "tune").mkdir()
    with open(tmp_path / "tune/.lock", "w") as held:  # as if another search were running here
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DynafuseError, match="another search is running"):
            search.tune(_write(tmp_path))


def test_search_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such search file"):
        search.load_search(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="needs metric"):
        search.load_search(_write(tmp_path, metric=None))
    with pytest.raises(ConfigError, match="space.train.lr"):
        search.load_search(_write(tmp_path, space={"train.lr": {"between": [1, 2]}}))
    with pytest.raises(ConfigError, match="space.train.lr"):
        search.load_search(_write(tmp_path, space={"train.lr": {"loguniform": [0, 1]}}))
    with pytest.raises(ConfigError, match="unknown backend"):
        search.tune(_write(tmp_path), backend="grid")
    assert search.direction("mae") == "minimize" and search.direction("acc2_has0") == "maximize"
    with pytest.raises(ConfigError, match="'f1_3' is not computed in the regression task"):
        search.load_search(_write(tmp_path, metric="f1_3"))
    with pytest.raises(ConfigError, match="'mae' is not computed in the 3class task; choose one of acc3, f1_3"):
        search.load_search(_write(tmp_path, metric="mae", task="3class"))


def test_a_trial_folder_is_a_run_folder_training_accepts(tmp_path):
    """The folder a trial claims holds its params.json before training starts: the run lock must accept it."""
    from dynafuse.training.rundir import RunDir

    run = search.trial_dir(tmp_path / "tune", {"train.lr": 1e-3})
    assert (run / "params.json").exists() and RunDir(run).foreign_files() == []
    with RunDir(run).lock():
        pass


@pytest.mark.heavy  # ~2 min of real training; the fast tests cover selection and resume
def test_optuna_search_on_real_data_resumes(tmp_path, data_dir):
    path = _write(tmp_path, trials=2, overrides=["train.progress=false", "train.max_epochs=1", "data.limit=100"],
                  space={"train.lr": {"loguniform": [1e-4, 3e-3]}, "model.dropout": {"uniform": [0.0, 0.3]}})
    best = search.tune(path, data_dir=str(data_dir))
    out = tmp_path / "tune"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 2 and all(r["valid_mae"] for r in rows)
    assert (out / "study.db").exists() and yaml.safe_load((out / "best.yaml").read_text())["trial"] == best["trial"]
    stamps = {p: p.stat().st_mtime for p in out.glob("trial-*/metrics.json")}
    assert search.tune(path, data_dir=str(data_dir)) == best  # second run: nothing retrains
    assert {p: p.stat().st_mtime for p in out.glob("trial-*/metrics.json")} == stamps
