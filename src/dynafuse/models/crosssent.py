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

import torch
from torch import nn

from .. import losses
from ..errors import ConfigError
from .base import ModelOutput, MSAModel, register_model
from .blocks import Adapter, Head, masked_mean


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
        safe = kv_mask.clone()
        safe[~has_keys, 0] = True  # a dummy key instead of an all-masked softmax (NaN); zeroed below
        z, w = self.attn(h, kv, kv, key_padding_mask=~safe, need_weights=True)
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


class CrossSent(MSAModel):
    def __init__(self, input_dims: dict[str, int], cfg: dict):
        super().__init__(input_dims, cfg)
        if "text" not in self.modalities:
            raise ConfigError("crosssent needs text: its fusion injects audio/vision into a text backbone")
        if self.text_backbone is None:
            raise ConfigError("crosssent fine-tunes its text backbone and needs token ids, not text features: "
                              "set data.text.finetune=true (its preset does)")
        enc = self.text_backbone.encoder
        if not (hasattr(enc, "embeddings") and hasattr(getattr(enc, "encoder", None), "layer")):
            raise ConfigError(f"crosssent runs the backbone layer by layer and needs a BERT-style encoder "
                              f"(embeddings + encoder.layer); {type(enc).__name__} is not one")
        if getattr(enc, "pooler", None) is not None:  # unused (we pool ourselves): keep it out of the optimiser
            enc.pooler.requires_grad_(False)
        hidden = self.text_backbone.hidden_size
        n_layers = len(enc.encoder.layer)
        self.inject_layer = int(cfg.get("inject_layer", n_layers))
        if not 0 <= self.inject_layer <= n_layers:
            raise ConfigError(f"model.inject_layer must be in [0, {n_layers}] for this backbone "
                              f"(0 = on the embeddings, {n_layers} = after the last layer), not {self.inject_layer}")
        self.pool = cfg.get("pool", "mean")
        if self.pool not in ("mean", "cls"):
            raise ConfigError(f"model.pool must be mean or cls, not {self.pool!r}")
        av_dims = {m: d for m, d in self.input_dims.items() if m != "text"}
        self.gmra = None
        if cfg.get("gmra", True) and av_dims:  # w/o GMRA (or no audio/vision in the data): the text model alone
            heads = cfg.get("gmra_heads") or enc.config.num_attention_heads
            self.gmra = GMRA(av_dims, hidden, heads, cfg.get("adapter_dim") or hidden // 2, cfg.get("dropout", 0.1))
        self.head = Head(hidden, self.out_dim, dropout=cfg.get("dropout", 0.1))

    # ---- the text backbone, run layer by layer so the GMRA can sit between two layers

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, av: dict) -> tuple[torch.Tensor, dict | None]:
        enc = self.text_backbone.encoder
        h = enc.embeddings(input_ids=ids)
        # additive mask (B, 1, 1, T): works with eager and SDPA attention, and stays finite for an all-padding row
        ext = (~mask)[:, None, None, :].to(h.dtype) * torch.finfo(h.dtype).min
        info = None
        for i, layer in enumerate(enc.encoder.layer):
            if i == self.inject_layer and self.gmra is not None:
                h, info = self.gmra(h, av)
            h = layer(h, ext)
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
        levels = torch.tensor([-1.0, 0.0, 1.0], device=out.logits.device)
        return out.logits.softmax(-1) @ levels, (losses.score_to_class(batch.y) - 1).to(out.logits.dtype)

    def mpr_term(self, out, batch, task=None, kind=None) -> torch.Tensor:
        c = self.cfg
        # thresholds are set on the [-3, 3] scale; a [-1, 1] dataset (SIMS) shrinks them to match
        return losses.mpr_loss(*self.ordinal_view(out, batch), threshold=c.get("mpr_threshold", 0.5) * self.label_scale,
                               margin_scale=c.get("mpr_margin_scale", 0.1), margin_power=c.get("mpr_margin_power", 1.0))

    def eioi_term(self, out, batch, task=None, kind=None) -> torch.Tensor:
        return losses.eioi_loss(*self.ordinal_view(out, batch),
                                tolerance=self.cfg.get("eioi_tolerance", 0.25) * self.label_scale)

    def loss_terms(self):
        ramp = losses.cosine_ramp(self.progress, self.cfg.get("ramp", 0.3))  # the weights rise from 0 to w
        terms = {}
        if self.cfg.get("mpr", True):
            terms["mpr"] = (self.cfg.get("mpr_weight", 0.1) * ramp, self.mpr_term)
        if self.cfg.get("eioi", True):
            terms["eioi"] = (self.cfg.get("eioi_weight", 0.1) * ramp, self.eioi_term)
        return terms


register_model("crosssent", "CrossSent: GMRA audio/vision injection into a fine-tuned text backbone, MSE + MPR + EIOI")(
    CrossSent)
