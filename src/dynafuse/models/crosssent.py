"""CrossSent: cross-modal attention with pairwise ranking regularisation (Liu et al., Electronics 2026, 15(6) 1157).

A fine-tuned text backbone carries the sentiment; a Gated Multi-modal Residual Adapter (GMRA, Sec. 3.2) is
plugged in after one of its layers (`inject_layer`) and injects audio/vision cues into every text token:
- project audio and vision into the backbone's hidden size (Sec. 3.2.1);
- cross-modal multi-head attention, text tokens as Query, the concatenated audio+vision steps as Key/Value
  (Sec. 3.2.2), giving an injected signal Z aligned to the text timeline;
- a token-wise, element-wise sigmoid gate g = sigmoid(W_g [H_t; Z] + b_g) and the gated residual
  H_t + g * Z (Sec. 3.2.3), refined by a residual bottleneck adapter.
The backbone's remaining layers run on top, the final states are mean-pooled into a regression head.
Training adds two ordinal regularisers to the MSE loss, each ramped in on a cosine schedule (Sec. 3.3-3.4, 4.2):
MPR (in-batch pairwise ranking with a label-gap threshold and an adaptive margin) and EIOI (zero inside a
tolerance band). Both live in `dynafuse.losses`.

A sample without audio and vision (a text-only dataset, a missing camera) passes the GMRA unchanged, so its
path is exactly the plain fine-tuned backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .. import losses
from ..config import ModelConfig, at_least, one_of, positive
from ..errors import ConfigError
from .base import TOKEN_IDS, ModelOutput, MSAModel, register_model
from .blocks import Adapter, Head, keep_one_key, masked_mean


@dataclass
class CrossSentConfig(ModelConfig):
    """The paper's Tables 2-3 (hyper-parameters) are not in the text we have; what the prose fixes is marked
    "paper", the rest are our choices for MiniLM-L6 on 2 CPU cores, marked "ours"."""

    gmra: bool = True  # false: w/o GMRA (the fine-tuned text backbone + head alone)
    inject_layer: Optional[int] = at_least(4, 0, "ours: GMRA after backbone layer 4 of 6 (0 = on the embeddings; "
                                                 "null = after the last layer); the paper injects once")
    gmra_heads: Optional[int] = positive(None, "attention heads in GMRA; null = the backbone's (12 for MiniLM)")
    # ours: Table 4's +8.89M GMRA weights on a 1024-d backbone fit attention + gate at hidden size with a ~hidden/2
    # bottleneck; null = hidden / 2 (192 for MiniLM)
    adapter_dim: Optional[int] = positive(None, "adapter bottleneck")
    pool: str = one_of("mean", "mean", "cls", doc="mean of the final valid token states (MiniLM is trained for it)")
    # paper: the whole backbone is fine-tuned (null). The CPU option `finetune_layers=2` trains only the 2 layers
    # above the injection point (+ GMRA, head): ~27 vs ~47 CPU-s per MOSI epoch (1 thread); experiment files say
    # which they use
    finetune_layers: Optional[int] = at_least(None, 0, "train only the backbone's top N layers")
    mpr: bool = True  # Monotonic Pairwise Ranking (Sec. 3.3)
    mpr_weight: float = at_least(0.1, 0.0, "ours (lambda_1); ramps in with `ramp`")
    mpr_threshold: float = at_least(0.5, 0.0, "ours (delta): pairs with |y_i - y_j| > 0.5 on [-3, 3]")
    mpr_margin_scale: float = at_least(0.1, 0.0, "ours (alpha): margin = alpha * |y_i - y_j| ** beta")
    mpr_margin_power: float = at_least(1.0, 0.0, "ours (beta)")
    eioi: bool = True  # Error-Interval Ordinal Inconsistency (Sec. 3.4)
    eioi_weight: float = at_least(0.1, 0.0, "ours (lambda_2)")
    eioi_tolerance: float = at_least(0.25, 0.0, "ours (epsilon); the paper asks for a small band")
    ramp: float = at_least(0.3, 0.0, "paper: cosine ramp-up of the regulariser weights; ours: the first 30% of epochs")


class ModalityProjection(nn.Module):
    """Sec. 3.2.1: X'_m = X_m W_m + b_m, each non-text modality into the backbone's hidden size."""

    def __init__(self, dims: dict[str, int], d_model: int, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(d, d_model) for m, d in dims.items()})
        self.drop = nn.Dropout(dropout)

    def forward(self, av: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """{m: (x (B,T_m,D_m), mask (B,T_m))} -> concatenated keys (B, sum T_m, d) and their mask."""
        keys = [self.drop(self.proj[m](x)) * mask.unsqueeze(-1) for m, (x, mask) in av.items()]
        return torch.cat(keys, 1), torch.cat([mask for _, mask in av.values()], 1)


class CrossModalAttention(nn.Module):
    """Sec. 3.2.2: Z = MultiHead(H_t W_Q, [A';V'] W_K, [A';V'] W_V) W_O, text tokens as Query.

    Unlike blocks.CrossAttention it returns the injected signal alone (no residual, no LayerNorm): the gate of
    Sec. 3.2.3 acts on Z before it is added. A sample with no audio/vision key gets Z = 0 and zero weights.
    Returns Z (B, Tq, d) and the head-averaged attention weights (B, Tq, Tk).
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.1):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)

    def forward(self, h: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        has_keys = kv_mask.any(1)
        z, w = self.attn(h, kv, kv, key_padding_mask=~keep_one_key(kv_mask), need_weights=True)  # zeroed below
        keep = has_keys[:, None, None].to(z.dtype)
        return z * keep, w * keep


class InjectionGate(nn.Module):
    """Sec. 3.2.3: g = sigmoid(W_g [H_t; Z] + b_g), one gate per token and feature (B, T, d)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(2 * d_model, d_model)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.proj(torch.cat([h, z], -1)))


class GMRA(nn.Module):
    """Gated Multi-modal Residual Adapter (Sec. 3.2): H = Adapter(H_t + g * Z).

    Samples without any audio/vision step get H_t back exactly (the adapter is skipped too), so the text path of
    a text-only sample is the plain backbone. Also returns what the gates report (see `CrossSent.forward`).
    """

    def __init__(self, dims: dict[str, int], d_model: int, heads: int, adapter_dim: int, dropout: float = 0.1):
        super().__init__()
        self.modalities = list(dims)
        self.project = ModalityProjection(dims, d_model, dropout)
        self.cross = CrossModalAttention(d_model, heads, dropout)
        self.gate = InjectionGate(d_model)
        self.adapter = Adapter(d_model, adapter_dim, dropout)

    def forward(self, h: torch.Tensor, av: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, dict]:
        kv, kv_mask = self.project(av)
        z, attn = self.cross(h, kv, kv_mask)
        g = self.gate(h, z)
        injected = g * z
        fused = self.adapter(h + injected)
        has_av = kv_mask.any(1)
        out = torch.where(has_av[:, None, None], fused, h)  # nothing to inject: the exact text state
        # attention mass each text token puts on each modality's keys (sums to 1 over modalities when any is present)
        bounds = torch.tensor([0] + [x.shape[1] for x, _ in av.values()]).cumsum(0).tolist()
        share = torch.stack([attn[..., a:b].sum(-1) for a, b in zip(bounds[:-1], bounds[1:])], -1)  # (B, T, M')
        info = {"gate": g * has_av[:, None, None], "attn": attn, "share": share,
                "injected_norm": injected.norm(dim=-1), "text_norm": h.norm(dim=-1)}
        return out, info


@register_model("crosssent", "CrossSent: GMRA audio/vision injection into a fine-tuned text backbone, MSE + MPR + EIOI")
class CrossSent(MSAModel):
    """CrossSent over a Batch with text as token ids: ModelOutput with `gates["gmra"]` (B, 1), `gates["modality"]`
    (B, M: the injected share per modality, see `_explain`) and the GMRA attention."""

    Config = CrossSentConfig
    text_inputs = (TOKEN_IDS,)

    def __init__(self, input_dims: dict[str, int], cfg: CrossSentConfig, **context):
        super().__init__(input_dims, cfg, **context)
        if "text" not in self.modalities:
            raise ConfigError("crosssent needs text: its fusion injects audio/vision into a text backbone")
        if self.text_backbone is None:
            raise ConfigError("crosssent fine-tunes its text backbone and needs token ids, not text features: "
                              "set data.text.finetune=true (its preset does)")
        enc = self.text_backbone.encoder
        if not (hasattr(enc, "embeddings") and hasattr(getattr(enc, "encoder", None), "layer")):
            raise ConfigError(f"crosssent runs the backbone layer by layer and needs a BERT-style encoder "
                              f"(embeddings + encoder.layer); {type(enc).__name__} is not one")
        hidden = self.text_backbone.hidden_size
        n_layers = len(enc.encoder.layer)
        self.inject_layer = n_layers if cfg.inject_layer is None else cfg.inject_layer
        if not 0 <= self.inject_layer <= n_layers:
            raise ConfigError(f"model.inject_layer must be in [0, {n_layers}] for this backbone "
                              f"(0 = on the embeddings, {n_layers} = after the last layer), not {self.inject_layer}")
        self.pool = cfg.pool
        av_dims = {m: d for m, d in self.input_dims.items() if m != "text"}
        self.gmra = None
        if cfg.gmra and av_dims:  # w/o GMRA (or no audio/vision in the data): the text model alone
            heads = cfg.gmra_heads or enc.config.num_attention_heads
            self.gmra = GMRA(av_dims, hidden, heads, cfg.adapter_dim or hidden // 2, cfg.dropout)
        self.head = Head(hidden, self.out_dim, dropout=cfg.dropout)

    # ---- the text backbone, run layer by layer so the GMRA can sit between two layers

    @classmethod
    def text_cache_layers(cls, cfg: CrossSentConfig, depth: int) -> int:
        """With `finetune_layers=k` the bottom depth - k layers are frozen; below the GMRA injection point they see
        text only, so their output can be computed once per dataset."""
        if cfg.finetune_layers is None:
            return 0
        inject = depth if cfg.inject_layer is None else cfg.inject_layer
        return max(0, min(inject, depth - cfg.finetune_layers))

    def train(self, mode: bool = True):
        super().train(mode)
        enc = self.text_backbone.encoder
        if self.cfg.finetune_layers is not None:  # frozen layers run in eval mode, as their cached output was made
            enc.embeddings.eval()
            for layer in enc.encoder.layer[: len(enc.encoder.layer) - self.cfg.finetune_layers]:
                layer.eval()
        return self

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, av: dict) -> tuple[torch.Tensor, dict | None]:
        """Text tokens through the backbone with the GMRA between two of its layers: `ids` (B, T) token ids, or
        (B, T, H) float, the cached output of the first `text_cached_layers` (frozen) layers. -> (B, T, H), info."""
        enc = self.text_backbone.encoder
        start = self.text_cached_layers if ids.is_floating_point() else 0
        h = ids if start else enc.embeddings(input_ids=ids)
        # additive mask (B, 1, 1, T): works with eager and SDPA attention, and stays finite for an all-padding row
        ext = (~mask)[:, None, None, :].to(h.dtype) * torch.finfo(h.dtype).min
        # MPNet's layers take the relative position bias its encoder computes once from the sequence length
        extra = ({"position_bias": enc.encoder.compute_position_bias(h)}
                 if hasattr(enc.encoder, "compute_position_bias") else {})
        info = None
        for i, layer in enumerate(enc.encoder.layer):
            if i < start:
                continue
            if i == self.inject_layer and self.gmra is not None:
                h, info = self.gmra(h, av)
            h = layer(h, ext, **extra)
            h = h[0] if isinstance(h, tuple) else h  # transformers < 5 returns a tuple
        if self.inject_layer == len(enc.encoder.layer) and self.gmra is not None:
            h, info = self.gmra(h, av)
        return h, info

    def av_inputs(self, batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Standardised audio/vision features and masks; the text ids are run layer by layer in encode_text."""
        return {m: v for m, v in self.inputs(batch, run_backbone=False).items() if m != "text"}

    def forward(self, batch) -> ModelOutput:
        ids, mask = batch.x["text"], batch.mask["text"]
        h, info = self.encode_text(ids, mask, self.av_inputs(batch))
        fused = masked_mean(h, mask) if self.pool == "mean" else h[:, 0]
        logits = self.head(fused)
        with torch.no_grad():  # diagnostics only, nothing to back-propagate
            gates, attention, extras = self._explain(h, mask, info)
        return ModelOutput(pred=self.to_pred(logits), logits=logits, gates=gates, attention=attention,
                           fused=fused, extras=extras)

    def _explain(self, h: torch.Tensor, mask: torch.Tensor, info: dict | None) -> tuple[dict, dict, dict]:
        """gates["gmra"] (B, 1): mean injection gate over valid tokens and features (0 when nothing is injected).

        gates["modality"] (B, M), columns in self.modalities order, rows sum to 1: per valid text token, the share
        r = |g*Z| / (|H_t| + |g*Z|) of the GMRA input that is injected (L2 norms); text gets 1 - r, and r is split
        between audio and vision by the attention mass the token puts on their keys; averaged over tokens. It
        measures magnitude, not causal importance, and ignores the adapter's refinement.
        """
        b = h.shape[0]
        if info is None:
            text_only = torch.zeros(b, len(self.modalities), device=h.device)
            text_only[:, 0] = 1.0  # text is self.modalities[0]
            return {"gmra": torch.zeros(b, 1, device=h.device), "modality": text_only}, {}, {}
        valid = mask.clone()
        valid[~valid.any(1)] = True  # a sample without text: average over all positions instead of none
        gate_tok = info["gate"].mean(-1)  # (B, T)
        inj = info["injected_norm"]
        r = inj / (info["text_norm"] + inj).clamp_min(1e-12)
        share = info["share"] * r.unsqueeze(-1)  # (B, T, M-1)
        per_tok = torch.cat([(1 - r).unsqueeze(-1), share], -1)
        modality = masked_mean(per_tok, valid)
        attention = {"gmra": info["attn"]}
        return ({"gmra": masked_mean(gate_tok.unsqueeze(-1), valid), "modality": modality}, attention,
                {"gmra_gate_tokens": gate_tok})

    # ---- losses: MSE (train.loss=mse) + the ordinal regularisers, ramped in (Sec. 3.3, 3.4, 4.2)

    def ordinal_view(self, out: ModelOutput, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(score, target) the ordinal terms compare: the regression output and label, or for the 3-class task
        the expected level probs @ [-1, 0, 1] against the class level in {-1, 0, 1}."""
        if self.task == "regression":
            return out.logits.squeeze(-1), batch.y
        return self.score(out.logits), (losses.score_to_class(batch.y) - 1).to(out.logits.dtype)

    def mpr_term(self, out, batch, task=None, kind=None) -> torch.Tensor:
        c = self.cfg
        # thresholds are set on the [-3, 3] scale; a [-1, 1] dataset (SIMS) shrinks them to match
        return losses.mpr_loss(*self.ordinal_view(out, batch), threshold=c.mpr_threshold * self.label_scale,
                               margin_scale=c.mpr_margin_scale, margin_power=c.mpr_margin_power)

    def eioi_term(self, out, batch, task=None, kind=None) -> torch.Tensor:
        return losses.eioi_loss(*self.ordinal_view(out, batch), tolerance=self.cfg.eioi_tolerance * self.label_scale)

    def loss_terms(self):
        ramp = losses.cosine_ramp(self.progress, self.cfg.ramp)  # the weights rise from 0 to w
        terms = {}
        if self.cfg.mpr:
            terms["mpr"] = (self.cfg.mpr_weight * ramp, self.mpr_term)
        if self.cfg.eioi:
            terms["eioi"] = (self.cfg.eioi_weight * ramp, self.eioi_term)
        return terms
