"""Reference point for MOSI: ridge regression on frozen MiniLM sentence vectors (alpha chosen on valid).

Usage: .venv/bin/python scripts/ridge_reference.py [DATA_DIR]   (writes reports/ridge_reference.md)
"""

import sys
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import Ridge

from dynafuse.data import load_dataset
from dynafuse.data.text import backbone_path
from dynafuse.metrics import compute_metrics

bundle = load_dataset("mosi", sys.argv[1] if len(sys.argv) > 1 else None)
encoder = SentenceTransformer(backbone_path("minilm"), device="cpu")
X = {k: encoder.encode(list(s.raw_text), batch_size=64) for k, s in bundle.splits.items()}
y = {k: s.y for k, s in bundle.splits.items()}
best = min((np.abs(Ridge(alpha=a).fit(X["train"], y["train"]).predict(X["valid"]) - y["valid"]).mean(), a)
           for a in (0.1, 0.3, 1, 3, 10, 30, 100))
model = Ridge(alpha=best[1]).fit(X["train"], y["train"])
m = compute_metrics(model.predict(X["test"]), y["test"])
line = (f"Ridge on frozen MiniLM sentence vectors (MOSI official split, alpha={best[1]} chosen on valid MAE "
        f"{best[0]:.3f}), test: " + ", ".join(f"{k} {m[k]:.3f}" for k in ("mae", "corr", "acc2_has0", "acc2_non0", "acc7")))
print(line)
Path("reports").mkdir(exist_ok=True)
Path("reports/ridge_reference.md").write_text(line + "\n")
