"""Published numbers to print beside ours (`shared/anchors/published_results.csv`): reference points only,
since they use other features (BERT/RoBERTa + COVAREP/Facet)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data.tables import parse_floats, read_csv

TEXT_COLUMNS = ("dataset", "model", "source", "features")


def anchors_path(data_dir: str | Path | None = None) -> Path | None:
    if os.environ.get("DYNAFUSE_ANCHORS"):
        return Path(os.environ["DYNAFUSE_ANCHORS"])
    base = data_dir or os.environ.get("DYNAFUSE_DATA")
    if base:
        p = Path(base).expanduser().resolve().parent / "anchors" / "published_results.csv"
        return p if p.exists() else None
    return None


def load_anchors(dataset: str, data_dir: str | Path | None = None) -> list[dict]:
    """Rows for `dataset` with metric columns as floats (blank = not reported -> None). The file is read with
    the project's strict CSV reader (a malformed one is a DataError naming the file and line)."""
    p = anchors_path(data_dir)
    if p is None or not p.exists():
        return []
    t = read_csv(p, TEXT_COLUMNS)
    numbers = {c: parse_floats(t, c, p, blank="nan", dtype=np.float64) for c in t.columns if c not in TEXT_COLUMNS}
    rows = []
    for i, r in enumerate(t.rows):
        if r["dataset"] == dataset:
            rows.append({**{k: r[k] for k in TEXT_COLUMNS},
                         **{c: None if np.isnan(v[i]) else float(v[i]) for c, v in numbers.items()}})
    return rows
