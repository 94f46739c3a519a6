"""Readers for the pickles users already have: MMSA features, MulT and MISA word-aligned data.

Unpickling runs code stored in the file, so every reader refuses unless the user opts in with
`allow_pickle=True`. Each reader validates the structure, builds one `Split` per split and checks it.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, DataError, warn
from .core import MODALITIES, Bundle, DiskArray, Split, pad_sequences, row_chunks
from .tables import SPLITS, UNI_COLUMNS, existing, infer_range, read_label_csv, to_float32

# ---- shared helpers ----------------------------------------------------------------------------

def _opted_in(allow_pickle: bool, path: str | Path) -> None:
    if not allow_pickle:
        raise ConfigError("refusing to load a pickle: unpickling runs code stored in the file, so load only "
                          "files you trust. Opt in with data.options.allow_pickle=true (CLI: --allow-pickle)", path)


# Set by a caller that shows progress (`dynafuse convert`): wrap(file, path) -> the file to read the pickle through.
_WATCH_READS: ContextVar[Callable | None] = ContextVar("watch_reads", default=None)


@contextmanager
def watch_reads(wrap: Callable):
    """Within this block, pickles are read through `wrap(file, path)` (e.g. rich's `Progress.wrap_file`)."""
    token = _WATCH_READS.set(wrap)
    try:
        yield
    finally:
        _WATCH_READS.reset(token)


def _unpickle(p: Path, **kw) -> object:
    wrap = _WATCH_READS.get()
    with open(p, "rb") as f:
        return pickle.load(wrap(f, p) if wrap else f, **kw)


def _load_pickle(path: str | Path, allow_pickle: bool) -> object:
    """Unpickle a user's file, only when they opted in; missing, truncated or corrupt -> DataError."""
    _opted_in(allow_pickle, path)
    p = existing(path)
    try:
        try:
            return _unpickle(p)
        except UnicodeDecodeError:  # python2-era numpy pickles (MulT) store array bytes as py2 str
            return _unpickle(p, encoding="latin1")
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, ImportError, OSError, OverflowError) as e:
        raise DataError(f"corrupt or truncated pickle ({type(e).__name__}: {e})", p) from None


def _require(d: object, keys, path: Path, where: str) -> None:
    if not isinstance(d, dict):
        raise DataError(f"{where} must be a dict, not {type(d).__name__}", path)
    missing = [k for k in keys if k not in d]
    if missing:
        raise DataError(f"{where} is missing keys {missing} (has {sorted(map(str, d))})", path)


def _split_dicts(data: object, path: Path, keys, labels: str) -> dict[str, dict]:
    """`{train, valid, test}` of dicts, each holding `keys` and at least one sample (`labels`: the label key)."""
    _require(data, SPLITS, path, "the top level")
    for s in SPLITS:
        _require(data[s], keys, path, f"split {s!r}")
        if not len(data[s][labels]):
            raise DataError(f"split {s!r} is empty (0 samples); every split needs samples", path)
    return {s: data[s] for s in SPLITS}


def _mixed(keys: list, ids, unit: str, items: str = "samples") -> str:
    """"" when every sample has the same key (a shape, a width), else each key with its count, and the samples
    that differ from the most common one (by id, else by number)."""
    counts = Counter(keys)
    if len(counts) < 2:
        return ""
    common = counts.most_common(1)[0][0]
    odd = [str(ids[i]) if ids is not None and len(ids) == len(keys) else f"#{i}"
           for i, k in enumerate(keys) if k != common]
    return (", ".join(f"{k} {unit} in {n} {items}" for k, n in counts.most_common())
            + f" (the {len(odd)} odd {items}: {', '.join(odd[:5])}{', ...' if len(odd) > 5 else ''})")


def _mixed_shapes(a, ids) -> str:
    """Why a sequence of per-sample arrays does not stack ("" when that is not the reason)."""
    try:
        mixed = _mixed([np.shape(x) for x in a], ids, "shape")
    except (TypeError, ValueError):
        return ""
    return mixed and f"samples of mixed shapes: {mixed}"


def _array(a, path: Path, what: str, ndim: int | None = None, ids=None) -> np.ndarray:
    """`a` as float32 (see `to_float32`), `ndim`-D; ragged samples, text or overflow: a DataError naming `what`."""
    try:
        out = to_float32(a, path, what, ids)
    except (TypeError, ValueError) as e:
        raise DataError(f"{what}: {_mixed_shapes(a, ids) or f'not a numeric array ({e})'}", path) from None
    if ndim is not None and out.ndim != ndim:
        raise DataError(f"{what} must be {ndim}-D, got shape {out.shape}", path)
    return out


def _per_sample(a, path: Path, what: str, ids=None) -> np.ndarray:
    """One value per sample, stored as (N,), (N, 1) or (N, 1, 1) -> (N,) float32."""
    y = _array(a, path, what, ids=ids)
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
    """Optionally zero non-finite features (a note, also printed: one line per split), then `Split.check`."""
    notes = []
    if fix_nonfinite:
        fixed = {}
        for m, a in split.features.items():  # in memory (read_path loads what it must repair): fixed in place
            for _, x in row_chunks(a):
                bad = ~np.isfinite(x)
                if bad.any():
                    x[bad] = 0
                    fixed[m] = fixed.get(m, 0) + int(bad.sum())
        if fixed:
            notes.append(f"{name}: replaced {sum(fixed.values())} NaN/Inf values with 0 (data.options.fix_nonfinite; "
                         + ", ".join(f"{m} features {n}" for m, n in fixed.items()) + ")")
            warn(notes[-1], path)
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
    """Check every split against its file; infer value_range (1.0 when every |label| <= 1, else 3.0). Labels
    outside it are `load_dataset`'s to refuse or clip (`Bundle.fit_labels`)."""
    notes = list(notes or [])
    for s, split in splits.items():
        notes += _finish(s, split, (sources or {}).get(s, path), fix_nonfinite)
    return Bundle(name=name, splits=splits, value_range=infer_range([s.y for s in splits.values()], value_range),
                  source=str(path), notes=notes, split_sources={s: str(f) for s, f in (sources or {}).items()})


# ---- MMSA feature pickle (aligned_50.pkl, unaligned_50.pkl, unaligned_39.pkl) ------------------

MMSA_KEYS = ("raw_text", "id", "text", "text_bert", "audio", "vision", "regression_labels")


def _mmsa_split(d: dict, path: Path, where: str, notes: list[str]) -> Split:
    ids = _ids(d["id"])
    feats = {m: _array(d[m], path, f"{where} {m!r}", 3, ids) for m in MODALITIES}
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
    unimodal = {m: _per_sample(d[f"regression_labels_{m[0].upper()}"], path, f"{where} {m} labels", ids)
                for m in MODALITIES if f"regression_labels_{m[0].upper()}" in d}
    return Split(ids=ids, y=_per_sample(d["regression_labels"], path, f"{where} 'regression_labels'", ids),
                 features=feats, lengths=lengths, unimodal=unimodal,
                 raw_text=np.array([_text(t) for t in d["raw_text"]], dtype=str))


def read_mmsa(path: str | Path, allow_pickle: bool = False, value_range: float | None = None,
              fix_nonfinite: bool = False) -> Bundle:
    """MMSA feature pickle: BERT text features, audio and vision sequences, optional SIMS T/A/V labels."""
    p = Path(path).expanduser()
    data = _split_dicts(_load_pickle(p, allow_pickle), p, MMSA_KEYS, "regression_labels")
    notes: list[str] = []
    splits = {s: _mmsa_split(d, p, f"split {s!r}", notes) for s, d in data.items()}
    return _bundle(p.stem, splits, p, value_range, fix_nonfinite, notes)


# ---- MulT pickle (mosi_data.pkl, mosei_senti_data.pkl) -----------------------------------------

MULT_KEYS = ("text", "audio", "vision", "labels", "id")


def _mult_split(d: dict, path: Path, where: str) -> Split:
    ids = _ids(d["id"])
    feats = {m: _array(d[m], path, f"{where} {m!r}", 3, ids) for m in MODALITIES}
    # fully aligned, no lengths stored: full length, or 0 where a sample's modality is all zeros
    lengths = {m: np.where(a.reshape(len(a), -1).any(axis=1), a.shape[1], 0).astype(np.int64)
               for m, a in feats.items()}
    return Split(ids=ids, y=_per_sample(d["labels"], path, f"{where} 'labels'", ids), features=feats, lengths=lengths)


def read_mult(path: str | Path, allow_pickle: bool = False, value_range: float | None = None,
              fix_nonfinite: bool = False) -> Bundle:
    """MulT pickle: word-aligned GloVe text, audio and vision sequences; no raw text."""
    p = Path(path).expanduser()
    data = _split_dicts(_load_pickle(p, allow_pickle), p, MULT_KEYS, "labels")
    splits = {s: _mult_split(d, p, f"split {s!r}") for s, d in data.items()}
    return _bundle(p.stem, splits, p, value_range, fix_nonfinite)


# ---- MISA word-aligned pickle (train.pkl / dev.pkl / test.pkl) ---------------------------------

MISA_FILES = {"train": "train.pkl", "valid": "dev.pkl", "test": "test.pkl"}


def _misa_split(data: object, path: Path, where: str) -> Split:
    """A list of `((word_ids, visual (T, 47), acoustic (T, 74), words), [[label]], segment_id)`.

    word_ids index a GloVe vocabulary that is not shipped, so text comes from the words (raw_text)."""
    if not isinstance(data, list):
        raise DataError(f"a MISA file must hold a list of samples, not {type(data).__name__}", path)
    if not data:
        raise DataError(f"{where} is empty (0 samples); every split needs samples", path)
    try:
        visual, acoustic, text, labels, ids = zip(*[(v, a, " ".join(map(_text, words)), label, _text(sid))
                                                     for (_, v, a, words), label, sid in data])
    except (TypeError, ValueError) as e:
        raise DataError(f"not a MISA list of ((word_ids, visual, acoustic, words), label, segment_id) ({e})",
                        path) from None
    ids = np.array(ids, dtype=str)
    split = Split(ids=ids, y=_per_sample(list(labels), path, f"{where} labels", ids), raw_text=np.array(text, dtype=str))
    for m, name, seqs in (("vision", "visual", visual), ("audio", "acoustic", acoustic)):
        arrays = [_array(x, path, f"{where} segment {i}: {name} features", 2) for x, i in zip(seqs, ids)]
        mixed = _mixed([x.shape[1] for x in arrays], ids, "dims", "segments")
        if mixed:
            raise DataError(f"{where}: {name} features of mixed widths: {mixed}", path)
        split.features[m], split.lengths[m] = pad_sequences(arrays)
    return split


def read_misa_split(path: str | Path, allow_pickle: bool = False, fix_nonfinite: bool = False) -> Split:
    """One MISA file (e.g. `dev.pkl`) as a checked `Split`."""
    p = Path(path).expanduser()
    split = _misa_split(_load_pickle(p, allow_pickle), p, p.name)
    _finish(p.stem, split, p, fix_nonfinite)
    return split


def read_misa(path: str | Path, allow_pickle: bool = False, split: str | None = None,
              value_range: float | None = None, fix_nonfinite: bool = False) -> Bundle:
    """A MISA folder (train.pkl, dev.pkl, test.pkl), or one file read as the split named by `split` (a single file
    holds one split and nothing says which: ConfigError without `split`)."""
    p = Path(path).expanduser()
    _opted_in(allow_pickle, p)
    if existing(p, "MISA file or folder").is_dir():
        files = {s: p / f for s, f in MISA_FILES.items()}
    elif split is None:
        raise ConfigError("a single MISA file holds one split: say which with data.options.split=train, valid or "
                          "test (training needs all three: give the folder holding train.pkl, dev.pkl and test.pkl)",
                          p)
    elif split in SPLITS:
        files = {split: p}
    else:
        raise ConfigError(f"data.options.split must be one of {list(SPLITS)}, not {split!r}")
    splits = {s: _misa_split(_load_pickle(f, allow_pickle), f, f"split {s!r}") for s, f in files.items()}
    return _bundle(p.stem, splits, p, value_range, fix_nonfinite, sources=files)


# ---- a folder written by `dynafuse extract` or `dynafuse convert` (meta.json, label.csv, .npy arrays) -------

FEATURES_FORMAT = "dynafuse-features"


RUN_FOLDER = "a run folder (a training's output), not a dataset; its config.yaml names the dataset it trained on"


def is_run_folder(folder: Path) -> bool:
    """True for a training's output folder (config.yaml beside run.json or checkpoints/), which a user may give
    where a dataset folder is wanted."""
    return (folder / "config.yaml").is_file() and ((folder / "run.json").is_file() or (folder / "checkpoints").is_dir())


def _features_meta(path: Path) -> dict:
    if not path.exists() and is_run_folder(path.parent):
        raise DataError(RUN_FOLDER, path.parent)
    try:
        meta = json.loads(existing(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not a readable meta.json ({e})", path) from None
    if not isinstance(meta, dict) or meta.get("format") != FEATURES_FORMAT:
        raise DataError(f"not a `dynafuse extract` or `dynafuse convert` output (format must be "
                        f"{FEATURES_FORMAT!r})", path)
    if not isinstance(meta.get("feature_spec"), dict):
        raise DataError("meta.json has no feature_spec", path)
    arrays = meta.get("arrays", {})
    if not (isinstance(arrays, dict) and all(m in MODALITIES and isinstance(a, dict) and isinstance(a.get("dim"), int)
                                             for m, a in arrays.items())):
        raise DataError(f"meta.json's arrays must map modalities ({', '.join(MODALITIES)}) to {{\"dim\": D}}, "
                        f"not {arrays!r}", path)
    return meta


def _npy(path: Path, on_disk: bool = False) -> np.ndarray | DiskArray:
    """The array of a .npy file: read into memory, or `on_disk` (a `DiskArray`: rows read when asked for)."""
    if on_disk:
        return DiskArray.open(existing(path))
    try:
        return np.load(existing(path), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"corrupt or truncated .npy ({e})", path) from None


def _features_npy(path: Path, n: int, dim: int, on_disk: bool) -> np.ndarray | DiskArray:
    """An (N, T, D) float32 array (left on disk unless it must be edited in place)."""
    a = _npy(path, on_disk)
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
    """The rows of a split; a contiguous block (as extract and convert write them) as a slice, so on-disk arrays
    stay on disk."""
    rows = np.nonzero(modes == split)[0]
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _known_stats(meta: dict, feats: dict, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """meta.json's `train_stats` (convert writes the train split's `feature_stats`): modality -> (mean, std)."""
    out = {}
    for m, st in (meta.get("train_stats") or {}).items():
        try:
            mean, std = (np.asarray(st[k], dtype=np.float32) for k in ("mean", "std"))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"meta.json's train_stats.{m} must hold mean and std lists", path) from None
        if m not in feats or {mean.shape, std.shape} != {(feats[m].shape[-1],)}:
            raise DataError(f"meta.json's train_stats.{m} does not fit the stored {m} features", path)
        out[m] = (mean, std)
    return out


def stored_arrays(meta: dict) -> dict[str, int]:
    """The modalities a folder stores as `<m>.npy` + `<m>_lengths.npy`, with their feature dims: meta.json's
    `arrays` (`dynafuse convert`, which may store text features too), else the audio/vision its feature_spec
    describes (`dynafuse extract`, and every folder written before `arrays` existed)."""
    if "arrays" in meta:
        return {m: int(a["dim"]) for m, a in meta["arrays"].items()}
    spec = meta["feature_spec"]
    return {m: int(spec[m]["dim"]) for m in ("audio", "vision") if spec.get(m)}


def read_path(path: str | Path, value_range: float | None = None, fix_nonfinite: bool = False) -> Bundle:
    """A folder made by `dynafuse extract` or `dynafuse convert`: label.csv (transcripts, encoded at train time
    unless the folder stores text features), and the `stored_arrays` left on disk (`DiskArray`: a run reads the
    rows it uses, never the whole files; with fix_nonfinite they are read into memory to be repaired).

    The feature spec comes from meta.json, with the text backbone/max_len it was made with: for the aligned
    layout, training must tokenize the same way (data/text.py `attach_text` checks). label.csv's `id` column, when
    there is one, gives the ids (convert keeps a source's own ids); meta.json `raw_text: false` says the source
    had no transcripts (MulT)."""
    root = existing(path, "folder")
    meta = _features_meta(root / "meta.json")
    table = read_label_csv(root / "label.csv", allow_empty_text=True, id_column="id")
    n, spec = len(table["ids"]), dict(meta["feature_spec"])
    feats, lengths = {}, {}
    for m, dim in stored_arrays(meta).items():
        feats[m] = _features_npy(root / f"{m}.npy", n, dim, on_disk=not fix_nonfinite)
        lengths[m] = _features_lengths(root / f"{m}_lengths.npy", n)
    transcripts = meta.get("raw_text", True)
    splits = {}
    for s in SPLITS:
        rows = _rows(table["mode"], s)
        splits[s] = Split(ids=table["ids"][rows], y=table["label"][rows],
                          raw_text=table["text"][rows] if transcripts else None,
                          features={m: a[rows] for m, a in feats.items()},
                          lengths={m: a[rows] for m, a in lengths.items()},
                          unimodal={m: table[c][rows] for m, c in UNI_COLUMNS.items() if c in table},
                          known_finite=meta.get("checked") is True)
    splits["train"].stats = _known_stats(meta, feats, root / "meta.json")
    bundle = _bundle(meta.get("name") or root.name, splits, root,
                     meta.get("value_range") if value_range is None else value_range, fix_nonfinite,
                     notes=list(meta.get("notes") or []))
    bundle.feature_spec = spec
    return bundle


READERS = {"mmsa": read_mmsa, "mult": read_mult, "misa": read_misa, "path": read_path}
