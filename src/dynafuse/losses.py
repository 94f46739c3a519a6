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


def unimodal_task_loss(out, batch, task: str = "regression", kind: str = "l1") -> torch.Tensor:
    """Mean task loss of each per-modality head on the samples that have the modality.

    Uses the unimodal label (`y_text`...) where the dataset has it, the multimodal label elsewhere.
    """
    terms = []
    for m, logits in out.unimodal.items():
        keep = batch.present(m)
        y = batch.y_uni.get(f"y_{m}", batch.y)
        y = torch.where(torch.isnan(y), batch.y, y)  # an unknown unimodal label falls back to the main one
        if keep.any():
            terms.append(task_loss(logits[keep], y[keep], task, kind))
    return torch.stack(terms).mean() if terms else out.logits.sum() * 0.0
