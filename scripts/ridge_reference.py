"""Reference points from plain ridge regression (alpha chosen on valid MAE), written to reports/ridge_reference.md:
- MOSI official split: ridge on frozen MiniLM sentence vectors;
- mosi-bclstm: ridge on each released utterance vector alone, scored on train and test (how well it generalises).

Usage: .venv/bin/python scripts/ridge_reference.py [DATA_DIR]
"""

import sys
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import Ridge

from dynafuse.data import load_dataset
from dynafuse.data.text import backbone_path
from dynafuse.metrics import compute_metrics

data_dir = sys.argv[1] if len(sys.argv) > 1 else None
ALPHAS = (0.1, 0.3, 1, 3, 10, 30, 100)


def fit(X: dict, y: dict) -> tuple[Ridge, float]:
    """Ridge with the alpha of lowest valid MAE."""
    mae, alpha = min((np.abs(Ridge(alpha=a).fit(X["train"], y["train"]).predict(X["valid"]) - y["valid"]).mean(), a)
                     for a in ALPHAS)
    return Ridge(alpha=alpha).fit(X["train"], y["train"]), alpha


lines = []
mosi = load_dataset("mosi", data_dir)
encoder = SentenceTransformer(backbone_path("minilm"), device="cpu")
X = {k: encoder.encode(list(s.raw_text), batch_size=64) for k, s in mosi.splits.items()}
y = {k: s.y for k, s in mosi.splits.items()}
model, alpha = fit(X, y)
m = compute_metrics(model.predict(X["test"]), y["test"])
lines.append(f"- Ridge on frozen MiniLM sentence vectors (MOSI official split, alpha={alpha}), test: "
             + ", ".join(f"{k} {m[k]:.3f}" for k in ("mae", "corr", "acc2_has0", "acc2_non0", "acc7")))

bclstm = load_dataset("mosi-bclstm", data_dir)
y = {k: s.y for k, s in bclstm.splits.items()}
for mod in ("audio", "vision"):
    X = {k: s.features[mod][:, 0] for k, s in bclstm.splits.items()}
    model, alpha = fit(X, y)
    corr = {k: np.corrcoef(model.predict(X[k]), y[k])[0, 1] for k in ("train", "test")}
    lines.append(f"- Ridge on the mosi-bclstm {mod} vectors alone (alpha={alpha}): "
                 f"train Corr {corr['train']:.3f}, test Corr {corr['test']:.3f}")

print("\n".join(lines))
Path("reports").mkdir(exist_ok=True)
Path("reports/ridge_reference.md").write_text("\n".join(lines) + "\n")
