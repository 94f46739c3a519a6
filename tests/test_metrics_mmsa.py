"""MMSA's metric conventions (`*_mmsa` keys) against MMSA's own code, and against its rules worked out by hand.

The predictions are synthetic (random around real-looking labels); what is tested is the binning and rounding."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from dynafuse.metrics import compute_metrics, mmsa_metrics

MMSA_WHEEL = "mmsa==2.2.1"


def test_half_to_even_rounding_on_mosi_scale():
    """MMSA rounds with numpy (half to even): a label of 0.5 is level 0 there, level 1 in our half-up rule."""
    y = np.array([0.5, 1.5, -0.5, 2.5, -2.5, 0.0])
    p = np.array([0.6, 1.4, -0.4, 2.6, -2.4, 0.4])
    ours = compute_metrics(p, y)
    # ours (half up): levels y 1,2,0,3,-2,0 vs p 1,1,0,3,-2,0 -> 5/6; MMSA: y 0,2,-0,2,-2,0 vs p 1,1,-0,3,-2,0 -> 3/6
    assert ours["acc7"] == pytest.approx(500 / 6)
    assert ours["acc7_mmsa"] == pytest.approx(300 / 6)


def test_sims_bins_by_hand():
    """[-1, 1]: acc2 [-1, 0] vs (0, 1]; acc3 bins at +-0.1; acc5 at +-0.1 and +-0.7; MAE on clipped values."""
    y = np.array([0.0, 0.1, -0.1, 0.7, -0.8, 1.0])
    p = np.array([0.05, 0.15, -0.12, 0.69, -1.4, 1.3])
    m = mmsa_metrics(p, y, 1.0)
    # acc2: y classes 0,1,0,1,0,1; p 1,1,0,1,0,1 -> 5/6
    assert m["acc2_mmsa"] == pytest.approx(500 / 6)
    # acc3: y 1,1,0,2,0,2; p 1,2,0,2,0,2 -> 5/6
    assert m["acc3_mmsa"] == pytest.approx(500 / 6)
    # acc5: y 2,2,1,3,0,4; p 2,3,1,3,0,4 -> 5/6
    assert m["acc5_mmsa"] == pytest.approx(500 / 6)
    assert m["mae_mmsa"] == pytest.approx(np.mean(np.abs(np.clip(p, -1, 1) - y)))


@pytest.fixture(scope="module")
def mmsa_metrics_top(tmp_path_factory):
    """MMSA's published metric code, `MMSA/utils/metricsTop.py`, from its wheel on PyPI (no dependencies
    installed; the file needs only numpy and scikit-learn)."""
    folder = tmp_path_factory.mktemp("mmsa")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", MMSA_WHEEL, "-d", str(folder)],
                       check=True, timeout=180, capture_output=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"could not download {MMSA_WHEEL} from the package index: {e}")
    wheel = next(folder.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract("MMSA/utils/metricsTop.py", folder)
    spec = importlib.util.spec_from_file_location("mmsa_metrics_top", folder / "MMSA/utils/metricsTop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MetricsTop("regression")


@pytest.mark.parametrize("dataset, value_range", [("MOSI", 3.0), ("SIMS", 1.0)])
def test_mmsa_keys_equal_mmsa_code(mmsa_metrics_top, dataset, value_range):
    rng = np.random.default_rng(0)
    if value_range == 3.0:  # MOSI-like labels: averages of 3 annotators, many on .5 and .33
        y = np.round(rng.uniform(-3, 3, 500) * 6) / 6
    else:  # SIMS-like labels: multiples of 0.2
        y = np.round(rng.uniform(-1, 1, 500) * 5) / 5
    p = y + rng.normal(0, 0.4 * value_range, 500)
    p[:20] = np.round(p[:20] * 2) / 2  # predictions exactly on rounding / bin boundaries too
    ref = mmsa_metrics_top.getMetics(dataset)(torch.tensor(p, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    ours = mmsa_metrics(p.astype(np.float32), y.astype(np.float32), value_range)
    names = ({"Has0_acc_2": "acc2_has0_mmsa", "Has0_F1_score": "f1_has0_mmsa", "Non0_acc_2": "acc2_non0_mmsa",
              "Non0_F1_score": "f1_non0_mmsa", "Mult_acc_5": "acc5_mmsa", "Mult_acc_7": "acc7_mmsa",
              "MAE": "mae_mmsa", "Corr": "corr_mmsa"} if value_range == 3.0 else
             {"Mult_acc_2": "acc2_mmsa", "Mult_acc_3": "acc3_mmsa", "Mult_acc_5": "acc5_mmsa", "F1_score": "f1_mmsa",
              "MAE": "mae_mmsa", "Corr": "corr_mmsa"})
    for theirs, key in names.items():
        scale = 1.0 if theirs in ("MAE", "Corr") else 100.0  # MMSA reports fractions rounded to 4 decimals
        assert ours[key] == pytest.approx(ref[theirs] * scale, abs=1e-4 * scale * 0.51 + 1e-6), (theirs, key)
