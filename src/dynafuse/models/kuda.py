"""KuDA: Knowledge-Guided Dynamic Modality Attention Fusion (Feng et al., EMNLP Findings 2024, arXiv 2410.04491).

Two stages, run in order by one `dynafuse train --model kuda`:

1. "unimodal", knowledge injection (Sec. 3.2). Each modality has an encoder, a stack of adapters plugged outside
   it (adapter i reads the running knowledge plus the encoder's i-th hidden state), and a decoder that predicts
   that modality's own sentiment, trained on *unimodal* labels (the multimodal task loss has weight 0):
   - the data's own `label_T/A/V` where it has them for every modality (CH-SIMS, CH-SIMSv2);
   - otherwise those of an external dataset (`knowledge_dataset`, default CH-SIMSv2, as the public code
     pretrains on it): stage 1 then trains on that dataset, for each modality it provides with this run's feature
     spec (text: its transcripts through the same backbone; labels rescaled to the target's range). A modality
     with no source gets no adapters and no decoder, and the run prints and records where each modality's
     knowledge came from (run.json `model_info.knowledge`). It never falls back to the multimodal label; that
     variant is the named ablation `knowledge_source: multimodal`.
2. "fusion". The unimodal predictions become sentiment ratios R_m (Sec. 3.3, exp(-k x) normalised), and each
   modality's cross-modal attention output is weighted by p_m (1 + R_m) inside `fusion_layers` dynamic attention
   fusion blocks. The correlation-estimation loss (CPC / InfoNCE, Sec. 3.4) ties the fused representation to each
   unimodal one. Loss = task + alpha * CE. As in the reference code, the adapters and decoders are frozen and the
   encoders keep training (`freeze: knowledge`). `gates["modality"]` is p_m (1 + R_m) normalised over the
   modalities: the weights the fusion applies. A modality without knowledge keeps a fixed share (see
   `sentiment_ratios`).

Text. By default the data gives frozen MiniLM token states: the text encoder is then a trainable ModalityEncoder
with adapters over its layers, the same as audio and vision (cheap on a CPU). With `data.text.finetune=true`
(token ids) the backbone runs inside the model and the text adapters read its intermediate layers (the reference
reads BERT layers 3/6/9/11). The backbone is frozen in stage 1; the reference also fine-tunes it in stage 2,
which here is the option `finetune_backbone: true` (at `train.backbone_lr`).

Where this departs from the reference code (MKMaS-GUET/KuDA), and why:
- The sentiment score that x is measured against. The reference uses x_m = (s_m - y)^2 with the ground-truth
  multimodal label y while training, and no ratios at test time: that is `ratio_reference: public_code`. Our
  default (`estimate`) learns s_M with a small head on the knowledge states in stage 1 and uses it the same way in
  training and testing. `label`: the label in training, the estimate at test; `consensus`: the mean unimodal score.
- The reference scales each cross-attention output by (1 + R_m) *before* a per-modality LayerNorm. LayerNorm
  removes a per-sample scale, so there its ratios change nothing. Here the weight is applied after the norm.
- Length alignment. The reference maps every modality onto the text length with a Linear over time steps
  (fixed lengths, no masks). Here a few learned query tokens attend to each modality under its mask.
- The adapters are blocks.Adapter (a bottleneck MLP). The reference adapter has a 2-layer transformer inside.
- Sizes: the reference's hidden size 256, 8 heads and 4 encoder layers cost ~8x per epoch on a CPU; the preset
  keeps 64 / 4 / 2 (configs/models/kuda.yaml says where each value comes from).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import losses
from ..config import ModelConfig, at_least, one_of, positive
from ..data.core import UNIMODAL_KEYS
from ..data.tables import UNI_COLUMNS as UNI_LABEL
from ..errors import ConfigError
from .base import ModelOutput, MSAModel, register_model
from .blocks import (
    Adapter,
    CrossAttention,
    Head,
    ModalityEncoder,
    masked_mean,
    masked_softmax,
    presence_weights,
)


@dataclass
class KuDAConfig(ModelConfig):
    """"reference" = the public code MKMaS-GUET/KuDA (opts.py, train.py, models/*.py); other values are ours
    (CPU budget)."""

    layers: int = at_least(2, 1)  # encoder layers per modality; one adapter per layer (reference: 4 layers, 3 adapters)
    adapter_bottleneck: int = positive(32)  # d_model / 2, as the reference adapter's down-projection (hidden // 2)
    text_adapters: int = positive(3)  # token-id text only: adapters on MiniLM layers 0/2/4/6 (ref: BERT 3/6/9/11)
    fusion_layers: int = positive(3)  # dynamic attention fusion blocks (reference opts.fusion_layers = 3)
    fusion_queries: int = positive(8)  # learned query tokens (ours; the reference aligns lengths with a Linear)
    k: float = at_least(0.1, 0.0, "exp(-k x), x = squared score gap (reference: calculate_ratio_senti(k=0.1))")
    alpha: float = at_least(0.1, 0.0, "correlation-estimation weight (reference train.py: mse + 0.1 * nce)")
    ce_temperature: float = positive(1.0, "InfoNCE on cosine similarity without a temperature, as the CPC")
    ratio_reference: str = one_of("estimate", "estimate", "public_code", "label", "consensus",
                                  doc="the score the ratios measure against (see the module docstring)")
    freeze: str = one_of("knowledge", "knowledge", "all", "none", doc="what stage 2 freezes (reference: knowledge)")
    fusion_unimodal_weight: float = at_least(0.0, 0.0, "unimodal losses kept in stage 2 (the paper: none)")
    knowledge: bool = True  # ablation w/o knowledge injection: no adapters/decoders, no stage 1, uniform ratios
    # Sec. 3.2 learns each modality's knowledge from unimodal labels: the data's own label_T/A/V, else (auto) those
    # of `knowledge_dataset`, as the public code pretrains on CH-SIMSv2. "multimodal" is the named ablation that
    # trains the decoders on the multimodal label instead.
    knowledge_source: str = one_of("auto", "auto", "multimodal")
    knowledge_dataset: str = "simsv2"
    finetune_backbone: bool = False  # token-id text only: fine-tune the backbone in stage 2 (the public code does)
    dynamic: bool = True  # ablation static attention: ratios fixed uniform
    ce_loss: bool = True  # ablation w/o CE loss: alpha = 0


class KnowledgeInjection(nn.Module):
    """Sec. 3.2 adapters, plugged outside an encoder and stacked.

    K_1 = A_1(LN(h_0 + h_1)) and K_i = A_i(LN(K_{i-1} + h_i)), where h_i is the encoder's i-th tapped hidden state.
    """

    def __init__(self, d: int, n: int, bottleneck: int, dropout: float):
        super().__init__()
        self.adapters = nn.ModuleList(Adapter(d, bottleneck, dropout) for _ in range(n))
        self.norm = nn.LayerNorm(d)

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        k = taps[0]
        for tap, adapter in zip(taps[1:], self.adapters):
            k = adapter(self.norm(k + tap))
        return k


class UnimodalKnowledgeEncoder(nn.Module):
    """Sec. 3.2 for one modality: encoder -> adapters -> U_m = [specific; injected knowledge] -> decoder.

    The decoder (mean-pooled U_m -> the modality's sentiment) is the unimodal prediction behind the ratios.
    `external=True` means a frozen backbone has already encoded the input and supplies the taps.
    `knowledge=False` (the ablation) keeps only the encoder.
    """

    def __init__(self, d_in: int, cfg: KuDAConfig, out_dim: int, external: bool = False, knowledge: bool = True):
        super().__init__()
        d, drop = d_in if external else cfg.d_model, cfg.dropout
        self.encoder = None if external else ModalityEncoder(d_in, d, cfg.layers, cfg.heads, drop)
        n = cfg.text_adapters if external else cfg.layers  # one adapter per tapped layer
        self.inject = KnowledgeInjection(d, n, cfg.adapter_bottleneck, drop) if knowledge else None
        self.decoder = Head(2 * d, out_dim, hidden=d // 2, dropout=drop) if knowledge else None
        self.out_dim = 2 * d if knowledge else d

    def forward(self, x: torch.Tensor, mask: torch.Tensor, taps: list | None = None):
        """-> U_m (B, T, out_dim) zero on padding, its masked mean (B, out_dim), unimodal logits (B, out) or None."""
        spec = x
        if self.encoder is not None:
            spec, _, taps = self.encoder(x, mask, return_states=True)
        parts = [spec] if self.inject is None else [spec, self.inject(taps)]
        u = torch.cat(parts, -1) * mask.unsqueeze(-1)
        pooled = masked_mean(u, mask)
        return u, pooled, None if self.decoder is None else self.decoder(pooled)


def sentiment_ratio(scores: torch.Tensor, reference: torch.Tensor, present: torch.Tensor, k: float) -> torch.Tensor:
    """Sec. 3.3 sentiment ratio: R_m = exp(-k x_m) / sum_j exp(-k x_j), with x_m = (s_m - s_M)^2.

    The sum runs over present modalities. The reference code squares the gap between the unimodal score and the
    multimodal one. scores (B, M), reference (B,), present (B, M) bool -> (B, M) that sums to 1 over present
    modalities. Absent modalities get 0, and a sample with none gets uniform weights.
    """
    x = (scores - reference.unsqueeze(-1)) ** 2
    return masked_softmax(-k * x, present)  # exp(-k x) normalised over the present modalities


class FeedForward(nn.Module):
    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, d),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ModalityCrossTransformer(nn.Module):
    """The multimodal sequence attends to one modality, then a feed-forward layer (the reference's CrossTransformer)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.attn = CrossAttention(d, heads, dropout)
        self.ffn = FeedForward(d, dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, f: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, w = self.attn(f, h, mask)
        return self.norm(c + self.ffn(c)), w


class DynamicAttentionBlock(nn.Module):
    """Sec. 3.3, one dynamic attention fusion layer:

    F' = LN(F + LN(sum_m p_m (1 + R_m) LN_m(CrossTrans_m(F, H_m)))), then self-attention and feed-forward, each
    with a residual. p_m is 1 when the modality is present, so a missing modality adds nothing.
    """

    def __init__(self, modalities: list[str], d: int, heads: int, dropout: float):
        super().__init__()
        self.modalities = modalities
        self.cross = nn.ModuleDict({m: ModalityCrossTransformer(d, heads, dropout) for m in modalities})
        self.norm_m = nn.ModuleDict({m: nn.LayerNorm(d) for m in modalities})
        self.mix_norm, self.norm1, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.self_attn = CrossAttention(d, heads, dropout)
        self.ffn = FeedForward(d, dropout)

    def forward(self, f: torch.Tensor, seqs: dict, masks: dict, weights: torch.Tensor):
        mix, attn = 0.0, {}
        for i, m in enumerate(self.modalities):
            c, attn[m] = self.cross[m](f, seqs[m], masks[m])
            mix = mix + weights[:, i, None, None] * self.norm_m[m](c)  # after the norm, so the ratio's scale survives
        f = self.norm1(f + self.drop(self.mix_norm(mix)))
        f, _ = self.self_attn(f, f, torch.ones(f.shape[:2], dtype=torch.bool, device=f.device))
        return self.norm3(f + self.ffn(f)), attn


class DynamicAttentionFusion(nn.Module):
    """Sec. 3.3 module: align each U_m to d (H_m), start the multimodal sequence F_0, stack `fusion_layers` blocks.

    F_0 is learned query tokens plus the mean of the present modalities' pooled H_m. The fused representation F_L
    is the mean over the query tokens.
    """

    def __init__(self, dims: dict[str, int], cfg: KuDAConfig):
        super().__init__()
        d, drop, heads = cfg.d_model, cfg.dropout, cfg.heads
        self.modalities = list(dims)
        self.align = nn.ModuleDict({m: nn.Sequential(nn.Linear(k, d), nn.Dropout(drop)) for m, k in dims.items()})
        self.queries = nn.Parameter(torch.randn(cfg.fusion_queries, d) * 0.02)
        self.blocks = nn.ModuleList(DynamicAttentionBlock(self.modalities, d, heads, drop)
                                    for _ in range(cfg.fusion_layers))

    def forward(self, u: dict, masks: dict, present: torch.Tensor, weights: torch.Tensor):
        seqs = {m: self.align[m](u[m]) * masks[m].unsqueeze(-1) for m in self.modalities}
        pooled = {m: masked_mean(seqs[m], masks[m]) for m in self.modalities}
        p = present.float()
        start = sum(pooled[m] * p[:, i, None] for i, m in enumerate(self.modalities))
        start = start / p.sum(1, keepdim=True).clamp(min=1)  # mean over present modalities
        f = self.queries.unsqueeze(0) + start.unsqueeze(1)
        attn = {}
        for block in self.blocks:
            f, attn = block(f, seqs, masks, weights)
        return f.mean(1), pooled, attn


def set_trainable(modules, flag: bool) -> None:
    for mod in modules:
        if mod is not None:
            for p in mod.parameters():
                p.requires_grad = flag


@register_model("kuda", "KuDA (2410.04491): adapters + unimodal decoders trained on unimodal labels (stage 1), "
                "sentiment-ratio dynamic attention fusion + correlation-estimation loss (stage 2)")
class KuDA(MSAModel):
    """KuDA over a Batch: ModelOutput with unimodal logits, `gates["modality"]` (B, M: the normalised multipliers
    the fusion applies, see `modality_weights`), the fused representation and the cross-modal attention maps.
    Two stages: "unimodal" (knowledge injection), then "fusion".

    `knowledge_modalities` are the modalities whose knowledge has a source (see `knowledge_plan`); the others get
    no adapters and no decoder. `knowledge_sources` says, per modality, where its knowledge comes from."""

    Config = KuDAConfig
    stages = ("unimodal", "fusion")

    @classmethod
    def stage_datasets(cls, cfg: KuDAConfig, data_modalities, unimodal_labels) -> dict[str, str]:
        """Stage 1 trains on `knowledge_dataset` when the target data lacks unimodal labels for a modality the
        model reads (knowledge_source auto); on the target itself otherwise (as `knowledge_plan` decides)."""
        mods = cls.used_modalities(cfg, data_modalities)
        if cfg.knowledge and cfg.knowledge_source == "auto" and not set(mods) <= set(unimodal_labels):
            return {"unimodal": cfg.knowledge_dataset}
        return {}

    def __init__(self, input_dims: dict[str, int], cfg: KuDAConfig, **context):
        super().__init__(input_dims, cfg, **context)
        self.knowledge_sources = self.knowledge_plan()
        self.knowledge_modalities = [m for m in self.modalities if self.knowledge_sources[m]["source"] != "none"]
        self.knowledge = bool(self.knowledge_modalities)  # nothing to inject: no adapters/decoders, no stage 1
        self.dynamic = cfg.dynamic and self.knowledge  # false: static attention, ratios uniform
        if not self.knowledge:
            self.stages = ("fusion",)
        self.k = cfg.k
        self.alpha = cfg.alpha if cfg.ce_loss else 0.0
        self.ce_temperature = cfg.ce_temperature
        self.ratio_reference = cfg.ratio_reference
        self.freeze = cfg.freeze
        if self.text_backbone is not None:  # adapters read the language model's layers (reference: BERT 3/6/9/11)
            if cfg.lora_rank and not cfg.finetune_backbone:
                raise ConfigError("model.lora_rank adapts a backbone that kuda fine-tunes: set "
                                  "model.finetune_backbone=true (without it the backbone stays frozen)")
            self.text_backbone.set_trainable(False)
            n_layers, n = self.text_backbone.encoder.config.num_hidden_layers, cfg.text_adapters
            self.text_taps = [round(i * n_layers / n) for i in range(n + 1)]  # e.g. 0, 2, 4, 6 for MiniLM-L6
        self.encoders = nn.ModuleDict({
            m: UnimodalKnowledgeEncoder(d, cfg, self.out_dim, external=(m == "text" and self.text_backbone is not None),
                                        knowledge=m in self.knowledge_modalities)
            for m, d in self.input_dims.items()})
        dims = {m: e.out_dim for m, e in self.encoders.items()}
        # The multimodal score the ratios measure against, learnt in stage 1 from the (detached) knowledge states.
        self.estimate = (Head(sum(dims[m] for m in self.knowledge_modalities), self.out_dim, hidden=cfg.d_model,
                              dropout=cfg.dropout)
                         if self.dynamic and self.ratio_reference in ("estimate", "label") else None)
        self.fusion = DynamicAttentionFusion(dims, cfg)
        self.head = Head(cfg.d_model, self.out_dim, dropout=cfg.dropout)

    def knowledge_plan(self) -> dict[str, dict]:
        """Per modality, where stage 1's knowledge comes from (Sec. 3.2 learns it from unimodal labels):
        - "own": the data's own unimodal label (label_T/A/V), when it has one for every modality the model uses;
        - "external": the unimodal label of `knowledge_dataset` (stage 1 trains on it), for each modality whose
          features that dataset provides with this run's spec (text: its transcripts through the same backbone);
        - "multimodal": the named ablation `knowledge_source: multimodal`, decoders on the multimodal label;
        - "none": no source; the modality gets no knowledge injection.
        Never falls back to the multimodal label on its own."""
        cfg = self.cfg
        if not cfg.knowledge:
            return {m: {"source": "none", "why": "ablation w/o knowledge injection"} for m in self.modalities}
        if cfg.knowledge_source == "multimodal":
            return {m: {"source": "multimodal", "label": "the multimodal label (ablation)"} for m in self.modalities}
        if set(self.modalities) <= set(self.unimodal_labels):
            return {m: {"source": "own", "label": UNI_LABEL[m]} for m in self.modalities}
        external = self.stage_modalities.get("unimodal", ())
        return {m: ({"source": "external", "dataset": cfg.knowledge_dataset, "label": UNI_LABEL[m]} if m in external
                    else {"source": "none", "why": f"{cfg.knowledge_dataset} has no {m} features of this run's spec"})
                for m in self.modalities}

    def run_info(self) -> dict:
        return {"knowledge": self.knowledge_sources}

    # ------------------------------------------------------------------ inputs
    def inputs(self, batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The base class's inputs, except that text token ids stay ids.

        `backbone_states` runs the backbone, so its intermediate layers can feed the adapters.
        """
        return super().inputs(batch, run_backbone=False)

    def backbone_states(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tuned = self.cfg.finetune_backbone and self.stage == "fusion"
        with torch.set_grad_enabled(tuned and torch.is_grad_enabled()):  # frozen: no backward pass to pay for
            hs = self.text_backbone.encoder(input_ids=ids, attention_mask=mask.long(),
                                            output_hidden_states=True).hidden_states
        return hs[-1], [hs[i] for i in self.text_taps]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.text_backbone is not None and not (self.cfg.finetune_backbone and self.stage == "fusion"):
            self.text_backbone.eval()  # frozen: its features should not carry dropout noise
        return self

    # ------------------------------------------------------------------ forward
    def sentiment_ratios(self, uni: dict, pooled: dict, present: torch.Tensor, batch, extras: dict) -> torch.Tensor:
        """Sec. 3.3: R (B, M) over the modalities with knowledge; a modality without knowledge keeps a fixed
        share 1/M of the weight, the others split the rest by their ratios. None (B, M) of zeros: no ratios."""
        k_idx = [self.modalities.index(m) for m in self.knowledge_modalities]
        k_present = present[:, k_idx]
        if not self.dynamic:  # static attention: every present modality counts the same
            return masked_softmax(torch.zeros(present.shape, device=present.device), present)
        if self.ratio_reference == "public_code" and not self.training:  # the public code uses no ratios at test
            return torch.zeros(present.shape, device=present.device)
        # The knowledge guides the fusion; the fusion loss does not bend the unimodal predictions to suit it.
        scores = torch.stack([self.score(uni[m]) for m in self.knowledge_modalities], 1).detach()
        est = None
        if self.estimate is not None:
            est = self.estimate(torch.cat([pooled[m] for m in self.knowledge_modalities], -1).detach())
            extras["estimate_logits"] = est
        if self.ratio_reference == "consensus":
            ref = (scores * k_present).sum(1) / k_present.sum(1).clamp(min=1)
        elif self.ratio_reference in ("label", "public_code") and self.training:  # the public code's teacher forcing
            ref = batch.y if self.task == "regression" else batch.y.clamp(-1, 1)
        else:
            ref = self.score(est).detach()
        extras["unimodal_scores"], extras["reference_score"] = scores, ref
        ratio = sentiment_ratio(scores, ref, k_present, self.k)
        if len(k_idx) == len(self.modalities):
            return ratio
        full = torch.full(present.shape, 1.0 / len(self.modalities), device=present.device)
        full[:, k_idx] = ratio * len(k_idx) / len(self.modalities)
        return full * present

    @staticmethod
    def modality_weights(ratio: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The multipliers the fusion applies, p_m (1 + R_m), normalised over the modalities (B, M): what the
        gates report, so that they are the weights the model uses."""
        w = present.float() * (1 + ratio)
        return w / w.sum(1, keepdim=True).clamp_min(1e-12)

    def unimodal_average(self, uni: dict, present: torch.Tensor) -> torch.Tensor:
        """Stage-1 output: the mean unimodal prediction over present modalities (3 classes: the mean probability)."""
        k_present = present[:, [self.modalities.index(m) for m in self.knowledge_modalities]]
        w = presence_weights(k_present).unsqueeze(-1)
        stack = torch.stack([uni[m] for m in self.knowledge_modalities], 1)  # (B, K, out)
        if self.task == "regression":
            return (stack * w).sum(1)
        return (stack.softmax(-1) * w).sum(1).clamp_min(1e-8).log()

    def forward(self, batch) -> ModelOutput:
        inputs = self.inputs(batch)
        masks = {m: mask for m, (_, mask) in inputs.items()}
        present = torch.stack([masks[m].any(1) for m in self.modalities], 1)  # (B, M)
        u, pooled, uni = {}, {}, {}
        for m, (x, mask) in inputs.items():
            taps = None
            if m == "text" and self.text_backbone is not None:
                x, taps = self.backbone_states(x, mask)
            u[m], pooled[m], logits = self.encoders[m](x, mask, taps)
            if logits is not None:
                uni[m] = logits
        extras: dict[str, torch.Tensor] = {}
        ratio = self.sentiment_ratios(uni, pooled, present, batch, extras)
        extras["ratio"] = ratio
        gates = {"modality": self.modality_weights(ratio, present)}
        if self.stage == "unimodal" and uni:
            logits = self.unimodal_average(uni, present)
            return ModelOutput(pred=self.to_pred(logits), logits=logits, unimodal=uni, gates=gates, extras=extras)
        fused, reprs, attn = self.fusion(u, masks, present, present.float() * (1 + ratio))
        logits = self.head(fused)
        extras.update({f"repr_{m}": r for m, r in reprs.items()})
        return ModelOutput(pred=self.to_pred(logits), logits=logits, unimodal=uni, gates=gates,
                           attention=attn, fused=fused, extras=extras)

    # ------------------------------------------------------------------ losses and stages
    def correlation_estimation(self, out: ModelOutput, batch, **_) -> torch.Tensor:
        """Sec. 3.4 CE loss: InfoNCE between each unimodal representation and the fused one, summed over modalities.

        A sample without a modality is left out of that modality's term.
        """
        terms = [losses.info_nce(out.extras[f"repr_{m}"], out.fused, self.ce_temperature, valid=batch.present(m))
                 for m in self.modalities]
        return torch.stack(terms).sum()

    def knowledge_loss(self, out: ModelOutput, batch, task: str = "regression", kind: str = "l1") -> torch.Tensor:
        """Stage 1's loss (Sec. 3.2): each decoder against its modality's own sentiment label, on the samples that
        have the modality and a known label (a NaN unimodal label is skipped, never replaced); the multimodal
        label only in the `knowledge_source: multimodal` ablation."""
        terms = []
        for m, logits in out.unimodal.items():
            y = batch.y if self.knowledge_sources[m]["source"] == "multimodal" else batch.y_uni.get(UNIMODAL_KEYS[m])
            if y is None:  # no unimodal label in this batch's data: nothing to learn from
                continue
            keep = batch.present(m) & torch.isfinite(y)
            if keep.any():
                terms.append(losses.task_loss(logits[keep], y[keep], task, kind))
        return torch.stack(terms).mean() if terms else out.logits.sum() * 0.0

    def estimate_loss(self, out: ModelOutput, batch, task: str = "regression", kind: str = "l1") -> torch.Tensor:
        return losses.task_loss(out.extras["estimate_logits"], batch.y, task, kind)

    def loss_terms(self):
        terms = {}
        if self.knowledge:
            # Stage 1 trains the decoders (and the ratio's reference head). In stage 2 they are frozen by default:
            # the weight is `fusion_unimodal_weight`, 0 in the paper's loss.
            w = 1.0 if self.stage == "unimodal" else self.cfg.fusion_unimodal_weight
            terms["unimodal"] = (w, self.knowledge_loss)
            if self.estimate is not None:
                terms["estimate"] = (w, self.estimate_loss)
        if self.stage != "unimodal" and self.alpha:
            terms["ce"] = (self.alpha, self.correlation_estimation)
        return terms

    def task_weight(self, stage: str) -> float:
        return 0.0 if stage == "unimodal" else 1.0

    def stage_setup(self, stage: str) -> None:
        super().stage_setup(stage)
        knowledge = [self.encoders, self.estimate]
        if stage == "unimodal":
            set_trainable(knowledge, True)
            set_trainable([self.fusion, self.head], False)
        else:
            set_trainable([self.fusion, self.head], True)
            set_trainable(knowledge, self.freeze != "all")
            if self.freeze == "knowledge":  # the reference freezes adapters and decoders, the encoders train on
                set_trainable([e.inject for e in self.encoders.values()] +
                              [e.decoder for e in self.encoders.values()] + [self.estimate], False)
        if self.text_backbone is not None:  # the reference fine-tunes BERT in stage 2; an option here (CPU cost)
            self.text_backbone.set_trainable(stage == "fusion" and self.cfg.finetune_backbone)
