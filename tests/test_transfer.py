"""Zero-shot cross-dataset transfer of a trained run (real data, `slow`): a tiny text+audio MOSI run scored on
MOSEI (text only), the label-range and dimension checks; and the CLI's one-line error (fast, no data)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dynafuse.errors import ConfigError
from dynafuse.experiments.transfer import transfer_run
from dynafuse.training import build_config


@pytest.fixture(scope="module")
def mosi_run(data_dir, tmp_path_factory):
    """A tiny early-fusion run on real MOSI (text + audio): 200 rows per split, one epoch."""
    from dynafuse.training import train

    run = tmp_path_factory.mktemp("mosi-run")
    cfg = build_config("early_fusion", "mosi", [f"data.data_dir={data_dir}", "data.limit=200",
                                                "train.max_epochs=1", "train.progress=false"])
    train(cfg, run)
    return run


@pytest.mark.slow
def test_mosi_to_mosei_feeds_audio_as_missing(mosi_run, data_dir):
    r = transfer_run(mosi_run, "mosei", data_dir=data_dir, limit=60)
    assert json.loads((mosi_run / "transfer-mosei.json").read_text()) == r
    assert (r["source"], r["target"], r["split"], r["n"]) == ("mosi", "mosei", "test", 60)
    assert r["missing_modalities"] == ["audio"]
    for k in ("mae", "corr", "acc2_non0", "acc7"):
        assert math.isfinite(r["metrics"][k]) and math.isfinite(r["in_domain"][k])
    assert "audio" in r["notes"]
    assert r["overlap"] == {"train": 0, "valid": 0, "test": 0}  # no MOSI clip is in MOSEI


def test_sims_test_lies_inside_simsv2_test(data_dir):
    """Why transfer counts shared clips: every CH-SIMS test clip is also a CH-SIMSv2 test clip."""
    from dynafuse.data import load_dataset
    from dynafuse.experiments.transfer import source_ids

    ids = source_ids(build_config("early_fusion", "simsv2", [f"data.data_dir={data_dir}"]))
    sims_test = load_dataset("sims", data_dir).splits["test"].ids
    assert {k: int(np.isin(sims_test, v).sum()) for k, v in ids.items()} == {"train": 0, "valid": 0, "test": 457}


@pytest.mark.slow
def test_label_range_mismatch_is_refused(mosi_run, data_dir):
    with pytest.raises(ConfigError, match=r"mosi .*\[-3, 3\].*sims .*\[-1, 1\]"):
        transfer_run(mosi_run, "sims", data_dir=data_dir, limit=20)


@pytest.mark.slow
def test_dimension_mismatch_names_the_modality(mosi_run, data_dir, tmp_path):
    """run.json says audio is 5-dim but the checkpoint holds 73: a one-line error naming the tensor and both
    shapes, before any data is read (run.json edited in a copy)."""
    run = tmp_path / "run"
    shutil.copytree(mosi_run, run)
    info = json.loads((run / "run.json").read_text())
    info["input_dims"]["audio"] = 5
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match=r"does not fit.*mean_audio.*\[73\].*\[5\]"):
        transfer_run(run, "mosi", data_dir=data_dir, limit=20)


def test_cli_wrong_run_path_is_a_one_line_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "dynafuse.cli", "transfer", str(tmp_path / "nope"), "--dataset",
                        "mosei"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("dynafuse: error:")
    assert "no such run folder" in p.stderr
