"""Safe readers for the plain formats: MMSA-style `label.csv` and `.npz` feature files (no pickle)."""

from __future__ import annotations

import csv
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

LABEL_COLUMNS = ("video_id", "clip_id", "label", "mode")
UNI_COLUMNS = {"text": "label_T", "audio": "label_A", "vision": "label_V"}  # unimodal labels (CH-SIMS)
SPLITS = ("train", "valid", "test")


def existing(path: str | Path, what: str = "file") -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"no such {what}", p)
    return p


def label_range(labels, given: float | None, path: Path, setting: str) -> float:
    """The label scale: `given`, else 1.0 when every finite |label| <= 1 (CH-SIMS), else 3.0 (MOSI/MOSEI);
    labels outside it are an error that names `setting`, the option to change it."""
    peak = max((float(np.nanmax(np.abs(y))) for y in labels if np.isfinite(y).any()), default=0.0)
    value_range = given if given is not None else (1.0 if peak <= 1.0 else 3.0)
    if peak > value_range:
        raise DataError(f"labels reach {peak:g}, outside [-{value_range:g}, {value_range:g}] (set {setting})", path)
    return float(value_range)


def read_label_csv(path: str | Path, text_column: str = "text",
                   allow_empty_text: bool = False) -> dict[str, np.ndarray]:
    """Read an MMSA `label.csv` into column arrays; ids are `<video_id>_<clip_id>`.

    `allow_empty_text`: a blank transcript is kept as "" (extracted clips where ASR heard no words)."""
    p = existing(path)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"not a readable CSV ({e})", p) from None
    if not rows:
        raise DataError("no rows", p)
    need = (*LABEL_COLUMNS, text_column)
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise DataError(f"missing columns {missing} (has {list(rows[0])})", p)
    out: dict[str, np.ndarray] = {
        "ids": np.array([f"{r['video_id']}_{r['clip_id']}" for r in rows]),
        "video_id": np.array([r["video_id"] for r in rows]),
        "text": np.array([(r[text_column] or "").strip() for r in rows]),
        "mode": np.array([(r["mode"] or "").strip() for r in rows]),
    }
    for col in ("label", "label_T", "label_A", "label_V"):
        if col not in rows[0]:
            continue
        raw = [r[col] for r in rows]
        if col != "label" and all(v in ("", None) for v in raw):
            continue  # unimodal labels absent in this dataset
        try:  # a blank unimodal label is unknown (NaN); a blank main label is an error
            out[col] = np.array([float(v) if (v not in ("", None) or col == "label") else np.nan for v in raw],
                                dtype=np.float32)
        except (TypeError, ValueError):
            bad = next(i for i, v in enumerate(raw) if not _is_float(v))
            raise DataError(f"column {col!r} row {bad + 2} is not a number: {raw[bad]!r}", p) from None
        if np.isinf(out[col]).any() or (col == "label" and np.isnan(out[col]).any()):
            raise DataError(f"NaN/Inf in column {col!r}", p)
    bad_modes = sorted(set(out["mode"]) - set(SPLITS))
    if bad_modes:
        raise DataError(f"column 'mode' must be train/valid/test, found {bad_modes}", p)
    if len(set(out["ids"])) != len(rows):
        raise DataError("duplicate (video_id, clip_id) rows", p)
    empty = np.nonzero(out["text"] == "")[0]
    if len(empty) and not allow_empty_text:
        raise DataError(f"{len(empty)} empty transcripts in column {text_column!r} "
                        f"(first id: {out['ids'][empty[0]]})", p)
    return out


def read_score_table(path: str | Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A CSV of per-clip scores keyed by `video_id, clip_id` (e.g. simsv2/unimodal_scores.csv): `ids` and one
    float32 array per column, NaN where a cell is empty (a score that does not exist for that clip)."""
    p = existing(path)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"not a readable CSV ({e})", p) from None
    if not rows:
        raise DataError("no rows", p)
    missing = [c for c in ("video_id", "clip_id", *columns) if c not in rows[0]]
    if missing:
        raise DataError(f"missing columns {missing} (has {list(rows[0])})", p)
    out = {"ids": np.array([f"{r['video_id']}_{r['clip_id']}" for r in rows])}
    for col in columns:
        raw = [(r[col] or "").strip() for r in rows]
        bad = next((i for i, v in enumerate(raw) if v and not _is_float(v)), None)
        if bad is not None:
            raise DataError(f"column {col!r} line {bad + 2} is not a number: {raw[bad]!r}", p)
        out[col] = np.array([float(v) if v else np.nan for v in raw], dtype=np.float32)
        if np.isinf(out[col]).any():
            raise DataError(f"Inf in column {col!r}", p)
    if len(set(out["ids"])) != len(rows):
        raise DataError("duplicate (video_id, clip_id) rows", p)
    return out


def _is_float(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def read_npz(path: str | Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Load the named arrays of an `.npz` without pickle; truncated or corrupt files get a clear error."""
    p = existing(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataError(f"missing arrays {missing} (has {z.files})", p)
            return {k: z[k] for k in keys}
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise DataError(f"corrupt or truncated npz ({type(e).__name__}: {e})", p) from None
