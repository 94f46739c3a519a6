"""Dataset registry: a name (or `format:path`) -> a `Bundle` with its official split."""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, DataError
from .core import Bundle, Split
from .formats import MISA_FILES, READERS
from .tables import SPLITS, UNI_COLUMNS, read_label_csv, read_npz, read_score_table, to_float32

DATASETS: dict[str, Callable[..., Bundle]] = {}
DESCRIPTIONS: dict[str, str] = {}
SOURCE_FILES: dict[str, tuple[str, ...]] = {}  # the files a registered dataset is read from, under the data dir


def register_dataset(name: str, description: str, files: tuple[str, ...] = ()):
    """Register a dataset builder `fn(data_dir, **options) -> Bundle`; `files`: what it reads, relative to the
    data dir (`dynafuse convert` records their checksums)."""
    def deco(fn):
        DATASETS[name] = fn
        DESCRIPTIONS[name] = description
        SOURCE_FILES[name] = tuple(files)
        return fn

    return deco


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """--data-dir, else $DYNAFUSE_DATA, else ../shared/datasets beside the working folder."""
    candidates = [data_dir, os.environ.get("DYNAFUSE_DATA"), Path.cwd().parent / "shared" / "datasets"]
    for c in candidates:
        if c:
            p = Path(c).expanduser()
            if not p.is_dir():
                raise DataError("data directory does not exist (set --data-dir or DYNAFUSE_DATA)", p)
            return p
    raise DataError("no data directory: pass --data-dir or set DYNAFUSE_DATA")


def reader_of(name: str) -> Callable[..., Bundle]:
    """The function that builds dataset `name` (a registered name or FORMAT:PATH); ConfigError when unknown."""
    if ":" in name:
        fmt = name.split(":", 1)[0]
        if fmt not in READERS:
            raise ConfigError(f"unknown data format {fmt!r}; known: {', '.join(sorted(READERS))}")
        return READERS[fmt]
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))} or FORMAT:PATH")
    return DATASETS[name]


def reader_options(name: str) -> list[str]:
    """The options (data.options.*) the reader of `name` takes, from its signature."""
    params = list(inspect.signature(reader_of(name)).parameters.values())[1:]  # the first is the path / data dir
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD]


def source_files(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The files dataset `name` is read from: a FORMAT:PATH's file (a MISA folder: its three files), or what a
    registered dataset declares under the data dir. ConfigError for an unknown name."""
    reader_of(name)
    if ":" not in name:
        return [resolve_data_dir(data_dir) / f for f in SOURCE_FILES[name]]
    path = Path(name.split(":", 1)[1]).expanduser()
    if name.startswith("misa:") and path.is_dir():
        return [path / f for f in MISA_FILES.values()]
    return [path]


def load_dataset(name: str, data_dir: str | Path | None = None, value_range: float | None = None,
                 clip_labels: bool = False, need: tuple[str, ...] = SPLITS, **options) -> Bundle:
    """Build a registered dataset, or read a user's file with `format:path` (e.g. `mmsa:aligned_50.pkl`).

    `options` are the reader's options; one set (not None / False) that this reader does not take is a
    ConfigError, so a setting never passes silently. `value_range` is the label scale: readers of user files take
    it, a registered dataset has its own and refuses another. Labels outside the scale are an error, or with
    `clip_labels` (data.options.clip_labels, any dataset) clipped into it and reported. Every split in `need` must
    be there and hold samples (checked here, before any work: one line naming the file and the split)."""
    read = reader_of(name)
    takes = reader_options(name)
    stray = [k for k, v in options.items() if v not in (None, False) and k not in takes]
    if stray:
        raise ConfigError(f"data.options.{stray[0]} does not apply to dataset {name!r} (its options: "
                          f"{', '.join(o for o in takes if o != 'value_range') or 'none'})")
    kwargs = {k: v for k, v in options.items() if k in takes and v is not None}
    if "value_range" in takes:
        kwargs["value_range"] = value_range
    bundle = read(name.split(":", 1)[1] if ":" in name else resolve_data_dir(data_dir), **kwargs)
    if value_range is not None and float(value_range) != bundle.value_range:
        raise ConfigError(f"dataset {name!r} has labels in [-{bundle.value_range:g}, {bundle.value_range:g}]; "
                          f"data.value_range={value_range:g} does not apply to it")
    check_splits(bundle, name, need)
    bundle.fit_labels(clip_labels, value_range)
    return bundle


def check_splits(bundle: Bundle, name: str, need: tuple[str, ...] = SPLITS) -> None:
    """Every split in `need` is there and holds samples; else one line naming the file and the split."""
    absent = [s for s in need if s not in bundle.splits]
    if absent:
        raise ConfigError(f"dataset {name!r} has no {' and '.join(map(repr, absent))} split (it holds "
                          f"{', '.join(map(repr, bundle.splits))}); training, eval and transfer need train, valid "
                          "and test" + ("; give the folder holding train.pkl, dev.pkl and test.pkl"
                                        if name.startswith("misa:") else ""), bundle.source)
    for s in need:
        if not len(bundle.splits[s]):
            raise DataError(f"split {s!r} has no rows; every split needs samples", bundle.source_of(s))


def _label_csv_splits(table: dict, modes: np.ndarray | None = None) -> dict[str, Split]:
    modes = table["mode"] if modes is None else modes
    splits = {}
    for s in SPLITS:
        idx = np.nonzero(modes == s)[0]
        splits[s] = Split(
            ids=table["ids"][idx], y=table["label"][idx], raw_text=table["text"][idx],
            unimodal={m: table[c][idx] for m, c in UNI_COLUMNS.items() if c in table},
        )
    return splits


def _text_only(folder: str, value_range: float, default_text_column: str = "text"):
    def build(data_dir: Path, text_column: str = default_text_column) -> Bundle:
        path = data_dir / folder / "label.csv"
        table = read_label_csv(path, text_column=text_column)
        return Bundle(name=folder, splits=_label_csv_splits(table), value_range=value_range, source=str(path))

    return build


register_dataset("mosei", "CMU-MOSEI, text only (transcripts), [-3, 3], official split 16274/1861/4653",
                 ("mosei/label.csv",))(
    _text_only("mosei", 3.0))
register_dataset("sims", "CH-SIMS, text only (text_en by default), [-1, 1], official split 1368/456/457",
                 ("sims/label.csv",))(
    _text_only("sims", 1.0, "text_en"))
register_dataset("simsv2", "CH-SIMSv2 (s), text only (text_en by default) + unimodal labels T/A/V, [-1, 1]",
                 ("simsv2/label.csv",))(
    _text_only("simsv2", 1.0, "text_en"))

LEAKY = {"text_cnn": "text", "vision": "video"}


def _utterance_features(data_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = data_dir / "mosi" / "utterance_features.npz"
    z = read_npz(path, ("ids", "transcript", "label", "split_std", "split_bclstm", "text", "audio", "video"))
    n = len(z["ids"])
    for k, v in z.items():
        if len(v) != n:
            raise DataError(f"inconsistent lengths: {n} ids but {len(v)} rows in {k!r}", path)
    return path, z


def _vector(split_rows: np.ndarray, vec: np.ndarray, path: Path, what: str,
            ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One utterance vector per clip, as a length-1 sequence (float32; overflow is an error naming the ids)."""
    return (to_float32(vec[split_rows], path, what, ids)[:, None, :],
            np.ones(len(split_rows), dtype=np.int64))


@register_dataset("mosi", "CMU-MOSI official split 1284/229/686: text (transcripts) + audio (openSMILE utterance "
                          "vectors); the leaky text/video vectors are refused",
                  ("mosi/label.csv", "mosi/utterance_features.npz"))
def mosi(data_dir: Path, modalities=("text", "audio")) -> Bundle:
    for m in modalities:
        if m in LEAKY or m not in ("text", "audio"):
            raise ConfigError(
                f"modality {m!r} is refused on the official MOSI split: the {LEAKY.get(m, m)!r} vectors in "
                "utterance_features.npz come from a network trained on the split_bclstm train set, which "
                "overlaps the official test set, so they leak test labels. Use --dataset mosi-bclstm.")
    csv_path = data_dir / "mosi" / "label.csv"
    table = read_label_csv(csv_path)
    splits = _label_csv_splits(table)
    if "audio" in modalities:
        npz_path, z = _utterance_features(data_dir)
        row = {k: i for i, k in enumerate(z["ids"])}
        for s in splits.values():
            missing = [i for i in s.ids if i not in row]
            if missing:
                raise DataError(f"{len(missing)} clips of label.csv have no features (first: {missing[0]})", npz_path)
            s.features["audio"], s.lengths["audio"] = _vector(np.array([row[i] for i in s.ids], dtype=np.int64),
                                                              z["audio"], npz_path, "audio", s.ids)
            s.check(npz_path)  # only the vectors used must be clean
    return Bundle(name="mosi", splits=splits, value_range=3.0, source=str(csv_path))


def _carve_valid(video_ids: np.ndarray, share: float = 0.15) -> np.ndarray:
    """Deterministic, speaker-disjoint: a video goes to valid when the hash of its id falls under `share`."""
    h = np.array([int(hashlib.sha1(v.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF for v in video_ids])
    return h < share


@register_dataset("mosi-bclstm", "CMU-MOSI speaker-independent split (1447 train / 752 test): text, audio (openSMILE) "
                                 "and vision (3D-CNN) vectors; valid carved from train by video id",
                  ("mosi/utterance_features.npz",))
def mosi_bclstm(data_dir: Path, text_source: str = "transcript", valid_share: float = 0.15) -> Bundle:
    path, z = _utterance_features(data_dir)
    video_ids = np.array([i.rsplit("_", 1)[0] for i in z["ids"]])
    modes = z["split_bclstm"].astype(str).copy()
    modes[(modes == "train") & _carve_valid(video_ids, valid_share)] = "valid"
    splits = {}
    for s in SPLITS:
        rows = np.nonzero(modes == s)[0]
        ids = z["ids"][rows]
        split = Split(ids=ids, y=to_float32(z["label"][rows], path, "label", ids), raw_text=z["transcript"][rows])
        split.features["audio"], split.lengths["audio"] = _vector(rows, z["audio"], path, "audio", ids)
        split.features["vision"], split.lengths["vision"] = _vector(rows, z["video"], path, "video", ids)
        if text_source == "cnn":
            split.features["text"], split.lengths["text"] = _vector(rows, z["text"], path, "text", ids)
        elif text_source != "transcript":
            raise ConfigError(f"data.options.text_source must be 'transcript' or 'cnn', not {text_source!r}")
        split.check(path)
        splits[s] = split
    return Bundle(name="mosi-bclstm", splits=splits, value_range=3.0, source=str(path),
                  notes=["valid = train videos whose sha1(video_id) falls in the lowest 15% (speaker-disjoint)"])


SCORE_COLUMNS = {"text": "pred_t", "audio": "pred_a", "vision": "pred_v"}


def simsv2_unimodal_scores(data_dir: str | Path, columns: tuple[str, ...] = tuple(SCORE_COLUMNS.values()),
                           text_column: str = "text_en") -> tuple[dict, dict[str, np.ndarray], Path]:
    """`simsv2/label.csv` and the `columns` of `simsv2/unimodal_scores.csv` aligned to it: (label table, {column:
    (N,) float32 scores in label.csv's row order}, scores path). Only `pred_v` may be empty (no face: NaN); every
    score lies in [-1, 1]; every clip of label.csv has its scores; where the scores file has a `mode` column it
    must give each clip the same split as label.csv (scores made on another split would put in-sample scores on
    test). DataError naming the file otherwise."""
    data_dir = Path(data_dir)
    csv_path, scores_path = data_dir / "simsv2" / "label.csv", data_dir / "simsv2" / "unimodal_scores.csv"
    table = read_label_csv(csv_path, text_column=text_column)
    scores = read_score_table(scores_path, columns, may_be_blank=("pred_v",), value_range=1.0)
    row = {k: i for i, k in enumerate(scores["ids"])}
    missing = [i for i in table["ids"] if i not in row]
    if missing:
        raise DataError(f"{len(missing)} clips of {csv_path.name} have no scores (first: {missing[0]})", scores_path)
    order = np.array([row[i] for i in table["ids"]])
    if "mode" in scores:
        mode = scores["mode"][order]
        other = mode != table["mode"]
        if other.any():
            k = int(np.flatnonzero(other)[0])
            raise DataError(f"{int(other.sum())} clips are in another split than in {csv_path.name} (first: "
                            f"{table['ids'][k]}: {str(mode[k])!r} here, {str(table['mode'][k])!r} there)", scores_path)
    return table, {c: scores[c][order] for c in columns}, scores_path


@register_dataset("simsv2-scores", "CH-SIMSv2 (s) with real audio and video signal: audio = pred_a, vision = pred_v "
                                   "(released unimodal models' scores, 1 value per clip; no face: missing), text = "
                                   "transcripts (text_en) or pred_t; label_T/A/V kept; [-1, 1]. Train-split scores "
                                   "are in-sample: select on valid",
                  ("simsv2/label.csv", "simsv2/unimodal_scores.csv"))
def simsv2_scores(data_dir: Path, text_column: str = "text_en", text_source: str = "transcript") -> Bundle:
    """CH-SIMSv2 with `simsv2/unimodal_scores.csv`: the scores of three released unimodal models (a video
    transformer trained on label_V, an audio and a text model) as one-step audio / vision features (N, 1, 1). An
    empty `pred_v` (no face found) is a missing vision modality (length 0, an all-false mask).
    `text_source`: transcript (the text through the run's backbone, as every dataset here) | pred_t (the text
    model's score, a one-step feature, instead). Caution (datasets README): the unimodal models were trained on the
    train split, so train-split scores are in-sample and more accurate than on valid/test; valid selects."""
    if text_source not in ("transcript", "pred_t"):
        raise ConfigError(f"data.options.text_source must be 'transcript' or 'pred_t', not {text_source!r}")
    mods = ["audio", "vision"] + (["text"] if text_source == "pred_t" else [])
    table, scores, scores_path = simsv2_unimodal_scores(data_dir, tuple(SCORE_COLUMNS[m] for m in mods),
                                                       text_column)
    splits = _label_csv_splits(table)
    for s, split in splits.items():
        for m in mods:
            v = scores[SCORE_COLUMNS[m]][table["mode"] == s]
            known = np.isfinite(v)
            split.features[m] = np.where(known, v, 0.0).astype(np.float32)[:, None, None]
            split.lengths[m] = known.astype(np.int64)
        split.check(scores_path)
    notes = ["audio/vision (and text with text_source=pred_t) are released unimodal models' scores on CH-SIMSv2; "
             "their train-split values are in-sample (the models were trained on it): valid selects",
             f"{int(sum((s.lengths['vision'] == 0).sum() for s in splits.values()))} clips have no face (pred_v "
             "empty): vision is missing for them"]
    return Bundle(name="simsv2-scores", splits=splits, value_range=1.0, source=str(scores_path), notes=notes)
