"""Corruptions of a `Batch`: a missing modality, feature noise, dropped tokens/frames, modality dropout.

Every corruption is a function Batch -> Batch that leaves its input untouched and is deterministic given a
`torch.Generator`. The same mask helper drives `modality_dropout`, the training-time augmentation
(`train.modality_dropout=P`), and the test-time robustness evaluation, so "a modality is missing" means one
thing in training and in testing: an all-false mask, features left in place.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .core import Batch


def set_missing(batch: Batch, rows: dict[str, torch.Tensor]) -> Batch:
    """Mark modality m missing (all-false mask) on the samples where `rows[m]` (B,) is true.
    Features stay as they are: a model must not read features under a false mask."""
    mask = dict(batch.mask)
    for m, r in rows.items():
        mask[m] = batch.mask[m] & ~r.to(batch.mask[m].device)[:, None]
    return replace(batch, mask=mask)


def drop_modalities(batch: Batch, modalities) -> Batch:
    """Every sample loses the given modalities."""
    return set_missing(batch, {m: torch.ones(len(batch), dtype=torch.bool) for m in modalities})


def add_noise(batch: Batch, modalities, level: float, std: dict[str, torch.Tensor],
              generator: torch.Generator) -> Batch:
    """x + level * std_m * N(0, 1) on valid positions only; `std[m]` (D,) is the train-split feature std,
    so a level means the same for every feature dimension."""
    if level == 0:
        return batch
    x = dict(batch.x)
    for m in modalities:
        v = batch.x[m]
        noise = torch.randn(v.shape, generator=generator) * std[m].to(v) * level
        x[m] = v + noise * batch.mask[m].unsqueeze(-1)
    return replace(batch, x=x)


def drop_positions(batch: Batch, modalities, level: float, generator: torch.Generator) -> Batch:
    """Each valid token/frame becomes invalid with probability `level`; a sample that had the modality keeps
    at least one position (its least likely dropped one), so noise never turns into a missing modality."""
    if level == 0:
        return batch
    mask = dict(batch.mask)
    for m in modalities:
        valid = batch.mask[m]
        r = torch.rand(valid.shape, generator=generator)
        kept = valid & (r >= level)
        keep_one = torch.nn.functional.one_hot(torch.where(valid, r, -1.0).argmax(1), valid.shape[1]).bool()
        lost = valid.any(1) & ~kept.any(1)
        mask[m] = kept | (keep_one & lost[:, None])
    return replace(batch, mask=mask)


def modality_dropout(batch: Batch, p: float, modalities, generator: torch.Generator | None = None) -> Batch:
    """Training augmentation: each sample drops each modality it has with probability p, but keeps at least
    one of them (a random one). Uses torch's global RNG unless given a generator (Lightning seeds it)."""
    present = torch.stack([batch.present(m) for m in modalities], 1)  # (B, M)
    # drawn where the generator lives (the CPU's global one by default: the same draws as ever), then moved to the
    # batch's device (a GPU in training)
    rand = lambda: torch.rand(present.shape, generator=generator).to(present.device)  # noqa: E731
    drop = (rand() < p) & present
    none_left = present.any(1) & ~(present & ~drop).any(1)
    pick = torch.where(present, rand(), -1.0).argmax(1)
    drop[none_left, pick[none_left]] = False
    return set_missing(batch, {m: drop[:, i] for i, m in enumerate(modalities)})
