"""The in-memory data model: a `Split` of padded numpy arrays, a `Bundle` of splits, and the torch `Batch`.

Every reader, whatever the file format, produces a `Bundle`; every model consumes a `Batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import DataError, warn

MODALITIES = ("text", "audio", "vision")  # the order every model and table uses
UNIMODAL_KEYS = {"text": "y_text", "audio": "y_audio", "vision": "y_vision"}
CHUNK_BYTES = 1 << 26  # what a pass over a whole array (checks, repairs) reads at a time: 64 MiB
STATS_ROWS = 2048  # rows per block of `feature_stats` (its sums' order: changing it changes the last digits)


@dataclass(frozen=True)
class DiskArray:
    """An `(N, ...)` array in a `.npy` file (C order), read by rows on demand: `a[rows]`, `a[rows, :t]` (the first
    t steps of each row only) and `np.asarray(a)` return numpy arrays; `a[i:j]` is a view of rows i..j-1 (no read).
    Read-only.

    The file is the memory-mappable `.npy` layout, but rows are read with positional file reads into fresh arrays
    instead of through a memory map: a map keeps every page a pass touches mapped into the process, so one check,
    statistics pass or epoch over MOSEI (8 GB unaligned) would leave its whole size counted as the process's
    resident memory. Here a process holds only the rows it asked for; the file's pages stay in the OS page cache,
    shared and reclaimable."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # byte offset of this view's first row in the file

    @classmethod
    def open(cls, path: str | Path) -> "DiskArray":
        """The whole array of a `.npy` file (numpy reads and checks its header). Raises DataError for a missing,
        corrupt or truncated file, or one stored in Fortran order."""
        try:
            m = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"corrupt or truncated .npy ({e})", path) from None
        if m.ndim > 1 and not m.flags.c_contiguous:
            raise DataError("stored in Fortran order; save it in C order (np.save of a C-ordered array)", path)
        return cls(str(path), tuple(m.shape), m.dtype, int(m.offset))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._read(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(rows, slice) and rows.step in (None, 1) and not rest:
            start, stop, _ = rows.indices(len(self))
            return DiskArray(self.path, (max(stop - start, 0), *self.shape[1:]), self.dtype,
                             self.offset + start * self.row_bytes)
        index = np.arange(len(self))[rows]  # numpy's own rules (negatives, masks, bounds) on the row numbers
        width = None  # a[rows, :t]: read only the first t steps of each row
        if len(rest) == 1 and isinstance(rest[0], slice) and rest[0].start in (None, 0) and rest[0].step in (None, 1) \
                and self.ndim > 1:
            width, rest = min(self.shape[1] if rest[0].stop is None else max(rest[0].stop, 0), self.shape[1]), ()
        out = self._read(np.atleast_1d(index), width)
        out = out[0] if index.ndim == 0 else out
        return out[rest if index.ndim == 0 else (slice(None), *rest)] if rest else out

    def _read(self, index: np.ndarray, width: int | None = None) -> np.ndarray:
        """Rows `index` (the first `width` steps of each) as a new array; consecutive rows in one read."""
        full = width is None or width == self.shape[1]
        inner = self.shape[1:] if full else (width, *self.shape[2:])
        out = np.empty((len(index), *inner), dtype=self.dtype)
        if not out.size:
            return out
        with open(self.path, "rb", buffering=0) as f:
            if full:
                cut = np.nonzero(np.diff(index) != 1)[0] + 1
                for a, b in zip(np.r_[0, cut], np.r_[cut, len(index)]):
                    self._read_into(f, self.offset + int(index[a]) * self.row_bytes, out[a:b])
            else:
                for i, r in enumerate(index):
                    self._read_into(f, self.offset + int(r) * self.row_bytes, out[i])
        return out

    def _read_into(self, f, position: int, out: np.ndarray) -> None:
        view = memoryview(out).cast("B")
        f.seek(position)
        while view:
            got = f.readinto(view)
            if not got:
                raise DataError("truncated .npy: the file ends before its rows do", self.path)
            view = view[got:]


def row_chunks(a, max_bytes: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """`(start, rows)` blocks of an `(N, ...)` array of at most `max_bytes` each (default CHUNK_BYTES), at least one
    row: a pass over a whole (possibly on-disk) array that holds one block at a time. Blocks of an in-memory
    array are views (edits go through)."""
    row = max(1, int(np.prod(a.shape[1:], dtype=np.int64)) * np.dtype(a.dtype).itemsize)
    step = max(1, (max_bytes or CHUNK_BYTES) // row)
    for s in range(0, len(a), step):
        yield s, np.asarray(a[s:s + step])


@dataclass
class Split:
    """One split. Sequences are stored padded, `(N, T, D)`, with their true lengths `(N,)`.

    A modality a sample lacks has length 0. Text may be stored as features (`features["text"]`)
    or, for a fine-tuned backbone, as token ids (`features["text"]` int64 `(N, L)`). Features may stay on disk
    (`DiskArray`): whatever passes over a whole array goes block by block (`row_chunks`, `feature_stats`).
    """

    ids: np.ndarray
    y: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    unimodal: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (N,) labels
    raw_text: np.ndarray | None = None
    # known before reading (a converted folder's, from when it was written): the feature values are finite (`check`
    # skips the scan), and modality -> (mean, std) of `feature_stats`; `subset` keeps the first, drops the second
    known_finite: bool = False
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> "Split":
        """The rows `index` of every array; on-disk features (`DiskArray`) stay on disk for a contiguous run of
        rows (e.g. data.limit's first N) and are read otherwise."""
        index = np.asarray(index)
        run = (index.ndim == 1 and len(index) and index[0] >= 0 and (np.diff(index) == 1).all()
               and slice(int(index[0]), int(index[-1]) + 1))
        take = lambda d: {k: v[run] if run and isinstance(v, DiskArray) else v[index]  # noqa: E731
                          for k, v in d.items()}
        return Split(
            ids=self.ids[index],
            y=self.y[index],
            features=take(self.features),
            lengths=take(self.lengths),
            unimodal=take(self.unimodal),
            raw_text=None if self.raw_text is None else self.raw_text[index],
            known_finite=self.known_finite,
        )

    def check(self, source: object) -> None:
        """Refuse inconsistent lengths and non-finite values, naming the source file."""
        n = len(self.ids)
        arrays = {"labels": self.y, **{f"{k} features": v for k, v in self.features.items()},
                  **{f"{k} lengths": v for k, v in self.lengths.items()},
                  **{f"{k} unimodal labels": v for k, v in self.unimodal.items()}}
        if self.raw_text is not None:
            arrays["raw text"] = self.raw_text
        for name, a in arrays.items():
            if len(a) != n:
                raise DataError(f"inconsistent lengths: {n} ids but {len(a)} {name}", source)
        # unimodal labels may be NaN (unknown for that sample), never Inf
        features = [] if self.known_finite else [(f"{k} features", v) for k, v in self.features.items()]
        for name, a in [("labels", self.y), *features, *[(f"{k} unimodal labels", v) for k, v in self.unimodal.items()]]:
            if np.issubdtype(a.dtype, np.floating):
                n_bad, n_nan, rows = 0, 0, []
                for start, x in row_chunks(a):  # features may be on disk: one block at a time
                    x = np.asarray(x, dtype=np.float32)
                    bad = np.isinf(x) if "unimodal" in name else ~np.isfinite(x)
                    if bad.any():
                        n_bad, n_nan = n_bad + int(bad.sum()), n_nan + int(np.isnan(x[bad]).sum())
                        rows += [start + r for r in np.unique(np.nonzero(bad)[0])[:3 - len(rows)]]
                if n_bad:
                    raise DataError(f"{n_bad} NaN/Inf values in {name} ({n_nan} NaN, {n_bad - n_nan} Inf; first "
                                    f"ids: {', '.join(map(str, self.ids[rows]))})", source)
        for k, v in self.lengths.items():
            width = self.features[k].shape[1] if k in self.features and self.features[k].ndim >= 2 else None
            if (v < 0).any() or (width is not None and (v > width).any()):
                raise DataError(f"{k} lengths out of range [0, {width}]", source)


def fill_missing(split: Split, modality: str, dim: int) -> None:
    """Give `split` the modality as missing for every sample: placeholders of the right kind under an all-false
    mask (zeros (N, 1, dim) float, or (N, 1) token ids when dim is 0), the path every model takes for a missing
    modality."""
    shape = (len(split), 1) if dim == 0 else (len(split), 1, dim)
    split.features[modality] = np.zeros(shape, dtype=np.int64 if dim == 0 else np.float32)
    split.lengths[modality] = np.zeros(len(split), dtype=np.int64)


def feature_stats(split: Split, m: str, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std `(D,)` float32 over the valid steps of modality m, summed in float64 (chunks of
    `chunk` rows, default STATS_ROWS: features may be on disk; the chunking fixes the order of the sums, so keep it
    for the same numbers). A split that knows its statistics (`Split.stats`) returns them."""
    if m in split.stats:  # computed this same way when the data was written (a converted folder)
        return split.stats[m]
    feats, lengths, chunk = split.features[m], split.lengths[m], chunk or STATS_ROWS
    total, sq, n = 0.0, 0.0, 0
    for s in range(0, len(feats), chunk):
        x = np.asarray(feats[s:s + chunk])
        valid = np.arange(x.shape[1])[None, :] < lengths[s:s + chunk, None]
        v = x[valid]
        del x  # the chunk's valid steps only, then in float64: the same values, half the memory
        v = v.astype(np.float64)
        total, n = total + v.sum(0), n + len(v)
        sq = sq + np.square(v, out=v).sum(0)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean ** 2, 0.0))
    return mean.astype(np.float32), np.where(std < 1e-6, 1.0, std).astype(np.float32)


@dataclass
class Bundle:
    """A dataset ready for training: named splits plus what a model needs to know about it."""

    name: str
    splits: dict[str, Split]
    value_range: float = 3.0  # labels live in [-value_range, value_range]
    source: str = ""
    notes: list[str] = field(default_factory=list)
    # how each modality's features were made (extractor, dim, layout); `dynafuse predict` uses a modality only
    # when it can make the same features from a clip
    feature_spec: dict = field(default_factory=dict)
    # text for a fine-tuned backbone given as the cached output of its first N (frozen) layers instead of token ids
    cached_text_layers: int = 0
    split_sources: dict[str, str] = field(default_factory=dict)  # a split read from its own file (MISA): that file

    def source_of(self, split: str) -> str:
        """The file a split was read from (for messages)."""
        return self.split_sources.get(split, self.source)

    def fit_labels(self, clip: bool = False, given: float | None = None) -> None:
        """Labels (and unimodal labels) outside [-value_range, value_range]: one DataError line saying how many,
        where, and the settings that work (`given`: the data.value_range the user set); or, with `clip`
        (data.options.clip_labels), clipped into the range, noted and printed."""
        r = self.value_range
        outside, values, first = [], [], []
        for s, split in self.splits.items():
            for m, y in (("", split.y), *split.unimodal.items()):
                bad = np.abs(np.nan_to_num(np.asarray(y, dtype=np.float64))) > r
                if not bad.any():
                    continue
                outside.append(f"{s}{f' {m}' if m else ''} {int(bad.sum())}")
                values.append(np.asarray(y)[bad])
                first += [str(i) for i in split.ids[bad][:3 - len(first)]]
                if clip and m:
                    split.unimodal[m] = np.clip(y, -r, r).astype(np.float32)
                elif clip:
                    split.y = np.clip(y, -r, r).astype(np.float32)
        if not outside:
            return
        values = np.concatenate(values)
        what = (f"{len(values)} labels outside [-{r:g}, {r:g}] (from {values.min():g} to {values.max():g}; "
                f"{', '.join(outside)}; first ids: {', '.join(first)})")
        if clip:
            self.notes.append(f"clipped {what} into the range (data.options.clip_labels)")
            warn(self.notes[-1], self.source)
            return
        fix = "set data.value_range=3, or " if given is not None and given < 3 and np.abs(values).max() <= 3 else ""
        raise DataError(f"{what}: {fix}rescale them in the file, or set data.options.clip_labels=true to clip "
                        "them into the range", self.source)

    @property
    def reference(self) -> Split:
        """The split that defines the feature layout: train, or the only one a single file holds."""
        return self.splits.get("train") or next(iter(self.splits.values()))

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.reference.features]

    def feature_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Train-split mean/std of every float modality (token ids have none)."""
        return {m: feature_stats(self.reference, m) for m, d in self.input_dims().items() if d}

    def unimodal_label_modalities(self) -> tuple[str, ...]:
        """The modalities the reference split has at least one known (finite) unimodal label for."""
        return tuple(m for m in MODALITIES if m in self.reference.unimodal
                     and np.isfinite(np.asarray(self.reference.unimodal[m], dtype=np.float64)).any())

    def input_dims(self) -> dict[str, int]:
        """Feature dim per modality; text given as token ids reports 0 (the model's backbone decides)."""
        dims = {}
        for m in self.modalities:
            a = self.reference.features[m]
            token_ids = a.ndim == 2 or (m == "text" and self.cached_text_layers)  # the backbone's own input
            dims[m] = 0 if token_ids else int(a.shape[-1])
        return dims


@dataclass
class Batch:
    """Padded tensors per modality: `x[m]` is `(B, T, D)` float (or `(B, T)` token ids for text),
    `mask[m]` is `(B, T)` bool. A modality a sample lacks has an all-false mask row."""

    x: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    y: torch.Tensor
    index: torch.Tensor
    y_uni: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def present(self, m: str) -> torch.Tensor:
        """(B,) bool: which samples have modality m at all."""
        if m not in self.mask:
            return torch.zeros(len(self.y), dtype=torch.bool, device=self.y.device)
        return self.mask[m].any(dim=1)


class SplitDataset(torch.utils.data.Dataset):
    """Yields row indices; `collate` gathers the rows from the (possibly memory-mapped) arrays."""

    def __init__(self, split: Split, modalities: list[str] | None = None):
        self.split = split
        self.modalities = modalities if modalities is not None else list(split.features)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, rows: list[int]) -> Batch:
        idx = np.asarray(rows)
        order = np.argsort(idx)  # memory-mapped reads are faster in order
        sorted_idx = idx[order]
        inverse = np.argsort(order)
        s = self.split
        x, mask = {}, {}
        for m in self.modalities:
            lengths = np.asarray(s.lengths[m][sorted_idx])[inverse]
            t = max(int(lengths.max()), 1)  # trim padding shared by the whole batch
            feats = np.asarray(s.features[m][sorted_idx, :t])[inverse]
            x[m] = torch.from_numpy(feats if feats.dtype == np.int64 else feats.astype(np.float32))
            mask[m] = torch.arange(t)[None, :] < torch.from_numpy(lengths.astype(np.int64))[:, None]
        y_uni = {UNIMODAL_KEYS[m]: torch.from_numpy(np.asarray(v[idx], dtype=np.float32))
                 for m, v in s.unimodal.items()}
        return Batch(x=x, mask=mask, y=torch.from_numpy(np.asarray(s.y[idx], dtype=np.float32)),
                     index=torch.from_numpy(idx.astype(np.int64)), y_uni=y_uni)


def pad_sequences(seqs: list[np.ndarray], max_len: int | None = None, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """List of `(T_i, D)` arrays -> padded `(N, T, D)` and lengths `(N,)`; longer ones are cut to max_len."""
    lengths = np.array([min(len(a), max_len or len(a)) for a in seqs], dtype=np.int64)
    t = max(int(lengths.max()) if len(seqs) else 1, 1)
    d = next((a.shape[1] for a in seqs if a.ndim == 2), 1)
    out = np.zeros((len(seqs), t, d), dtype=dtype)
    for i, (a, n) in enumerate(zip(seqs, lengths)):
        if n:
            out[i, :n] = a[:n]
    return out, lengths
