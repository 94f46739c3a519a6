"""Readers for the pickles users already have: MMSA features, MulT and MISA word-aligned data.

Unpickling runs code stored in the file, so every reader refuses unless the user opts in with
`allow_pickle=True`. Each reader validates the structure, builds one `Split` per split and checks it.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .core import MODALITIES, Bundle, Split, pad_sequences
from .tables import SPLITS, UNI_COLUMNS, existing, label_range, read_label_csv

# ---- shared helpers ----------------------------------------------------------------------------

def _load_pickle(path: str | Path, allow_pickle: bool) -> object:
    """Unpickle a user's file, only when they opted in; missing, truncated or corrupt -> DataError."""
    if not allow_pickle:
        raise ConfigError("refusing to load a pickle: unpickling runs code stored in the file, so load only "
                          "files you trust. Opt in with data.options.allow_pickle=true (CLI: --allow-pickle)", path)
    p = existing(path)
    try:
        try:
            with open(p, "rb") as f:
                return pickle.load(f)
        except UnicodeDecodeError:  # python2-era numpy pickles (MulT) store array bytes as py2 str
            with open(p, "rb") as f:
                return pickle.load(f, encoding="latin1")
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, ImportError, OSError, OverflowError) as e:
        raise DataError(f"corrupt or truncated pickle ({type(e).__name__}: {e})", p) from None


def _require(d: object, keys, path: Path, where: str) -> None:
    if not isinstance(d, dict):
        raise DataError(f"{where} must be a dict, not {type(d).__name__}", path)
    missing = [k for k in keys if k not in d]
    if missing:
        raise DataError(f"{where} is missing keys {missing} (has {sorted(map(str, d))})", path)


def _split_dicts(data: object, path: Path, keys) -> dict[str, dict]:
    """`{train, valid, test}` of dicts, each holding `keys`."""
    _require(data, SPLITS, path, "the top level")
    for s in SPLITS:
        _require(data[s], keys, path, f"split {s!r}")
    return {s: data[s] for s in SPLITS}


def _array(a, path: Path, what: str, ndim: int | None = None) -> np.ndarray:
    try:
        out = np.asarray(a, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"{what} is not a numeric array ({e})", path) from None
    if ndim is not None and out.ndim != ndim:
        raise DataError(f"{what} must be {ndim}-D, got shape {out.shape}", path)
    return out


def _per_sample(a, path: Path, what: str) -> np.ndarray:
    """One value per sample, stored as (N,), (N, 1) or (N, 1, 1) -> (N,) float32."""
    y = _array(a, path, what)
    if y.ndim == 0 or y.size != len(y):
        raise DataError(f"{what} must hold one value per sample, got shape {y.shape}", path)
    return y.reshape(-1)


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _ids(a) -> np.ndarray:
    """(N,) ids, or (N, k) id parts (MulT: video, start, end) joined with '_'."""
    a = np.asarray(a, dtype=object)
    if a.ndim == 1:
        return np.array([_text(v) for v in a], dtype=str)
    return np.array(["_".join(_text(v).strip() for v in row) for row in a.reshape(len(a), -1)], dtype=str)


def _finish(name: str, split: Split, path: Path, fix_nonfinite: bool) -> list[str]:
    """Optionally zero non-finite features (returning notes), then `Split.check`."""
    notes = []
    if fix_nonfinite:
        for m, a in split.features.items():
            bad = ~np.isfinite(a)
            if bad.any():
                a[bad] = 0
                notes.append(f"{name}: replaced {int(bad.sum())} NaN/Inf values in {m} features with 0")
    try:
        split.check(path)
    except DataError as e:
        fixable = not fix_nonfinite and "NaN/Inf values in" in e.problem and "features" in e.problem
        hint = "; set data.options.fix_nonfinite=true to replace them with 0" if fixable else ""
        raise DataError(f"split {name!r}: {e.problem}{hint}", path) from None
    return notes


def _bundle(name: str, splits: dict[str, Split], path: Path, value_range: float | None = None,
            fix_nonfinite: bool = False, notes: list[str] | None = None,
            sources: dict[str, Path] | None = None) -> Bundle:
    """Check every split against its file; infer value_range (1.0 when every |label| <= 1, else 3.0)."""
    notes = list(notes or [])
    for s, split in splits.items():
        notes += _finish(s, split, (sources or {}).get(s, path), fix_nonfinite)
    value_range = label_range([s.y for s in splits.values()], value_range, path, "data.value_range=1 or 3")
    return Bundle(name=name, splits=splits, value_range=value_range, source=str(path), notes=notes)


# ---- MMSA feature pickle (aligned_50.pkl, unaligned_50.pkl, unaligned_39.pkl) ------------------

MMSA_KEYS = ("raw_text", "id", "text", "text_bert", "audio", "vision", "regression_labels")


def _mmsa_split(d: dict, path: Path, where: str, notes: list[str]) -> Split:
    feats = {m: _array(d[m], path, f"{where} {m!r}", 3) for m in MODALITIES}
    text_bert = _array(d["text_bert"], path, f"{where} 'text_bert'", 3)
    if text_bert.shape[1] != 3:
        raise DataError(f"{where} 'text_bert' must be (N, 3, L) ids/mask/segments, got {text_bert.shape}", path)
    lengths = {"text": text_bert[:, 1].sum(axis=1).astype(np.int64)}
    for m in ("audio", "vision"):
        width, stored = feats[m].shape[1], d.get(f"{m}_lengths")
        if stored is not None:
            stored = _per_sample(stored, path, f"{where} '{m}_lengths'").astype(np.int64)
        if stored is not None and (stored <= width).all():
            lengths[m] = stored
        elif width == feats["text"].shape[1]:  # aligned file: MMSA uses the text mask length for all
            lengths[m] = lengths["text"]
            if stored is not None:
                notes.append(f"{where}: stored {m}_lengths exceed the aligned width {width}; used text lengths")
        elif stored is None:
            raise DataError(f"{where} has no '{m}_lengths' and {m} is not aligned to text", path)
        else:
            lengths[m] = stored  # Split.check reports the out-of-range lengths
    unimodal = {m: _per_sample(d[f"regression_labels_{m[0].upper()}"], path, f"{where} {m} labels")
                for m in MODALITIES if f"regression_labels_{m[0].upper()}" in d}
    return Split(ids=_ids(d["id"]), y=_per_sample(d["regression_labels"], path, f"{where} 'regression_labels'"),
                 features=feats, lengths=lengths, unimodal=unimodal,
                 raw_text=np.array([_text(t) for t in d["raw_text"]], dtype=str))


def read_mmsa(path: str | Path, allow_pickle: bool = False, value_range: float | None = None,
              fix_nonfinite: bool = False) -> Bundle:
    """MMSA feature pickle: BERT text features, audio and vision sequences, optional SIMS T/A/V labels."""
    p = Path(path).expanduser()
    data = _split_dicts(_load_pickle(p, allow_pickle), p, MMSA_KEYS)
    notes: list[str] = []
    splits = {s: _mmsa_split(d, p, f"split {s!r}", notes) for s, d in data.items()}
    return _bundle(p.stem, splits, p, value_range, fix_nonfinite, notes)


# ---- MulT pickle (mosi_data.pkl, mosei_senti_data.pkl) -----------------------------------------

MULT_KEYS = ("text", "audio", "vision", "labels", "id")


def _mult_split(d: dict, path: Path, where: str) -> Split:
    feats = {m: _array(d[m], path, f"{where} {m!r}", 3) for m in MODALITIES}
    # fully aligned, no lengths stored: full length, or 0 where a sample's modality is all zeros
    lengths = {m: np.where(a.reshape(len(a), -1).any(axis=1), a.shape[1], 0).astype(np.int64)
               for m, a in feats.items()}
    return Split(ids=_ids(d["id"]), y=_per_sample(d["labels"], path, f"{where} 'labels'"),
                 features=feats, lengths=lengths)


def read_mult(path: str | Path, allow_pickle: bool = False, value_range: float | None = None,
              fix_nonfinite: bool = False) -> Bundle:
    """MulT pickle: word-aligned GloVe text, audio and vision sequences; no raw text."""
    p = Path(path).expanduser()
    data = _split_dicts(_load_pickle(p, allow_pickle), p, MULT_KEYS)
    splits = {s: _mult_split(d, p, f"split {s!r}") for s, d in data.items()}
    return _bundle(p.stem, splits, p, value_range, fix_nonfinite)


# ---- MISA word-aligned pickle (train.pkl / dev.pkl / test.pkl) ---------------------------------

MISA_FILES = {"train": "train.pkl", "valid": "dev.pkl", "test": "test.pkl"}


def _misa_split(data: object, path: Path) -> Split:
    """A list of `((word_ids, visual (T, 47), acoustic (T, 74), words), [[label]], segment_id)`.

    word_ids index a GloVe vocabulary that is not shipped, so text comes from the words (raw_text)."""
    if not isinstance(data, list):
        raise DataError(f"a MISA file must hold a list of samples, not {type(data).__name__}", path)
    try:
        rows = [(np.asarray(v, np.float32), np.asarray(a, np.float32), " ".join(map(_text, words)),
                 np.asarray(label, np.float32).reshape(-1), _text(sid))
                for (_, v, a, words), label, sid in data]
    except (TypeError, ValueError) as e:
        raise DataError(f"not a MISA list of ((word_ids, visual, acoustic, words), label, segment_id) ({e})",
                        path) from None
    for i, (v, a, *_rest) in enumerate(rows):
        if v.ndim != 2 or a.ndim != 2:
            raise DataError(f"sample {i}: visual and acoustic must be (T, D), got {v.shape} and {a.shape}", path)
    visual, acoustic, text, labels, ids = zip(*rows) if rows else ((),) * 5
    split = Split(ids=np.array(ids, dtype=str), y=_per_sample(list(labels), path, "labels"),
                  raw_text=np.array(text, dtype=str))
    split.features["vision"], split.lengths["vision"] = pad_sequences(list(visual))
    split.features["audio"], split.lengths["audio"] = pad_sequences(list(acoustic))
    return split


def read_misa_split(path: str | Path, allow_pickle: bool = False, fix_nonfinite: bool = False) -> Split:
    """One MISA file (e.g. `dev.pkl`) as a checked `Split`."""
    p = Path(path).expanduser()
    split = _misa_split(_load_pickle(p, allow_pickle), p)
    _finish(p.stem, split, p, fix_nonfinite)
    return split


def read_misa(path: str | Path, allow_pickle: bool = False, split: str = "valid", value_range: float | None = None,
              fix_nonfinite: bool = False) -> Bundle:
    """A MISA folder (train.pkl, dev.pkl, test.pkl), or one file read as the split named by `split`."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = {s: p / f for s, f in MISA_FILES.items()}
    elif split in SPLITS:
        files = {split: p}
    else:
        raise ConfigError(f"data.options.split must be one of {list(SPLITS)}, not {split!r}")
    splits = {s: _misa_split(_load_pickle(f, allow_pickle), f) for s, f in files.items()}
    return _bundle(p.stem, splits, p, value_range, fix_nonfinite, sources=files)


# ---- a folder written by `dynafuse extract` (meta.json, label.csv, audio/vision .npy) -----------

FEATURES_FORMAT = "dynafuse-features"


def _features_meta(path: Path) -> dict:
    try:
        meta = json.loads(existing(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not a readable meta.json ({e})", path) from None
    if not isinstance(meta, dict) or meta.get("format") != FEATURES_FORMAT:
        raise DataError(f"not a `dynafuse extract` output (format must be {FEATURES_FORMAT!r})", path)
    if not isinstance(meta.get("feature_spec"), dict):
        raise DataError("meta.json has no feature_spec", path)
    return meta


def _npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(existing(path), mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"corrupt or truncated .npy ({e})", path) from None


def _features_npy(path: Path, n: int, dim: int, mmap: bool) -> np.ndarray:
    """An (N, T, D) float32 array (memory-mapped unless it must be edited in place)."""
    a = _npy(path, mmap)
    if a.ndim != 3 or len(a) != n or a.shape[2] != dim or a.dtype != np.float32:
        raise DataError(f"expected float32 ({n}, T, {dim}) for the {n} rows of label.csv, "
                        f"got {a.dtype} {a.shape}", path)
    return a


def _features_lengths(path: Path, n: int) -> np.ndarray:
    a = _npy(path)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"expected ({n},) integer lengths, got {a.dtype} {a.shape}", path)
    return a.astype(np.int64)


def _rows(modes: np.ndarray, split: str) -> slice | np.ndarray:
    """The rows of a split; a contiguous block (as extract writes them) as a slice, so memmaps stay mapped."""
    rows = np.nonzero(modes == split)[0]
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def read_path(path: str | Path, value_range: float | None = None, fix_nonfinite: bool = False) -> Bundle:
    """A folder made by `dynafuse extract`: transcripts (encoded at train time), memory-mapped audio/vision.

    The feature spec comes from meta.json, with the text backbone/max_len it was made with: for the aligned
    layout, training must tokenize the same way (data/text.py `attach_text` checks)."""
    root = existing(path, "folder")
    meta = _features_meta(root / "meta.json")
    table = read_label_csv(root / "label.csv", allow_empty_text=True)
    n, spec = len(table["ids"]), dict(meta["feature_spec"])
    feats, lengths = {}, {}
    for m in ("audio", "vision"):
        if spec.get(m):
            feats[m] = _features_npy(root / f"{m}.npy", n, int(spec[m]["dim"]), mmap=not fix_nonfinite)
            lengths[m] = _features_lengths(root / f"{m}_lengths.npy", n)
    splits = {}
    for s in SPLITS:
        rows = _rows(table["mode"], s)
        splits[s] = Split(ids=table["ids"][rows], y=table["label"][rows], raw_text=table["text"][rows],
                          features={m: a[rows] for m, a in feats.items()},
                          lengths={m: a[rows] for m, a in lengths.items()},
                          unimodal={m: table[c][rows] for m, c in UNI_COLUMNS.items() if c in table})
    bundle = _bundle(meta.get("name") or root.name, splits, root,
                     meta.get("value_range") if value_range is None else value_range, fix_nonfinite,
                     notes=list(meta.get("notes") or []))
    bundle.feature_spec = spec
    return bundle


READERS = {"mmsa": read_mmsa, "mult": read_mult, "misa": read_misa, "path": read_path}
