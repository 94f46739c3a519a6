"""`dynafuse report` over synthetic run folders (made-up metrics, predictions and robustness/transfer files)."""

from __future__ import annotations

import base64
import csv
import json

import numpy as np
import pytest
import yaml

from dynafuse.analysis.report import to_html, write_report
from dynafuse.cli import main
from dynafuse.errors import DynafuseError
from dynafuse.metrics import compute_metrics, ordinal_stats

LEVELS = [0.0, 0.5, 1.0]


def synthetic_run(root, model, seed, variant="", noise=0.8, ordinal="json", robust=False, transfer=False,
                  backbone=None):
    """A finished run folder with synthetic labels and predictions (not real data), as the trainer writes it;
    `backbone`: the run's data.text.backbone (None: not in its config, as in runs that predate the key)."""
    d = root / "mosi" / f"{model}{'-' + variant if variant else ''}{'-' + backbone if backbone else ''}-s{seed}"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed + 10 * len(model))
    splits = {}
    for split, n in (("valid", 40), ("test", 60)):
        y = rng.uniform(-3, 3, n).round(1)
        splits[split] = (y, y + rng.normal(0, noise, n))
    data = {"name": "mosi", **({"text": {"backbone": backbone}} if backbone else {})}
    (d / "config.yaml").write_text(yaml.safe_dump({"model": {"name": model, "task": "regression"},
                                                   "data": data, "variant": variant}))
    (d / "run.json").write_text(json.dumps({"model": model, "dataset": "mosi", "seed": seed, "params": 1000,
                                            "value_range": 3.0, "stages": {"main": {"epochs": 2, "seconds": 1.0}}}))
    metrics = {s: compute_metrics(p, y) for s, (y, p) in splits.items()}
    (d / "metrics.json").write_text(json.dumps(metrics))
    if ordinal == "json":
        (d / "ordinal.json").write_text(json.dumps({s: ordinal_stats(p, y) for s, (y, p) in splits.items()}))
    elif ordinal == "predictions":
        rows = ["split,id,label,prediction"] + [f"{s},{s}_{i},{y[i]},{p[i]}" for s, (y, p) in splits.items()
                                                for i in range(len(y))]
        (d / "predictions.csv").write_text("\n".join(rows) + "\n")
    if robust:
        clean = metrics["test"]
        curve = {"mae": [clean["mae"] + lv * (1 + seed) for lv in LEVELS],
                 "corr": [clean["corr"] - lv / 4 for lv in LEVELS]}
        (d / "robustness.json").write_text(json.dumps({
            "run": str(d), "model": model, "dataset": "mosi", "split": "test", "seed": 0, "task": "regression",
            "clean": clean, "drop": {"audio": {**clean, "mae": clean["mae"] + 0.1}, "text": {**clean, "mae": 1.4}},
            "noise": {"levels": LEVELS, "curves": {"text": curve, "all": curve}, "skipped": {}},
            "token_drop": {"levels": LEVELS, "curves": {"text": curve}, "skipped": {}},
            "relative_robustness": {"noise/text": {"mae": 1.0 + seed, "corr": 0.5},
                                    "noise/all": {"mae": 1.2, "corr": 0.4},
                                    "token_drop/text": {"mae": 1.1, "corr": 0.45}}}))
    if transfer:
        (d / "transfer-mosei.json").write_text(json.dumps({
            "run": str(d), "model": model, "source": "mosi", "target": "mosei", "split": "test",
            "metrics": {**metrics["test"], "mae": 1.0 + seed / 10}, "in_domain": metrics["test"], "n": 60,
            "missing_modalities": ["audio"], "notes": "synthetic transfer note"}))
    return d


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for s in range(3):
        synthetic_run(root, "daf", s, noise=0.6, robust=True, transfer=True)
        synthetic_run(root, "daf", s, variant="static", noise=0.9, ordinal="predictions")
        synthetic_run(root, "early_fusion", s, noise=1.0, ordinal="none" if s == 0 else "json")
    return root


def test_report_writes_every_output(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAFUSE_ANCHORS", str(tmp_path / "no-anchors.csv"))
    before = sorted(p for p in runs.rglob("*"))
    md = write_report([runs], tmp_path / "rep" / "synthetic")
    assert sorted(p for p in runs.rglob("*")) == before  # nothing written into the run folders
    out = tmp_path / "rep"
    for f in ("synthetic.md", "synthetic.html", "synthetic.csv", "synthetic_summary.csv", "synthetic.json"):
        assert (out / f).stat().st_size > 0, f
    figs = sorted(p.name for p in (out / "synthetic_figures").iterdir())
    assert figs == ["mosi-regression-confusion.png", "mosi-regression-metrics.png", "mosi-regression-robustness.png"]
    assert (out / "synthetic.md").read_text() == md

    # main table: mean ± std per model, the ablation as `model [variant]`
    assert "| daf [static] | 3 |" in md and "| early_fusion | 3 |" in md and " ± " in md
    # the overview (also its own file, for the README): one row per model, variants left out, seeds counted
    overview = (out / "synthetic_overview.md").read_text()
    assert overview in md and "static" not in overview and "| model | mosi mae / corr |" in overview
    daf_mae = np.mean([json.loads((runs / "mosi" / f"daf-s{i}" / "metrics.json").read_text())["test"]["mae"]
                       for i in range(3)])
    assert f"| daf | {daf_mae:.3f} ± " in overview and " (3) |" in overview
    assert "published" not in md  # no anchors file: no published section
    # ordinal: from ordinal.json, from predictions.csv, and skipped for the run with neither
    assert "Best model by mean mae: **daf**" in md
    report = json.loads((out / "synthetic.json").read_text())
    table = report["extras"]["ordinal"]["mosi/regression"]["table"]
    assert set(table) == {"daf", "daf [static]", "early_fusion"}
    assert sum(map(sum, report["extras"]["ordinal"]["mosi/regression"]["confusion"])) == 3 * 60
    # robustness and transfer: mean ± std over the three seeds
    assert "| daf | 3 | 2.000 ± 1.000 | 1.200 ± 0.000 | 1.100 ± 0.000 |" in md
    assert "drop audio" in md and "mosi → mosei" in md and "synthetic transfer note" in md
    rr = report["extras"]["robustness"]["mosi/regression"]["relative_robustness"]["daf"]["noise/text"]["mae"]
    assert rr == pytest.approx({"mean": 2.0, "std": 1.0, "n": 3})
    assert report["extras"]["transfer"][0]["zero_shot"]["mae"]["mean"] == pytest.approx(1.1)

    html = (out / "synthetic.html").read_text()
    assert html.count("<table>") == md.count("\n|---|") and "data:image/png;base64," in html

    with open(out / "synthetic.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {"dataset", "model", "variant", "task", "seed", "mae", "corr", "qwk"} <= set(rows[0])
    with open(out / "synthetic_summary.csv") as f:
        agg = {r["model"] + r["variant"]: r for r in csv.DictReader(f)}
    maes = [float(r["mae"]) for r in rows if r["model"] == "daf" and not r["variant"]]
    assert float(agg["daf"]["mae_mean"]) == pytest.approx(np.mean(maes))
    assert float(agg["daf"]["mae_std"]) == pytest.approx(np.std(maes, ddof=1))


def test_report_names_the_text_backbone_when_runs_differ(runs, tmp_path, monkeypatch):
    """Synthetic runs of one model with two text backbones: they are two groups (never averaged together); the
    tables get a `backbone` column, the other sections `model (mpnet)`; a MiniLM-only report has no such column."""
    monkeypatch.setenv("DYNAFUSE_ANCHORS", str(tmp_path / "no-anchors.csv"))
    md_minilm = write_report([runs], tmp_path / "rep" / "one")
    assert "backbone" not in md_minilm and "minilm" not in md_minilm
    for s in range(2):
        synthetic_run(runs, "daf", s, noise=0.3, backbone="mpnet", robust=True)
        synthetic_run(runs, "daf", s, variant="static", noise=0.3, backbone="mpnet")
    md = write_report([runs], tmp_path / "rep" / "both")
    overview = (tmp_path / "rep" / "both_overview.md").read_text()
    assert "| model | backbone | mosi mae / corr |" in overview
    assert "| daf | minilm |" in overview and "| daf | mpnet |" in overview and "(2) |" in overview
    assert "| early_fusion | minilm |" in overview and "static" not in overview
    # per-dataset table: the backbone column, and daf's minilm and mpnet seeds kept apart (3 and 2)
    assert "| model | backbone | seeds |" in md
    assert "| daf | minilm | 3 |" in md and "| daf | mpnet | 2 |" in md and "| daf [static] | mpnet | 2 |" in md
    report = json.loads((tmp_path / "rep" / "both.json").read_text())
    assert {(g["model"], g["variant"], g["text_backbone"], g["n_seeds"]) for g in report["groups"]} == {
        ("daf", "", "minilm", 3), ("daf", "static", "minilm", 3), ("daf", "", "mpnet", 2),
        ("daf", "static", "mpnet", 2), ("early_fusion", "", "minilm", 3)}
    # sections keyed by row names: the mpnet rows are named apart
    assert set(report["extras"]["ordinal"]["mosi/regression"]["table"]) == {
        "daf", "daf [static]", "daf (mpnet)", "daf (mpnet) [static]", "early_fusion"}
    assert "Best model by mean mae: **daf (mpnet)**" in md
    assert set(report["extras"]["robustness"]["mosi/regression"]["relative_robustness"]) == {"daf", "daf (mpnet)"}
    with open(tmp_path / "rep" / "both_summary.csv") as f:
        agg = list(csv.DictReader(f))
    assert {(r["model"], r["variant"], r["backbone"]) for r in agg} >= {("daf", "", "mpnet"), ("daf", "", "minilm")}
    with open(tmp_path / "rep" / "one_summary.csv") as f:
        assert "backbone" not in next(csv.reader(f))


def test_report_shows_published_rows_beside_ours(runs, tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("DYNAFUSE_ANCHORS", raising=False)
    md = write_report([runs], tmp_path / "rep" / "with_anchors", data_dir=data_dir)
    assert "published — different features (BERT + COVAREP/Facet), not like-for-like" in md
    assert "| MulT | DPDF-LQ Table 1 (from M-SENA) |" in md
    report = json.loads((tmp_path / "rep" / "with_anchors.json").read_text())
    assert any(r["model"] == "DPDF-LQ" for r in report["anchors"]["mosi"])


def test_explain_figures_are_linked(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAFUSE_ANCHORS", str(tmp_path / "no-anchors.csv"))
    ex = runs / "mosi" / "daf-s0" / "explain"
    ex.mkdir()
    (ex / "gates.png").write_bytes(b"synthetic")
    md = write_report([runs], tmp_path / "rep" / "r")
    assert "[gates.png](../runs/mosi/daf-s0/explain/gates.png)" in md
    html = (tmp_path / "rep" / "r.html").read_text()
    assert '<a href="../runs/mosi/daf-s0/explain/gates.png">gates.png</a>' in html


def test_html_page_escapes_text_and_embeds_figures(tmp_path):
    """The template escapes every text (autoescape), keeps Markdown **bold** and inlines the PNG bytes."""
    png = b"\x89PNG synthetic bytes"
    (tmp_path / "f.png").write_bytes(png)
    blocks = [("h", 2, "a <script>"), ("p", "**best** & <i>"), ("table", ["model <x>"], [["a&b", "1 ± 2"]]),
              ("img", "f.png", 'caption "quoted"'), ("links", "run <1>:", [("x/a.png", "a.png"), ("x/b.png", "b")])]
    page = to_html(blocks, tmp_path, "title & co")
    assert page.startswith("<!DOCTYPE html>") and "<title>title &amp; co</title>" in page and "<style>" in page
    assert "<h2>a &lt;script&gt;</h2>" in page and "<p><b>best</b> &amp; &lt;i&gt;</p>" in page
    assert "<th>model &lt;x&gt;</th>" in page and "<td>a&amp;b</td><td>1 ± 2</td>" in page
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert 'alt="caption &#34;quoted&#34;"' in page
    assert '<p>run &lt;1&gt;: <a href="x/a.png">a.png</a>, <a href="x/b.png">b</a></p>' in page


def test_missing_or_empty_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(DynafuseError, match="no such run folder"):
        write_report([tmp_path / "nope"], tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DynafuseError, match="no finished runs"):
        write_report([tmp_path / "empty"], tmp_path / "r")
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynafuse: error:") and "nope" in err and "Traceback" not in err


def test_malformed_robustness_file_names_the_file(runs, tmp_path, capsys):
    """A damaged extra file is left out with one warning line naming it; the report is still written."""
    bad = runs / "mosi" / "daf-s1" / "robustness.json"
    bad.write_text("{truncated")
    write_report([runs], tmp_path / "r")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: not valid JSON" in err[0] and "left out" in err[0], err
    assert (tmp_path / "r.md").exists()


def test_cli_report(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DYNAFUSE_ANCHORS", str(tmp_path / "no-anchors.csv"))
    assert main(["report", str(runs / "mosi"), "--out", str(tmp_path / "cli" / "r"), "--split", "valid"]) == 0
    assert "valid split" in (tmp_path / "cli" / "r.md").read_text()
