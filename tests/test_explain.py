"""`dynafuse explain`: attention averaging on synthetic maps (fast) and a tiny real DAF run on MOSI (slow)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from dynafuse.cli import main
from dynafuse.models import create_model
from dynafuse.training import build_config, train
from dynafuse.training.predict import AttentionMean


def test_attention_mean_ignores_padding_and_grows():
    """Synthetic maps: batch 1 has 2 real keys of 3, batch 2 has 4 keys; padded keys have weight 0."""
    acc = AttentionMean()
    a = torch.tensor([[[0.5, 0.5, 0.0]], [[1.0, 0.0, 0.0]]])  # (B=2, Tq=1, Tk=3); sample 2 has one key
    acc.add(a)
    acc.add(torch.full((2, 2, 1, 4), 0.25))  # (B, heads, Tq, Tk): heads averaged
    m = acc.mean()
    assert acc.n == 4 and m.shape == (1, 4)
    # key 0: (0.5 + 1 + .25 + .25) / 4; key 1: sample 2 of batch 1 has no key 1 -> (0.5 + .25 + .25) / 3
    assert m[0, 0] == pytest.approx(0.5) and m[0, 1] == pytest.approx(1 / 3) and m[0, 3] == pytest.approx(0.25)


def test_gate_component_names():
    """Names come from the model: DPDF-LQ declares its path gate's; a modality gate follows the modality order."""
    dpdf = create_model("dpdf_lq", {"text": 8, "audio": 4}, {"d_model": 16, "heads": 4, "hidden": 16})
    assert dpdf.gate_components("path", 2) == ["global", "local"]
    early = create_model("early_fusion", {"text": 8, "audio": 4, "vision": 4}, {"d_model": 16})
    assert early.gate_components("modality", 3) == ["text", "audio", "vision"]
    assert early.gate_components("gmra", 1) == ["gmra"]


@pytest.mark.slow
def test_explain_tiny_daf_run_on_mosi(data_dir, tmp_path):
    cfg = build_config("daf", "mosi", ["train.progress=false", "train.max_epochs=1", "data.limit=200",
                                       f"data.data_dir={data_dir}"])
    run = tmp_path / "daf-s0"
    metrics = train(cfg, run)
    ordinal = json.loads((run / "ordinal.json").read_text())  # written by evaluate beside metrics.json
    assert np.sum(ordinal["test"]["confusion"]) == metrics["test"]["n"] == 200
    assert ordinal["test"]["qwk"] == pytest.approx(metrics["test"]["qwk"])

    assert main(["explain", str(run)]) == 0
    out = run / "explain"
    info = json.loads((out / "explain.json").read_text())
    assert set(info["figures"]) == {"gates.png", "tsne.png"} and info["n"] == 200
    assert any("attention" in n for n in info["notes"])  # DAF has no attention maps: a note, no empty figure
    assert not (out / "attention.png").exists()
    for f in info["figures"]:
        assert (out / f).stat().st_size > 1000
    gate = info["gates"]["modality"]
    assert gate["components"] == ["text", "audio"]
    # DAF's modality weights are a softmax: they sum to 1 per sample, hence also their means
    assert sum(s["mean"] for s in gate["stats"].values()) == pytest.approx(1, abs=1e-5)
    assert gate["row_sum"]["min"] == pytest.approx(1, abs=1e-5) and gate["row_sum"]["max"] == pytest.approx(1, abs=1e-5)
    assert sum(gate["count_by_level"].values()) == 200
    with open(out / "gates.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 200 and list(rows[0])[:3] == ["id", "label", "prediction"]
    sums = [float(r["gate_modality_text"]) + float(r["gate_modality_audio"]) for r in rows]
    assert np.allclose(sums, 1, atol=1e-5)
