"""Early, late and multi-head-attention fusion over per-modality transformers (arXiv 2501.08085).

Each modality has its own `ModalityEncoder` (the paper's ModalityTransformer). The fusion strategies:
- A0 late fusion: one head per modality; regression averages their scores, the 3-class task takes a
  majority vote (ties go to the highest mean probability);
- A1 early fusion: concatenate the final states, then one head;
- A2 multi-head attention: self-attention over the modality states, then one head.
A unimodal model is early fusion over a single modality.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import losses
from .base import ModelOutput, MSAModel, register_model
from .blocks import Head, ModalityEncoder


class ModalityEncoders(nn.Module):
    """One ModalityEncoder per modality, and the presence of each modality per sample."""

    def __init__(self, dims: dict[str, int], cfg: dict):
        super().__init__()
        d = cfg.get("d_model", 64)
        self.enc = nn.ModuleDict({m: ModalityEncoder(dim, d, cfg.get("layers", 1), cfg.get("heads", 4),
                                                     cfg.get("dropout", 0.1)) for m, dim in dims.items()})

    def forward(self, inputs: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        seq, state, present = {}, {}, {}
        for m, (x, mask) in inputs.items():
            seq[m], state[m] = self.enc[m](x, mask)
            present[m] = mask.any(1)
        return seq, state, present


class Fusion2501(MSAModel):
    def __init__(self, input_dims: dict[str, int], cfg: dict):
        super().__init__(input_dims, cfg)
        self.fusion = cfg.get("fusion", "early")
        d = cfg.get("d_model", 64)
        self.encoders = ModalityEncoders(self.input_dims, cfg)
        drop = cfg.get("dropout", 0.1)
        if self.fusion == "late":
            self.heads = nn.ModuleDict({m: Head(d, self.out_dim, dropout=drop) for m in self.modalities})
        elif self.fusion == "early":
            self.head = Head(d * len(self.modalities), self.out_dim, dropout=drop)
        elif self.fusion == "attention":
            self.attn = nn.MultiheadAttention(d, cfg.get("fusion_heads", 4), dropout=drop, batch_first=True)
            self.norm = nn.LayerNorm(d)
            self.head = Head(d, self.out_dim, dropout=drop)
        else:
            raise ValueError(f"fusion must be late, early or attention, not {self.fusion!r}")

    def forward(self, batch) -> ModelOutput:
        _, state, present = self.encoders(self.inputs(batch))
        if self.fusion == "late":
            return self._late(state, present)
        if self.fusion == "early":
            fused = torch.cat([state[m] for m in self.modalities], dim=-1)  # missing modality -> zeros
            logits = self.head(fused)
            return ModelOutput(pred=self.to_pred(logits), logits=logits, fused=fused)
        tokens = torch.stack([state[m] for m in self.modalities], dim=1)  # (B, M, d)
        avail = torch.stack([present[m] for m in self.modalities], dim=1)
        avail[~avail.any(1), 0] = True  # a sample with nothing at all attends to a zero token
        h, attn = self.attn(tokens, tokens, tokens, key_padding_mask=~avail, need_weights=True)
        h = self.norm(h + tokens)
        fused = (h * avail.unsqueeze(-1)).sum(1) / avail.sum(1, keepdim=True)
        logits = self.head(fused)
        gates = {"modality": attn.mean(1)}  # (B, M): attention each modality receives, averaged over queries
        return ModelOutput(pred=self.to_pred(logits), logits=logits, fused=fused, gates=gates,
                           attention={"modality": attn})

    def _late(self, state, present) -> ModelOutput:
        uni = {m: self.heads[m](state[m]) for m in self.modalities}
        w = torch.stack([present[m] for m in self.modalities], 1).float()
        w[w.sum(1) == 0] = 1.0  # nothing present: fall back to every head
        w = w / w.sum(1, keepdim=True)
        stack = torch.stack([uni[m] for m in self.modalities], 1)  # (B, M, out)
        if self.task == "regression":
            logits = (stack * w.unsqueeze(-1)).sum(1)
            pred = logits.squeeze(-1)
        else:
            probs = stack.softmax(-1)
            mean_prob = (probs * w.unsqueeze(-1)).sum(1)
            logits = mean_prob.clamp_min(1e-8).log()  # trained on the mean probability
            votes = (nn.functional.one_hot(stack.argmax(-1), 3).float() * w.unsqueeze(-1)).sum(1)
            pred = (votes + 1e-3 * mean_prob).argmax(-1) - 1  # majority vote; ties by mean probability
        return ModelOutput(pred=pred, logits=logits, unimodal=uni, gates={"modality": w})

    def loss_terms(self):
        if self.fusion != "late":
            return {}
        # Late fusion trains every modality's head on its own, as independent classifiers would be.
        return {"unimodal": (self.cfg.get("unimodal_weight", 1.0), losses.unimodal_task_loss)}


register_model("early_fusion", "2501.08085 A1: per-modality transformers, concatenated final states",
               fusion="early")(Fusion2501)
register_model("late_fusion", "2501.08085 A0: per-modality heads; mean score / majority vote", fusion="late")(Fusion2501)
register_model("attention_fusion", "2501.08085 A2: multi-head attention over the modality states",
               fusion="attention")(Fusion2501)
for _m in ("text", "audio", "vision"):
    register_model(f"unimodal_{_m}", f"2501.08085 unimodal baseline: the {_m} transformer alone",
                   fusion="early", modalities=[_m])(Fusion2501)
