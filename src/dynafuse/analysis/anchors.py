"""Published numbers to print beside ours (`shared/anchors/published_results.csv`): reference points only,
since they use other features (BERT/RoBERTa + COVAREP/Facet)."""

from __future__ import annotations

import csv
import os
from pathlib import Path


def anchors_path(data_dir: str | Path | None = None) -> Path | None:
    if os.environ.get("DYNAFUSE_ANCHORS"):
        return Path(os.environ["DYNAFUSE_ANCHORS"])
    base = data_dir or os.environ.get("DYNAFUSE_DATA")
    if base:
        p = Path(base).expanduser().resolve().parent / "anchors" / "published_results.csv"
        return p if p.exists() else None
    return None


def load_anchors(dataset: str, data_dir: str | Path | None = None) -> list[dict]:
    """Rows for `dataset` with metric columns as floats (blank = not reported -> None)."""
    p = anchors_path(data_dir)
    if p is None or not p.exists():
        return []
    rows = []
    with open(p, newline="") as f:
        for r in csv.DictReader(f):
            if r["dataset"] != dataset:
                continue
            row = {k: v for k, v in r.items() if k in ("dataset", "model", "source", "features")}
            for k, v in r.items():
                if k not in row:
                    row[k] = float(v) if v not in ("", None) else None
            rows.append(row)
    return rows
