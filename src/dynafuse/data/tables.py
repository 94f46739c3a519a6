"""Safe readers for the plain formats: CSV files (one strict reader for all), MMSA-style `label.csv` and `.npz`
feature files (no pickle)."""

from __future__ import annotations

import csv
import io
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from ..errors import DataError

LABEL_COLUMNS = ("video_id", "clip_id", "label", "mode")
UNI_COLUMNS = {"text": "label_T", "audio": "label_A", "vision": "label_V"}  # unimodal labels (CH-SIMS)
SPLITS = ("train", "valid", "test")


def existing(path: str | Path, what: str = "file") -> Path:
    """`path` as a Path; DataError when it is empty, missing, or a file where a folder is wanted (and back)."""
    if not str(path).strip():
        raise DataError(f"empty path: give the {what}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"no such {what}", p)
    if what == "folder" and not p.is_dir():
        raise DataError("is a file, not a folder", p)
    if what == "file" and p.is_dir():
        raise DataError("is a folder, not a file", p)
    return p


F32_MAX = float(np.finfo(np.float32).max)


class CsvRows(NamedTuple):
    """A CSV file's header (stripped names) and its rows, each a dict of cells with the line it starts on."""

    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int]


def _csv_text(p: Path) -> str:
    """The file as text: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8" writes one)."""
    raw = p.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError("is UTF-16 text (Excel's 'Unicode Text'): save it as 'CSV UTF-8'", p)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"line {line} is not UTF-8 text (byte 0x{raw[e.start]:02x}): save the file as 'CSV UTF-8'",
                        p) from None


def _header(record: list[str], p: Path) -> list[str]:
    columns = [c.strip() for c in record]
    seen: dict[str, int] = {}
    for i, c in enumerate(columns, 1):
        if c and c in seen:
            raise DataError(f"duplicate column {c!r} (columns {seen[c]} and {i} of the header): "
                            "keep one, or rename the other", p)
        seen[c] = i
    return columns


def _field_count(start: int, end: int, n: int, want: int) -> str:
    if end > start:  # a quote opened on `start` swallowed the line ends after it
        return (f"line {start}: the row runs to line {end} and has {n} fields, the header has {want}: "
                "is a quote (\") left unclosed?")
    kind = "a short row" if n < want else "extra fields: an unquoted comma inside a text?"
    return f"line {start} has {n} fields, the header has {want} ({kind})"


def read_csv(path: str | Path, required: Sequence[str] = ()) -> CsvRows:
    """Read a CSV file strictly, the one way every CSV of the project is read (label.csv, score tables,
    predictions, published rows).

    A byte-order mark is skipped and surrounding spaces in header names are dropped. One `DataError` line naming
    the file (and the line) for: a file that is not UTF-8, an empty file, a duplicate column, a column without a
    name that holds values, a row with too few or too many fields, an unclosed or misplaced quote, no data rows,
    missing `required` columns. Blank lines are skipped."""
    p = existing(path)
    reader = csv.reader(io.StringIO(_csv_text(p), newline=""), strict=True)
    columns: list[str] | None = None
    rows, lines, end = [], [], 0
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if not any(c.strip() for c in record):
                continue
            if columns is None:
                columns = _header(record, p)
            elif len(record) != len(columns):
                raise DataError(_field_count(start, end, len(record), len(columns)), p)
            else:
                rows.append(dict(zip(columns, record)))
                lines.append(start)
    except csv.Error as e:
        where = f"line {end + 1}" + (f" (the row runs to line {reader.line_num})" if reader.line_num > end + 1 else "")
        why = ("a quote (\") is never closed" if "unexpected end of data" in str(e) else
               "text after a closing quote (write a quote inside a quoted text as \"\")" if "expected after" in str(e)
               else str(e))
        raise DataError(f"{where}: {why}", p) from None
    if columns is None:
        raise DataError("empty file (no header)", p)
    for i, c in enumerate(columns, 1):
        if not c and any(r[c].strip() for r in rows):  # (several blank names: the last one's cells)
            raise DataError(f"column {i} has no name but holds values", p)
    missing = [c for c in required if c not in columns]
    if missing:
        hint = next((f" (the header is one column: is the file separated by {d!r}?)" for d in ";\t|"
                     if len(columns) == 1 and d in columns[0]), "")
        raise DataError(f"missing columns {missing} (has {[c for c in columns if c]}){hint}", p)
    if not rows:
        raise DataError("no rows below the header", p)
    return CsvRows([c for c in columns if c], rows, lines)


def parse_floats(t: CsvRows, col: str, p: Path, blank: str = "error", dtype=np.float32) -> np.ndarray:
    """Column `col` as `dtype`. A blank (or "nan") cell is NaN with `blank="nan"` (an unknown value), else an
    error; a cell that is not a number, is Inf (or NaN), or overflows float32 is a DataError naming its line."""
    out = np.empty(len(t.rows), dtype=dtype)
    for i, (row, line) in enumerate(zip(t.rows, t.lines)):
        v = row[col].strip()
        if blank == "nan" and v.lower() in ("", "nan"):
            out[i] = np.nan
            continue
        if not v:
            raise DataError(f"line {line}: column {col!r} is empty", p)
        try:
            x = float(v)
        except ValueError:
            raise DataError(f"line {line}: column {col!r} is not a number: {v!r}", p) from None
        if not np.isfinite(x):
            raise DataError(f"line {line}: column {col!r} is {v!r}, not a finite number", p)
        if abs(x) > F32_MAX:
            raise DataError(f"line {line}: column {col!r} = {v} overflows float32 (largest {F32_MAX:.3g})", p)
        out[i] = x
    return out


def to_float32(a, path: Path, what: str, ids=None) -> np.ndarray:
    """`a` as a float32 array. A finite value beyond float32's range (numpy would make it Inf, with a warning) is a
    DataError saying so, with the first ids (or sample numbers); TypeError/ValueError pass through."""
    if isinstance(a, np.ndarray) and a.dtype == np.float32:
        return a
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(a, dtype=np.float32)
    if np.isinf(out).any():
        src = np.asarray(a)
        over = np.isinf(out) & np.isfinite(src) if np.issubdtype(src.dtype, np.number) else np.zeros(out.shape, bool)
        if over.any():
            rows = np.unique(np.nonzero(over)[0] if over.ndim else [0])[:3]
            first = ", ".join(str(ids[r]) if ids is not None else f"#{r}" for r in rows)
            raise DataError(f"{what}: {int(over.sum())} values overflow float32 (up to {np.abs(src[over]).max():.3g}; "
                            f"float32 holds up to {F32_MAX:.3g}; first {'ids' if ids is not None else 'samples'}: "
                            f"{first}): rescale them", path)
    return out


def infer_range(labels, given: float | None) -> float:
    """The label scale: `given`, else 1.0 when every finite |label| <= 1 (CH-SIMS), else 3.0 (MOSI/MOSEI)."""
    if given is not None:
        return float(given)
    peak = max((float(np.nanmax(np.abs(y))) for y in labels if np.isfinite(y).any()), default=0.0)
    return 1.0 if peak <= 1.0 else 3.0


def label_range(labels, given: float | None, path: Path, setting: str) -> float:
    """`infer_range`, and labels outside it are an error that names `setting`, the option to change it."""
    value_range = infer_range(labels, given)
    peak = max((float(np.nanmax(np.abs(y))) for y in labels if np.isfinite(y).any()), default=0.0)
    if peak > value_range:
        raise DataError(f"labels reach {peak:g}, outside [-{value_range:g}, {value_range:g}] (set {setting})", path)
    return value_range


def read_label_csv(path: str | Path, text_column: str = "text", allow_empty_text: bool = False,
                   id_column: str | None = None) -> dict[str, np.ndarray]:
    """Read an MMSA `label.csv` (through `read_csv`) into column arrays; ids are `<video_id>_<clip_id>`, or the
    cells of `id_column` when the file has that column (`dynafuse convert` keeps a source's exact ids there).

    `allow_empty_text`: a blank transcript is kept as "" (extracted clips where ASR heard no words). A blank
    unimodal label (label_T/A/V) is unknown (NaN); every error names the file and the line."""
    p = existing(path)
    t = read_csv(p, (*LABEL_COLUMNS, text_column))
    rows = t.rows
    own_ids = id_column is not None and id_column in t.columns
    out: dict[str, np.ndarray] = {
        "ids": np.array([r[id_column] if own_ids else f"{r['video_id']}_{r['clip_id']}" for r in rows]),
        "video_id": np.array([r["video_id"] for r in rows]),
        "text": np.array([r[text_column].strip() for r in rows]),
        "mode": np.array([r["mode"].strip() for r in rows]),
    }
    out["label"] = parse_floats(t, "label", p)
    for col in UNI_COLUMNS.values():
        if col in t.columns and any(r[col].strip() for r in rows):  # all blank: absent in this dataset
            out[col] = parse_floats(t, col, p, blank="nan")
    bad = np.nonzero(~np.isin(out["mode"], SPLITS))[0]
    if len(bad):
        raise DataError(f"line {t.lines[bad[0]]}: column 'mode' must be train, valid or test, not "
                        f"{str(out['mode'][bad[0]])!r} ({len(bad)} such rows)", p)
    if own_ids:  # a source's own ids (convert) may recur in another split, as its reader allows
        _no_duplicate_ids(np.char.add(np.char.add(out["mode"], ": "), out["ids"]), t.lines, p, "id")
    else:
        _no_duplicate_ids(out["ids"], t.lines, p)
    empty = np.nonzero(out["text"] == "")[0]
    if len(empty) and not allow_empty_text:
        raise DataError(f"line {t.lines[empty[0]]}: empty transcript in column {text_column!r} "
                        f"({len(empty)} such rows; first id: {out['ids'][empty[0]]})", p)
    return out


def _no_duplicate_ids(ids: np.ndarray, lines: list[int], p: Path, what: str = "(video_id, clip_id)") -> None:
    first: dict[str, int] = {}
    for i, line in zip(map(str, ids), lines):
        if i in first:
            raise DataError(f"line {line}: duplicate {what} {i!r}, first on line {first[i]}", p)
        first[i] = line


def read_score_table(path: str | Path, columns: tuple[str, ...], may_be_blank: tuple[str, ...] = (),
                     value_range: float | None = None) -> dict[str, np.ndarray]:
    """A CSV of per-clip scores keyed by `video_id, clip_id` (e.g. simsv2/unimodal_scores.csv): `ids`, one float32
    array per column and, when the file has one, its `mode` column. A blank (or "nan") cell is NaN in the columns
    `may_be_blank` (a score that does not exist for that clip, e.g. no face) and an error in the others. With
    `value_range` R, a score outside [-R, R] is an error (the count, the extremes and the first ids), as a label
    would be. DataError (naming the file and the line) otherwise as `parse_floats`."""
    p = existing(path)
    t = read_csv(p, ("video_id", "clip_id", *columns))
    out = {"ids": np.array([f"{r['video_id']}_{r['clip_id']}" for r in t.rows])}
    for col in columns:
        out[col] = parse_floats(t, col, p, blank="nan" if col in may_be_blank else "error")
        if value_range is not None:
            bad = np.abs(np.nan_to_num(out[col])) > value_range
            if bad.any():
                raise DataError(f"{int(bad.sum())} {col} scores outside [-{value_range:g}, {value_range:g}] "
                                f"(from {np.nanmin(out[col]):.4g} to {np.nanmax(out[col]):.4g}; first: "
                                f"{', '.join(out['ids'][bad][:3])})", p)
    if "mode" in t.columns:
        out["mode"] = np.array([r["mode"].strip() for r in t.rows])
    _no_duplicate_ids(out["ids"], t.lines, p)
    return out


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
