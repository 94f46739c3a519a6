"""Reference points from plain ridge regression (alpha chosen on valid MAE), written to reports/ridge_reference.md:
- MOSI official split: ridge on frozen sentence vectors of each text backbone (`--backbone`), pooled two ways
  (`--pool`): `sentence`, the backbone's own sentence embedding (sentence-transformers: mean of the token states,
  L2-normalised, up to its max_seq_length); `tokens`, the plain mean of the frozen token states the models train on
  (max_len 50, from the frozen-text cache, $DYNAFUSE_CACHE). Both tokenizers lower-case, so cased text scores the same;
- mosi-bclstm: ridge on each released utterance vector alone, scored on train and test (how well it generalises).

Usage: .venv/bin/python scripts/ridge_reference.py [--backbone minilm mpnet] [--pool sentence tokens] [--data-dir D]
"""

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import Ridge

from dynafuse.data import load_dataset
from dynafuse.data.text import backbone_path
from dynafuse.errors import run_script
from dynafuse.files import atomic_write_text
from dynafuse.metrics import compute_metrics
from dynafuse.training import build_config
from dynafuse.training.run import prepare_data

ALPHAS = (0.1, 0.3, 1, 3, 10, 30, 100)
POOLS = {"sentence": "sentence vectors", "tokens": "mean-pooled token states (max_len 50)"}


def fit(X: dict, y: dict) -> tuple[Ridge, float]:
    """Ridge with the alpha of lowest valid MAE."""
    mae, alpha = min((np.abs(Ridge(alpha=a).fit(X["train"], y["train"]).predict(X["valid"]) - y["valid"]).mean(), a)
                     for a in ALPHAS)
    return Ridge(alpha=alpha).fit(X["train"], y["train"]), alpha


def sentence_vectors(backbone: str, data_dir) -> dict[str, np.ndarray]:
    """(N, H) per MOSI split: the backbone's own sentence embedding."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(backbone_path(backbone), device="cpu")
    return {k: encoder.encode(list(s.raw_text), batch_size=64) for k, s in load_dataset("mosi", data_dir).splits.items()}


def token_means(backbone: str, data_dir) -> dict[str, np.ndarray]:
    """(N, H) per MOSI split: the mean of the frozen token states (N, 50, H) training reads from the cache."""
    cfg = build_config("unimodal_text", "mosi", [f"data.text.backbone={backbone}"]
                       + ([f"data.data_dir={data_dir}"] if data_dir else []))
    return {k: np.asarray(s.features["text"], np.float32).sum(1) / s.lengths["text"][:, None]
            for k, s in prepare_data(cfg).splits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", nargs="+", default=["minilm", "mpnet"])
    ap.add_argument("--pool", nargs="+", choices=list(POOLS), default=list(POOLS))
    ap.add_argument("--data-dir")
    a = ap.parse_args()

    lines = []
    y = {k: s.y for k, s in load_dataset("mosi", a.data_dir).splits.items()}
    for backbone in a.backbone:
        for pool in a.pool:
            X = (sentence_vectors if pool == "sentence" else token_means)(backbone, a.data_dir)
            model, alpha = fit(X, y)
            m = compute_metrics(model.predict(X["test"]), y["test"])
            lines.append(f"- Ridge on frozen {backbone} {POOLS[pool]} (MOSI official split, alpha={alpha}), test: "
                         + ", ".join(f"{k} {m[k]:.3f}" for k in ("mae", "corr", "acc2_has0", "acc2_non0", "acc7")))
            print(lines[-1], flush=True)

    bclstm = load_dataset("mosi-bclstm", a.data_dir)
    y = {k: s.y for k, s in bclstm.splits.items()}
    for mod in ("audio", "vision"):
        X = {k: s.features[mod][:, 0] for k, s in bclstm.splits.items()}
        model, alpha = fit(X, y)
        corr = {k: np.corrcoef(model.predict(X[k]), y[k])[0, 1] for k in ("train", "test")}
        lines.append(f"- Ridge on the mosi-bclstm {mod} vectors alone (alpha={alpha}): "
                     f"train Corr {corr['train']:.3f}, test Corr {corr['test']:.3f}")
        print(lines[-1])
    atomic_write_text(Path("reports/ridge_reference.md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    run_script(main)
