"""`dynafuse convert SRC --out DIR`: any dataset dynafuse reads -> the folder `--dataset path:DIR` reads.

SRC is a registered dataset (`mosi`, `mosei`, `simsv2-scores`, ...) or FORMAT:PATH (`mmsa:unaligned_50.pkl`,
`mult:mosei_senti_data.pkl`, `misa:FOLDER`). It is read once, by its own reader (with the reader's checks and
options), and written as the folder format of `formats.read_path`:

    DIR/label.csv          id, video_id, clip_id, text, label, [label_T, label_A, label_V], mode: one row per
                           sample, the splits in order (train, valid, test), each a contiguous block. `id` keeps
                           the source's own ids (unique within a split; they may recur across splits, as the
                           readers allow); labels are written so that they read back to the same float32.
    DIR/<m>.npy            (N, T, D) float32, zero-padded past each length, for every modality the source has
                           features for: audio, vision, and text when the source ships text features (MMSA's
                           BERT, MulT's GloVe); otherwise text stays transcripts, encoded at train time.
    DIR/<m>_lengths.npy    (N,) int64 valid steps.
    DIR/meta.json          written last, so its presence means the folder is complete: format, version, the stored
                           `arrays` and their dims, value range, notes, `raw_text` (false: the source had no
                           transcripts), the dataset `preset` the source trains with, and the `source`: its name,
                           the reader options used, and each file's size and sha256. Also what the reader's checks
                           and the trainer's statistics found, so that a run need not pass over the arrays again:
                           `checked` (every feature value was checked finite) and `train_stats` (the train split's
                           per-dimension mean and std, `core.feature_stats`, exact float32 values; a run on a
                           subset, data.limit, computes its own).

Every file is written atomically. Training reads the arrays from disk row by row (`core.DiskArray`), so a run no
longer unpickles and holds the whole dataset; with the same seed and settings it gives the same numbers as from
the source. A target that already holds this conversion (same source checksums and options) is left as it is; a
target holding anything else is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from .. import __version__
from ..config import PRESETS, RunConfig, dataset_preset_name, merge_layer, parse_overrides, read_yaml, validate
from ..errors import ConfigError, DataError
from ..files import atomic_save_npy, atomic_write, atomic_write_csv, atomic_write_json
from .core import Bundle, row_chunks
from .formats import FEATURES_FORMAT, RUN_FOLDER, is_run_folder, watch_reads
from .registry import load_dataset, source_files
from .tables import SPLITS, UNI_COLUMNS

VERSION = 2  # 2: `arrays` lists the stored modalities (text may be one), label.csv may hold `id`
NOT_IDENTITY = ("allow_pickle",)  # options that permit reading, without changing what is read


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


def sha256_file(path: Path, bar=None) -> str:
    """The file's sha256 (hex), read 1 MiB at a time (a progress task on `bar`, a rich Progress, if given)."""
    task = bar.add_task(f"sha256 {path.name}", total=path.stat().st_size) if bar is not None else None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            if task is not None:
                bar.advance(task, len(block))
    return h.hexdigest()


def _source(src: str, data_dir, options: dict, value_range: float | None) -> dict:
    """What identifies a conversion, without the checksums yet: the dataset, its options and files (path, size)."""
    files = source_files(src, data_dir)
    for f in files:
        if not f.is_file():
            raise DataError("no such file (a source of the dataset to convert)", f)
    used = {k: v for k, v in sorted(options.items()) if v not in (None, False) and k not in NOT_IDENTITY}
    if value_range is not None:
        used["value_range"] = value_range
    return {"dataset": src, "options": used,
            "files": [{"path": str(f.resolve()), "bytes": f.stat().st_size} for f in files]}


def _same(a: dict, b: dict) -> bool:
    """The same conversion: the same reader, options and file contents (paths may differ: a moved copy)."""
    kind = lambda s: s["dataset"].split(":", 1)[0]  # noqa: E731
    strip = lambda s: [{k: v for k, v in f.items() if k != "path"} for f in s["files"]]  # noqa: E731
    return kind(a) == kind(b) and a["options"] == b["options"] and strip(a) == strip(b)


def _ours(name: str) -> bool:
    """A file name that `dynafuse convert` writes (or the temporary file of an atomic write)."""
    return name in ("label.csv", "meta.json") or name.endswith(".npy") or (name.startswith(".") and
                                                                           name.endswith(".tmp"))


def _target(out: Path, source: dict) -> dict | None:
    """None: `out` is free (absent, empty, or an unfinished conversion, whose files are removed); else the
    meta.json of a finished conversion that may be this one (its checksums still to compare). DataError when
    `out` holds anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise DataError("--out must be a folder; this is a file", out)
    names = sorted(p.name for p in out.iterdir())
    meta_path = out / "meta.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            held = meta["source"]
            ok = meta.get("format") == FEATURES_FORMAT and _same({**held, "files": [
                {k: v for k, v in f.items() if k != "sha256"} for f in held["files"]]}, source)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            ok, held = False, None
        if ok:
            return meta
        what = f"a conversion of {held['dataset']}" if isinstance(held, dict) and "dataset" in held else "other data"
        raise DataError(f"holds {what} (other data than {source['dataset']} with these options); choose another "
                        "--out, or delete this folder", out)
    foreign = [n for n in names if not _ours(n)]
    if foreign:
        raise DataError(f"holds other data ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                        "choose another --out, or an empty folder", out)
    for n in names:  # an unfinished conversion (no meta.json): start it over
        (out / n).unlink()
    return None


def exact_label(v: float) -> str:
    """A float32 label as text that reads back (float -> float32, as `tables.parse_floats` does) to the same
    float32: its shortest form when that holds, else the exact decimal of its double. NaN -> "" (unknown)."""
    v = np.float32(v)
    if np.isnan(v):
        return ""
    short = np.format_float_positional(v, unique=True, trim="-")
    return short if np.float32(float(short)) == v else repr(float(v))


def _id_parts(i: str) -> tuple[str, str]:
    """`<video_id>_<clip_id>` split at its last '_' (the MMSA convention); an id without one is its own video."""
    return tuple(i.rsplit("_", 1)) if "_" in i else (i, "")


def _check_ids(bundle: Bundle, source: str) -> None:
    """One row per id in each split (the folder's label.csv is keyed by split and id)."""
    for s, split in bundle.splits.items():
        ids, counts = np.unique(np.asarray(split.ids, dtype=str), return_counts=True)
        if (counts > 1).any():
            raise DataError(f"split {s!r} holds id {ids[counts > 1][0]!r} {counts.max()} times; the folder format "
                            "holds one row per id in each split", source)


def _write_labels(out: Path, bundle: Bundle) -> None:
    uni = [(m, c) for m, c in UNI_COLUMNS.items() if any(m in s.unimodal for s in bundle.splits.values())]
    rows = []
    for s in SPLITS:
        split = bundle.splits[s]
        text = split.raw_text if split.raw_text is not None else np.full(len(split), "")
        for k in range(len(split)):
            i = str(split.ids[k])
            rows.append([i, *_id_parts(i), str(text[k]), exact_label(split.y[k]),
                         *[exact_label(split.unimodal[m][k]) if m in split.unimodal else "" for m, _ in uni], s])
    atomic_write_csv(out / "label.csv", rows, ["id", "video_id", "clip_id", "text", "label", *[c for _, c in uni],
                                               "mode"], lineterminator="\n")


def _array_shape(bundle: Bundle, m: str, source: str) -> tuple[int, int]:
    """(T, D) of modality m over every split: the widest T (shorter splits are zero-padded), one D."""
    shapes = {s: (split.features[m].shape, split.features[m].dtype) for s, split in bundle.splits.items()}
    for s, (shape, dtype) in shapes.items():
        if len(shape) != 3 or dtype != np.float32:
            raise DataError(f"split {s!r}: {m} features are {dtype} {shape}, not float32 (N, T, D)", source)
    dims = {shape[2] for shape, _ in shapes.values()}
    if len(dims) > 1:
        raise DataError(f"{m} features have different dims across splits ({', '.join(f'{s}: {sh[2]}' for s, (sh, _) in shapes.items())})", source)
    return max(shape[1] for shape, _ in shapes.values()), dims.pop()


def _write_array(out: Path, bundle: Bundle, m: str, width: int, dim: int, bar) -> None:
    """<m>.npy (N, width, dim) float32 written block by block, then <m>_lengths.npy."""
    n = sum(len(s) for s in bundle.splits.values())
    task = bar.add_task(f"writing {m}.npy", total=n * width * dim * 4)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                     "fortran_order": False, "shape": (n, width, dim)})
            for s in SPLITS:
                for _, x in row_chunks(bundle.splits[s].features[m]):
                    if x.shape[1] < width:
                        x = np.concatenate([x, np.zeros((len(x), width - x.shape[1], dim), np.float32)], axis=1)
                    f.write(np.ascontiguousarray(x).data)
                    bar.advance(task, x.nbytes)

    atomic_write(out / f"{m}.npy", write)
    lengths = np.concatenate([np.asarray(bundle.splits[s].lengths[m], dtype=np.int64) for s in SPLITS])
    atomic_save_npy(out / f"{m}_lengths.npy", lengths)


def convert_settings(src: str, overrides: list[str] = ()) -> tuple[dict, float | None, str | None]:
    """The reader options, value range and data dir for `src` as `dynafuse train` would take them: the dataset
    preset's data.options and data.value_range <- `overrides` (data.options.KEY=VALUE, data.value_range=R,
    data.data_dir=D), checked as a training config is. ConfigError for any other key."""
    over = parse_overrides(list(overrides))
    data = over.get("data") if isinstance(over.get("data"), dict) else {}
    stray = [k for k in over if k != "data"] + [f"data.{k}" for k in data if k not in ("options", "value_range",
                                                                                         "data_dir")]
    if stray:
        raise ConfigError(f"{stray[0]}: convert takes only data.options.KEY=VALUE, data.value_range=R and "
                          "data.data_dir=DIR (the rest is for training)")
    name = dataset_preset_name(src)
    preset = read_yaml(PRESETS / "datasets" / f"{name}.yaml").get("data") or {}
    cfg = merge_layer(OmegaConf.structured(RunConfig()),
                      {"data": {k: v for k, v in preset.items() if k in ("options", "value_range")}},
                      f"dataset preset {name}")
    cfg = merge_layer(cfg, over, "command-line override")
    validate(cfg)
    return OmegaConf.to_container(cfg.data.options), cfg.data.value_range, cfg.data.data_dir


def convert(src: str, out: str | Path, data_dir: str | Path | None = None, options: dict | None = None,
            value_range: float | None = None, progress: bool = True) -> dict:
    """Read dataset `src` once (a registered name or FORMAT:PATH, with the reader `options`, e.g. allow_pickle,
    text_column) and write it to `out` as the folder format (see the module docstring). Returns a summary:
    `done_before` is true when `out` already held this very conversion (nothing is written).

    Raises ConfigError for a `path:` source (already this format) or an unknown dataset or option, DataError when
    `out` holds other data, the source is a run folder or cannot be read (each naming the file)."""
    started = time.perf_counter()
    if src.startswith("path:") and is_run_folder(Path(src[5:]).expanduser()):
        raise DataError(RUN_FOLDER, src[5:])
    if src.startswith("path:"):
        raise ConfigError(f"{src}: a path: folder is already in the format convert writes (a dataset folder made "
                          "by extract or convert trains as it is); nothing to convert")
    out, options = Path(out).expanduser(), dict(options or {})
    source = _source(src, data_dir, options, value_range)
    held = _target(out, source)
    with _progress(progress) as bar:
        for f in source["files"]:
            f["sha256"] = sha256_file(Path(f["path"]), bar)
        if held is not None:
            if [f.get("sha256") for f in held["source"]["files"]] == [f["sha256"] for f in source["files"]]:
                return {**_summary(out, held, time.perf_counter() - started), "done_before": True}
            raise DataError(f"holds a conversion of {held['source']['dataset']} from files with other contents "
                            "(sha256 differs); choose another --out, or delete this folder", out)
        wrap = lambda f, p: bar.wrap_file(f, total=Path(p).stat().st_size, description=f"reading {Path(p).name}")  # noqa: E731
        with watch_reads(wrap):
            bundle = load_dataset(src, data_dir, value_range, **options)
        _check_ids(bundle, bundle.source)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for m in bundle.modalities:
            width, dim = _array_shape(bundle, m, bundle.source)
            _write_array(out, bundle, m, width, dim, bar)
            arrays[m] = {"dim": int(dim)}
    _write_labels(out, bundle)
    stats = {m: {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}  # float32 -> exact JSON
             for m, (mean, std) in bundle.feature_stats().items()}
    meta = {"format": FEATURES_FORMAT, "version": VERSION, "name": bundle.name, "value_range": bundle.value_range,
            "feature_spec": bundle.feature_spec, "arrays": arrays, "checked": True, "train_stats": stats,
            "raw_text": all(s.raw_text is not None for s in bundle.splits.values()),
            "preset": dataset_preset_name(src), "notes": bundle.notes,
            "counts": {"rows": sum(len(s) for s in bundle.splits.values()),
                       **{s: len(bundle.splits[s]) for s in SPLITS}},
            "source": source, "converted_by": f"dynafuse {__version__}"}
    atomic_write_json(out / "meta.json", meta)
    return {**_summary(out, meta, time.perf_counter() - started), "done_before": False}


def _summary(out: Path, meta: dict, seconds: float) -> dict:
    return {"out": str(out), "source": meta["source"]["dataset"], "counts": meta["counts"], "seconds": seconds,
            "arrays": {m: a["dim"] for m, a in meta["arrays"].items()}, "raw_text": meta["raw_text"],
            "bytes": sum((out / f"{m}.npy").stat().st_size for m in meta["arrays"]),
            "sha256": {Path(f["path"]).name: f["sha256"] for f in meta["source"]["files"]}}


def print_summary(summary: dict) -> None:
    from rich.console import Console

    c, n = Console(soft_wrap=True), summary["counts"]  # paths stay whole, to copy
    files = ", ".join(f"{name} sha256 {h[:12]}..." for name, h in summary["sha256"].items())
    if summary["done_before"]:
        c.print(f"{summary['out']} already holds {summary['source']} ({files}): nothing to do")
    else:
        arrays = ", ".join(f"{m} ({d}-d)" for m, d in summary["arrays"].items()) or "none (transcripts only)"
        c.print(f"converted {summary['source']} ({files}) in {summary['seconds']:.1f} s: {n['rows']} rows "
                f"(train {n['train']}, valid {n['valid']}, test {n['test']}); arrays {arrays}, "
                f"{summary['bytes'] / 2**30:.2f} GiB")
    c.print(f"train on it with --dataset path:{summary['out']}")
