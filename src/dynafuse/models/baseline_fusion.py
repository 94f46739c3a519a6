"""The baselines of arXiv 2501.08085: early, late and multi-head-attention fusion over per-modality transformers.

Each modality has its own `ModalityEncoder` (the paper's ModalityTransformer). The fusion strategies:
- A0 late fusion: separately trained classifiers, one head per modality, each on its own loss only (no loss on
  their combination); regression averages their scores, the 3-class task takes a majority vote (ties go to the
  highest mean probability);
- A1 early fusion: concatenate the final states, then one head;
- A2 multi-head attention, "learned weights" over the modalities: multi-head self-attention over the modality
  states, then a learned query pools them with one softmax weight per modality (those weights are the
  `gates["modality"]` written out: the weights that combine the modality states; each state has already mixed
  in the others through the self-attention, so a weight is that of the states at modality m's position), then
  one head.
A unimodal model is early fusion over a single modality. The paper's own task (CMU-MOSEI, 3 classes,
cross-entropy, Adam) is the preset `--preset 2501.08085`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import losses
from ..config import ModelConfig, at_least, one_of, positive
from .base import ModelOutput, MSAModel, register_model
from .blocks import Head, ModalityEncoder, keep_one_key, presence_weights


@dataclass
class FusionConfig(ModelConfig):
    """2501.08085 gives no layer sizes; d_model 64, 1 layer, 4 heads (the ModelConfig defaults) are ours."""

    fusion: str = one_of("early", "early", "late", "attention", doc="A1 early | A0 late | A2 attention")
    fusion_heads: int = positive(4)  # heads of the A2 attention over the modality states
    unimodal_weight: float = at_least(1.0, 0.0, "late fusion: weight of each modality head's own loss")


class ModalityEncoders(nn.Module):
    """One ModalityEncoder per modality, and the presence of each modality per sample."""

    def __init__(self, dims: dict[str, int], cfg: ModelConfig):
        super().__init__()
        self.enc = nn.ModuleDict({m: ModalityEncoder(dim, cfg.d_model, cfg.layers, cfg.heads, cfg.dropout)
                                  for m, dim in dims.items()})

    def forward(self, inputs: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        seq, state, present = {}, {}, {}
        for m, (x, mask) in inputs.items():
            seq[m], state[m] = self.enc[m](x, mask)
            present[m] = mask.any(1)
        return seq, state, present


@register_model("unimodal_vision", "2501.08085 unimodal baseline: the vision transformer alone", benchmark=False,
                modalities=["vision"])
@register_model("unimodal_audio", "2501.08085 unimodal baseline: the audio transformer alone", benchmark=False,
                modalities=["audio"])
@register_model("unimodal_text", "2501.08085 unimodal baseline: the text transformer alone", modalities=["text"])
@register_model("attention_fusion", "2501.08085 A2: multi-head attention over the modality states",
                fusion="attention")
@register_model("late_fusion", "2501.08085 A0: per-modality heads; mean score / majority vote", fusion="late")
@register_model("early_fusion", "2501.08085 A1: per-modality transformers, concatenated final states")
class BaselineFusion(MSAModel):
    """Per-modality transformers + one of the paper's three fusion strategies (a unimodal model is early fusion
    over one modality). Input: a Batch; output: ModelOutput with `gates["modality"]` (B, M) for late and
    attention fusion."""

    Config = FusionConfig

    def __init__(self, input_dims: dict[str, int], cfg: FusionConfig, **context):
        super().__init__(input_dims, cfg, **context)
        self.fusion = cfg.fusion
        d, drop = cfg.d_model, cfg.dropout
        self.encoders = ModalityEncoders(self.input_dims, cfg)
        if self.fusion == "late":
            self.heads = nn.ModuleDict({m: Head(d, self.out_dim, dropout=drop) for m in self.modalities})
        elif self.fusion == "early":
            self.head = Head(d * len(self.modalities), self.out_dim, dropout=drop)
        elif self.fusion == "attention":
            self.attn = nn.MultiheadAttention(d, cfg.fusion_heads, dropout=drop, batch_first=True)
            self.norm = nn.LayerNorm(d)
            # one head and no attention dropout: its softmax weights are exactly how the modalities are combined
            self.pool_query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.pool = nn.MultiheadAttention(d, 1, batch_first=True)
            self.head = Head(d, self.out_dim, dropout=drop)

    def forward(self, batch) -> ModelOutput:
        _, state, present = self.encoders(self.inputs(batch))
        if self.fusion == "late":
            return self._late(state, present)
        if self.fusion == "early":
            fused = torch.cat([state[m] for m in self.modalities], dim=-1)  # missing modality -> zeros
            logits = self.head(fused)
            return ModelOutput(pred=self.to_pred(logits), logits=logits, fused=fused)
        tokens = torch.stack([state[m] for m in self.modalities], dim=1)  # (B, M, d)
        avail = keep_one_key(torch.stack([present[m] for m in self.modalities], dim=1))  # nothing: a zero token
        h, attn = self.attn(tokens, tokens, tokens, key_padding_mask=~avail, need_weights=True)
        h = self.norm(h + tokens)
        pooled, w = self.pool(self.pool_query.expand(len(h), -1, -1), h, h, key_padding_mask=~avail)
        fused = pooled.squeeze(1)
        logits = self.head(fused)
        gates = {"modality": w.squeeze(1)}  # (B, M): the pool's softmax weight of each modality state
        return ModelOutput(pred=self.to_pred(logits), logits=logits, fused=fused, gates=gates,
                           attention={"modality": attn})

    def _late(self, state, present) -> ModelOutput:
        uni = {m: self.heads[m](state[m]) for m in self.modalities}
        w = presence_weights(torch.stack([present[m] for m in self.modalities], 1))  # nothing: every head
        stack = torch.stack([uni[m] for m in self.modalities], 1)  # (B, M, out)
        if self.task == "regression":
            logits = (stack * w.unsqueeze(-1)).sum(1)
            pred = logits.squeeze(-1)
        else:
            probs = stack.softmax(-1)
            mean_prob = (probs * w.unsqueeze(-1)).sum(1)
            logits = mean_prob.clamp_min(1e-8).log()  # the combined output (no loss is taken on it)
            votes = (nn.functional.one_hot(stack.argmax(-1), 3).float() * w.unsqueeze(-1)).sum(1)
            pred = (votes + 1e-3 * mean_prob).argmax(-1) - 1  # majority vote; ties by mean probability
        return ModelOutput(pred=pred, logits=logits, unimodal=uni, gates={"modality": w})

    def loss_terms(self):
        if self.fusion != "late":
            return {}
        # Late fusion trains every modality's head on its own loss, as separately trained classifiers would be.
        return {"unimodal": (self.cfg.unimodal_weight, losses.per_modality_task_loss)}

    def task_weight(self, stage: str) -> float:
        """Late fusion takes no loss on the combined output (A0: separately trained classifiers, then a vote)."""
        return 0.0 if self.fusion == "late" else 1.0
