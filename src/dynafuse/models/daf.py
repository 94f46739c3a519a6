"""DAF: Dynamic Attention Fusion over frozen utterance embeddings (Abdulhalim et al., arXiv 2509.22729).

Frozen encoders give one embedding per modality per utterance; DAF trains only what sits on top:
1. an utterance projection per modality: pool the frozen states (masked mean over tokens / frames; our
   utterance-level audio/vision features are length-1 sequences already), then Linear + LayerNorm + GELU +
   Dropout into a common d-dimensional space (the paper's per-modality projection, Sec. III);
2. a lightweight attention module that scores each projected modality from its own content,
   e_m = w^T tanh(W h_m + b), and normalises over the modalities the sample has, alpha = softmax_m(e_m)
   (the paper's dynamic attention weights);
3. the weighted sum z = sum_m alpha_m h_m, then a small prediction head.

`dynamic: false` is the paper's static-fusion comparison: the modality weights are still learned and still a
softmax over the present modalities, but come from a parameter vector, the same for every utterance.
The paper's unimodal baselines are `model.modalities=[text]` (one modality: alpha = 1, projection + head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..config import ModelConfig, in_range, positive
from .base import ModelOutput, MSAModel, register_model
from .blocks import Head, masked_mean, masked_softmax


class UtteranceProjection(nn.Module):
    """Sec. III, per-modality projection: frozen states (B, T, D_m) -> utterance embedding h_m (B, d).

    A sample without the modality gets h_m = 0, so its features cannot leak into the fusion.
    """

    def __init__(self, d_in: int, d_model: int, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(d_in, d_model), nn.LayerNorm(d_model), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = masked_mean(x, mask)  # one embedding per utterance, padding ignored
        return self.proj(pooled) * mask.any(1, keepdim=True)


class DynamicModalityAttention(nn.Module):
    """Sec. III, dynamic attention: e_m = w^T tanh(W h_m + b); alpha = softmax over present modalities.

    W, w are shared by the modalities (the h_m live in one common space), so the weights depend on the input.
    """

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(d_model, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """h (B, M, d), present (B, M) -> alpha (B, M)."""
        return masked_softmax(self.score(torch.tanh(self.proj(h))).squeeze(-1), present)


class StaticModalityWeights(nn.Module):
    """The paper's static-fusion ablation: alpha = softmax(theta) over present modalities, theta (M,) learned."""

    def __init__(self, n: int):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(n))  # starts as the plain mean over present modalities

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return masked_softmax(self.theta.expand(h.shape[0], -1), present)


@dataclass
class DAFConfig(ModelConfig):
    """The paper gives no layer sizes we could copy: one common space of 128 and dropout 0.2 are ours."""

    d_model: int = positive(128)  # the common space every modality is projected into
    dropout: float = in_range(0.2, 0.0, 1.0, high_open=True)  # in the projections and the head
    dynamic: bool = True  # true: input-conditioned modality weights (DAF); false: the paper's static fusion
    attn_hidden: Optional[int] = positive(None, "hidden size of the attention scorer w^T tanh(W h); null = d_model")


@register_model("daf", "2509.22729 DAF: frozen utterance embeddings, input-conditioned modality weights")
class DAF(MSAModel):
    """DAF over the modalities of a Batch: ModelOutput with `gates["modality"]` alpha (B, M) and the fused z."""

    Config = DAFConfig

    def __init__(self, input_dims: dict[str, int], cfg: DAFConfig, **context):
        super().__init__(input_dims, cfg, **context)
        d, drop = cfg.d_model, cfg.dropout
        self.dynamic = cfg.dynamic
        self.project = nn.ModuleDict({m: UtteranceProjection(dim, d, drop) for m, dim in self.input_dims.items()})
        if self.dynamic:
            self.attention = DynamicModalityAttention(d, cfg.attn_hidden or d)
        else:
            self.attention = StaticModalityWeights(len(self.modalities))
        self.head = Head(d, self.out_dim, dropout=drop)

    def forward(self, batch) -> ModelOutput:
        inputs = self.inputs(batch)
        h = torch.stack([self.project[m](*inputs[m]) for m in self.modalities], 1)  # (B, M, d)
        present = torch.stack([inputs[m][1].any(1) for m in self.modalities], 1)  # (B, M)
        alpha = self.attention(h, present)  # (B, M), columns in self.modalities order
        fused = (alpha.unsqueeze(-1) * h).sum(1)  # z = sum_m alpha_m h_m
        logits = self.head(fused)
        return ModelOutput(pred=self.to_pred(logits), logits=logits, gates={"modality": alpha}, fused=fused)
