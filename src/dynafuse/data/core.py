"""The in-memory data model: a `Split` of padded numpy arrays, a `Bundle` of splits, and the torch `Batch`.

Every reader, whatever the file format, produces a `Bundle`; every model consumes a `Batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError, warn

MODALITIES = ("text", "audio", "vision")  # the order every model and table uses
UNIMODAL_KEYS = {"text": "y_text", "audio": "y_audio", "vision": "y_vision"}


@dataclass
class Split:
    """One split. Sequences are stored padded, `(N, T, D)`, with their true lengths `(N,)`.

    A modality a sample lacks has length 0. Text may be stored as features (`features["text"]`)
    or, for a fine-tuned backbone, as token ids (`features["text"]` int64 `(N, L)`).
    """

    ids: np.ndarray
    y: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    unimodal: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (N,) labels
    raw_text: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> "Split":
        take = lambda d: {k: v[index] for k, v in d.items()}  # noqa: E731
        return Split(
            ids=self.ids[index],
            y=self.y[index],
            features=take(self.features),
            lengths=take(self.lengths),
            unimodal=take(self.unimodal),
            raw_text=None if self.raw_text is None else self.raw_text[index],
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
        for name, a in [("labels", self.y), *[(f"{k} features", v) for k, v in self.features.items()],
                        *[(f"{k} unimodal labels", v) for k, v in self.unimodal.items()]]:
            if np.issubdtype(a.dtype, np.floating):
                a = np.asarray(a, dtype=np.float32)
                bad = np.isinf(a) if "unimodal" in name else ~np.isfinite(a)
                if bad.any():
                    rows = np.unique(np.nonzero(bad)[0])
                    n_nan = int(np.isnan(a[bad]).sum())
                    raise DataError(f"{int(bad.sum())} NaN/Inf values in {name} ({n_nan} NaN, "
                                    f"{int(bad.sum()) - n_nan} Inf; first ids: "
                                    f"{', '.join(map(str, self.ids[rows[:3]]))})", source)
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


def feature_stats(split: Split, m: str, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std over the valid steps of modality m (chunked: features may be memory-mapped)."""
    feats, lengths = split.features[m], split.lengths[m]
    total, sq, n = 0.0, 0.0, 0
    for s in range(0, len(feats), chunk):
        x = np.asarray(feats[s:s + chunk], dtype=np.float64)
        valid = np.arange(x.shape[1])[None, :] < lengths[s:s + chunk, None]
        v = x[valid]
        total, sq, n = total + v.sum(0), sq + (v ** 2).sum(0), n + len(v)
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
