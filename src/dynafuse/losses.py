"""Loss terms. The task loss is shared; models name any extra terms through `loss_terms()`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def score_to_class(y: torch.Tensor) -> torch.Tensor:
    """The 3-class task's target: negative / neutral / positive as 0 / 1 / 2 (round half up on [-1, 1])."""
    return torch.floor(y.clamp(-1, 1) + 0.5).long() + 1


def task_loss(logits: torch.Tensor, y: torch.Tensor, task: str = "regression", kind: str = "l1") -> torch.Tensor:
    """Regression: L1 or MSE on the score; 3-class: cross-entropy on the discretised score."""
    if task == "3class":
        return F.cross_entropy(logits, score_to_class(y))
    pred = logits.squeeze(-1)
    return F.l1_loss(pred, y) if kind == "l1" else F.mse_loss(pred, y)


def per_modality_task_loss(out, batch, task: str = "regression", kind: str = "l1") -> torch.Tensor:
    """Mean over the per-modality heads (`out.unimodal`, each (B, 1) or (B, 3)) of each head's task loss against
    the multimodal label, on the samples that have its modality: 2501.08085's separately trained classifiers."""
    terms = []
    for m, logits in out.unimodal.items():
        keep = batch.present(m)
        if keep.any():
            terms.append(task_loss(logits[keep], batch.y[keep], task, kind))
    return torch.stack(terms).mean() if terms else out.logits.sum() * 0.0


def mpr_loss(pred: torch.Tensor, y: torch.Tensor, threshold: float = 0.5, margin_scale: float = 0.1,
             margin_power: float = 1.0) -> torch.Tensor:
    """CrossSent's Monotonic Pairwise Ranking over in-batch pairs.

    Only pairs whose label gap |y_i - y_j| exceeds `threshold` count (near-ties may be annotation noise).
    For such a pair the prediction gap must keep the label order by an adaptive margin that grows with the
    gap, m_ij = margin_scale * |y_i - y_j| ** margin_power:  loss_ij = max(0, m_ij - sign(y_i - y_j) (p_i - p_j)).
    Returns the mean over counted pairs (0 when there are none).
    """
    dy = y[:, None] - y[None, :]
    dp = pred[:, None] - pred[None, :]
    pairs = dy > threshold  # each unordered pair once, oriented so that y_i > y_j
    if not pairs.any():
        return pred.sum() * 0.0
    margin = margin_scale * dy[pairs].abs() ** margin_power
    return F.relu(margin - dp[pairs]).mean()


def eioi_loss(pred: torch.Tensor, y: torch.Tensor, tolerance: float = 0.25) -> torch.Tensor:
    """CrossSent's Error-Interval Ordinal Inconsistency: zero inside |p - y| <= tolerance, only the excess beyond."""
    return F.relu((pred - y).abs() - tolerance).mean()


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float = 0.1,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE (CPC): each query's positive is the key of the same sample; the batch's other keys are negatives.

    KuDA's correlation estimation uses it between the fused representation and each unimodal one.
    `valid` (B,) drops samples (e.g. a missing modality) from both sides.
    """
    if valid is not None:
        query, key = query[valid], key[valid]
    if len(query) < 2:
        return query.sum() * 0.0
    logits = F.normalize(query, dim=-1) @ F.normalize(key, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(query), device=query.device))


def cosine_ramp(progress: float, ramp: float = 0.3) -> float:
    """Weight multiplier that rises from 0 to 1 along half a cosine over the first `ramp` of training."""
    import math

    if ramp <= 0 or progress >= ramp:
        return 1.0
    return 0.5 * (1 - math.cos(math.pi * max(progress, 0.0) / ramp))
