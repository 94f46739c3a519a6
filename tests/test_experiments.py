"""Declared experiments: grid expansion, resumable runs (finished cells skipped), summary tables."""

from __future__ import annotations

import json

import pytest
import yaml

from dynafuse.errors import ConfigError, DynafuseError
from dynafuse.experiments.runner import Cell, expand, load_experiment, run_experiment, share_threads


def test_expand_grid_with_variants_and_tasks(tmp_path):
    spec = {"seeds": [0, 1], "overrides": ["train.progress=false"],
            "grid": [{"models": ["daf", "early_fusion"], "datasets": ["mosi"],
                      "variants": {"": [], "static": ["model.dynamic=false"]}},
                     {"models": ["unimodal_text"], "datasets": ["mosei"], "task": "3class", "seeds": [5]}]}
    cells = expand(spec)
    assert len(cells) == 2 * 2 * 2 + 1
    static = [c for c in cells if c.variant == "static"]
    assert all(c.overrides == ["train.progress=false", "model.dynamic=false"] for c in static)
    last = cells[-1]
    assert (last.task, last.seed) == ("3class", 5)
    assert str(last.run_dir(tmp_path)).endswith("mosei/unimodal_text-3class-s5")
    assert str(Cell("daf", "mmsa:/x/a.pkl", 1, variant="static").run_dir(tmp_path)).endswith("mmsa__x_a.pkl/daf-static-s1")


def test_block_overrides_apply_to_that_block_only(tmp_path):
    """A block's own overrides sit between the global ones and a variant's, and leave the run folder name alone,
    so finished cells are still found."""
    spec = {"seeds": [0], "overrides": ["train.progress=false"],
            "grid": [{"models": ["daf"], "datasets": ["mosei"]},
                     {"models": ["dpdf_lq"], "datasets": ["mosei"], "overrides": ["train.patience=4"],
                      "variants": {"": [], "wo-gate": ["model.path_gate=false"]}}]}
    daf, plain, wo_gate = expand(spec)
    assert daf.overrides == ["train.progress=false"]
    assert plain.overrides == ["train.progress=false", "train.patience=4"]
    assert wo_gate.overrides == ["train.progress=false", "train.patience=4", "model.path_gate=false"]
    assert str(plain.run_dir(tmp_path)).endswith("mosei/dpdf_lq-s0")


def test_threads_auto_shares_the_cores_between_workers(monkeypatch):
    """Only a cell that asks for train.threads=auto (its overrides, or DYNAFUSE_THREADS=auto) gets the runner's
    share (cores // workers); the others keep the default of one thread per process."""
    monkeypatch.delenv("DYNAFUSE_THREADS", raising=False)
    plain, auto, fixed = (Cell("daf", "mosi", 0, overrides=o)
                          for o in ([], ["train.threads=auto"], ["train.threads=auto", "train.threads=3"]))
    out = share_threads([plain, auto, fixed], 4)
    assert [c.overrides for c in out] == [[], ["train.threads=auto", "train.threads=4"],
                                          ["train.threads=auto", "train.threads=3"]]
    monkeypatch.setenv("DYNAFUSE_THREADS", "auto")
    assert share_threads([plain], 2)[0].overrides == ["train.threads=2"]


def test_experiment_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such experiment"):
        load_experiment(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("seeds: [0]\n")
    with pytest.raises(ConfigError, match="grid"):
        load_experiment(tmp_path / "bad.yaml")
    block = {"models": ["daf"], "datasets": ["mosi"]}
    for grid, problem in (
            # the second block would find the first one's run folder finished and never train
            ([block, {**block, "overrides": ["model.dropout=0.25"]}], r"grid\[0\] and grid\[1\] both write mosi/daf-s0"),
            ([{**block, "variants": {"": [], None: ["model.dropout=0.2"]}}], "two names for the plain model"),
            ([{**block, "variants": {"../escape": []}}], "'../escape' is not a variant name"),
            ([{**block, "variants": {"a b/c": []}}], "'a b/c' is not a variant name"),
            ([{**block, "datasets": [f"path:{tmp_path}/none"]}], "none': no such file or folder"),
            ([{**block, "seeds": 3}], r"seeds must be a list of seeds, e.g. \[0, 1, 2\]")):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"grid": grid}))
        with pytest.raises(ConfigError, match=problem):
            load_experiment(tmp_path / "bad.yaml")
    (tmp_path / "same.yaml").write_text(yaml.safe_dump({"grid": [block, {**block, "evaluate": {"robustness": True}}]}))
    load_experiment(tmp_path / "same.yaml")  # the same cell twice (other evaluations): one folder, one training


def test_report_only_with_nothing_finished_is_an_error(tmp_path):
    """`--report-only` before any cell has finished writes nothing and says so, instead of a silent exit 0."""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "runs"), "report": str(tmp_path / "rep"),
                                    "grid": [{"models": ["daf"], "datasets": ["mosi"]}]}))
    with pytest.raises(DynafuseError, match="no finished cell to report yet"):
        run_experiment(path, report_only=True)
    assert not list(tmp_path.glob("rep*"))


@pytest.mark.slow
def test_run_experiment_skips_finished_cells_and_summarises(tmp_path, data_dir):
    spec = {"out": str(tmp_path / "runs"), "seeds": [0, 1], "report": str(tmp_path / "report"),
            "overrides": ["train.progress=false", "train.max_epochs=1", "data.limit=64"],
            "grid": [{"models": ["early_fusion"], "datasets": ["mosi"], "variants": {"": [], "d32": ["model.d_model=32"]}}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert run_experiment(path, data_dir=str(data_dir), workers=2) == []
    report = json.loads((tmp_path / "report.json").read_text())
    groups = {(g["model"], g["variant"], g["n_seeds"]) for g in report["groups"]}
    assert groups == {("early_fusion", "", 2), ("early_fusion", "d32", 2)}
    assert "± " in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.html").exists() and (tmp_path / "report_figures").is_dir()
    stamp = (tmp_path / "runs/mosi/early_fusion-d32-s1/metrics.json").stat().st_mtime
    assert run_experiment(path, data_dir=str(data_dir)) == []  # everything finished: nothing reruns
    assert (tmp_path / "runs/mosi/early_fusion-d32-s1/metrics.json").stat().st_mtime == stamp


def _fake_cli(calls):
    """A stand-in for the `dynafuse` child process: records the call and writes what the real command would."""
    from pathlib import Path

    def call(args, log, cwd):
        calls.append(args)
        if args[0] == "train":
            run = Path(args[args.index("--out") + 1])
            (run / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run / "checkpoints" / "best.ckpt").write_text("weights")
            (run / "config.yaml").write_text("model: {name: early_fusion}\n")
            (run / "run.json").write_text(json.dumps({"stages": {"fit": {"best": "checkpoints/best.ckpt"}},
                                                      "input_dims": {"text": 384}}))
            (run / "metrics.json").write_text(json.dumps({"valid": {"mae": 1.0}, "test": {"mae": 1.0}}))
        elif args[0] == "robust":
            return 1 if "broken" in args[1] else (Path(args[1]) / "robustness.json").write_text("{}") and 0
        elif args[0] == "transfer":
            (Path(args[1]) / f"transfer-{args[args.index('--dataset') + 1]}.json").write_text("{}")
        return 0

    return call


def test_runner_skips_finished_work_and_runs_missing_evaluations(tmp_path, monkeypatch, capsys):
    from dynafuse.experiments import runner

    calls = []
    monkeypatch.setattr(runner, "_call", _fake_cli(calls))
    out = tmp_path / "runs"
    spec = {"out": str(out), "seeds": [0], "overrides": ["train.progress=false"],
            "grid": [{"models": ["early_fusion"], "datasets": ["mosi"], "evaluate": {"robustness": True,
                                                                                  "transfer": ["mosei"]}},
                     {"models": ["unimodal_text"], "datasets": ["mosei"], "task": "3class"}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))

    assert run_experiment(path, dry_run=True) == [] and calls == []
    listed = capsys.readouterr().out
    assert "(train, robust, transfer mosei)" in listed and "(train)" in listed

    assert run_experiment(path) == []
    assert sorted(c[0] for c in calls) == ["robust", "train", "train", "transfer"]
    train3 = next(c for c in calls if c[0] == "train" and "unimodal_text" in c)
    assert train3[train3.index("--task") + 1] == "3class" and str(out / "mosei/unimodal_text-3class-s0") in train3
    assert "train.progress=false" in train3 and "--resume" not in train3

    calls.clear()  # everything done: nothing runs
    assert run_experiment(path) == [] and calls == []

    # a new evaluation declared later runs on the finished cell, without training it again
    spec["grid"][1]["evaluate"] = {"robustness": True}
    path.write_text(yaml.safe_dump(spec))
    assert run_experiment(path) == [] and calls == [["robust", str(out / "mosei/unimodal_text-3class-s0")]]

    # a finished run whose checkpoint is not here (a fresh clone) is not retrained and not evaluated
    (out / "mosi/early_fusion-s0/robustness.json").unlink()
    (out / "mosi/early_fusion-s0/checkpoints/best.ckpt").unlink()
    calls.clear()
    capsys.readouterr()
    assert run_experiment(path) == [] and calls == []
    assert "checkpoint is not on this machine" in capsys.readouterr().out


def test_runner_reports_failed_evaluation_and_killed_run_resumes(tmp_path, monkeypatch, capsys):
    from dynafuse.experiments import runner

    calls = []
    monkeypatch.setattr(runner, "_call", _fake_cli(calls))
    out = tmp_path / "runs"
    spec = {"out": str(out), "grid": [{"models": ["early_fusion"], "datasets": ["mosi"], "seeds": [0, 1],
                                       "variants": {"broken": []}, "evaluate": {"robustness": True}}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    (out / "mosi/early_fusion-broken-s1/checkpoints").mkdir(parents=True)  # a killed run: resumed, not restarted
    failed = run_experiment(path, workers=2)
    assert [c.seed for c in failed] == [0, 1]  # the grid's order, whatever order they finished in
    assert "FAILED (robust exit 1" in capsys.readouterr().out
    resumed = next(c for c in calls if c[0] == "train" and "early_fusion-broken-s1" in c[c.index("--out") + 1])
    assert "--resume" in resumed and "variant=broken" in resumed


def test_runner_rejects_bad_backend_and_evaluate(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"grid": [{"models": ["daf"], "datasets": ["mosi"], "evaluate": {"robust": 1}}]}))
    with pytest.raises(ConfigError, match="evaluate"):
        load_experiment(path)
    path.write_text(yaml.safe_dump({"grid": [{"models": ["daf"], "datasets": ["mosi"]}]}))
    with pytest.raises(ConfigError, match="unknown backend"):
        run_experiment(path, backend="slurm")


@pytest.mark.slow
def test_ray_backend_matches_local_backend(tmp_path, data_dir):
    pytest.importorskip("ray")
    spec = {"seeds": [0], "overrides": ["train.progress=false", "train.max_epochs=1", "data.limit=100"],
            "grid": [{"models": ["early_fusion", "unimodal_text"], "datasets": ["mosi"]}]}
    metrics = {}
    for backend in ("local", "ray"):
        path = tmp_path / f"{backend}.yaml"
        path.write_text(yaml.safe_dump({**spec, "out": str(tmp_path / backend)}))
        assert run_experiment(path, data_dir=str(data_dir), workers=2, backend=backend) == []
        metrics[backend] = {m: json.loads((tmp_path / backend / "mosi" / f"{m}-s0" / "metrics.json").read_text())
                            for m in ("early_fusion", "unimodal_text")}
    assert metrics["ray"] == metrics["local"]
