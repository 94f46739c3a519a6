"""Declared experiments: grid expansion, resumable runs (finished cells skipped), summary tables."""

from __future__ import annotations

import json

import pytest
import yaml

from dynafuse.errors import ConfigError
from dynafuse.experiments.runner import Cell, expand, load_experiment, run_experiment


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


def test_experiment_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such experiment"):
        load_experiment(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("seeds: [0]\n")
    with pytest.raises(ConfigError, match="grid"):
        load_experiment(tmp_path / "bad.yaml")


@pytest.mark.slow
def test_run_experiment_skips_finished_cells_and_summarises(tmp_path, data_dir):
    spec = {"out": str(tmp_path / "runs"), "seeds": [0, 1], "report": str(tmp_path / "report"),
            "overrides": ["train.progress=false", "train.max_epochs=1", "data.limit=64"],
            "grid": [{"models": ["early_fusion"], "datasets": ["mosi"], "variants": {"": [], "d32": ["model.d_model=32"]}}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert run_experiment(path, data_dir=str(data_dir), workers=2) == []
    report = json.loads((tmp_path / "report.json").read_text())
    assert {(g["model"], g["variant"], g["n_seeds"]) for g in report} == {("early_fusion", "", 2), ("early_fusion", "d32", 2)}
    assert "± " in (tmp_path / "report.md").read_text()
    stamp = (tmp_path / "runs/mosi/early_fusion-d32-s1/metrics.json").stat().st_mtime
    assert run_experiment(path, data_dir=str(data_dir)) == []  # everything finished: nothing reruns
    assert (tmp_path / "runs/mosi/early_fusion-d32-s1/metrics.json").stat().st_mtime == stamp


@pytest.mark.slow
def test_train_cost_side_by_side(data_dir):
    from dynafuse.analysis.cost import cost_table, train_cost

    rows = train_cost(["early_fusion", "daf"], "mosi", steps=2, warmup=1, data_dir=str(data_dir))
    assert [r["model"] for r in rows] == ["early_fusion", "daf"]
    assert all(r["params"] >= r["trainable"] > 0 and r["sec_per_epoch"] > 0 for r in rows)
    assert rows[0]["vs_early_fusion"] == 1.0
    assert "| daf |" in cost_table(rows)
