"""DPDF-LQ: Dual-Path Dynamic Fusion with Learnable Query (Zhou et al.; paper in shared/papers/dpdf-lq-*.md).

Two parallel paths over the same inputs, mixed by a per-sample gate (Sec. 3.5):
- global path (Sec. 3.3): each modality is summarised by `query_len` learnable global tokens (Eq. 1-3); the
  text tokens go through an (n-1)-layer text encoder (Eq. 4); a learnable query LQ attends to every modality
  separately and mixes the results with a softmax modality gate, then channel attention (DGLQA, Eq. 5-19);
  a depthwise conv (Eq. 20), a cross-attention with the text (Eq. 21), an adaptive LQ/text gate (Eq. 22-24)
  and a second cross-attention (Eq. 25) give f_global;
- local path (Sec. 3.4): spatial attention on vision (Eq. 26), per-modality transformers over the whole
  sequences (Eq. 27-28), then a cross-modal transformer whose queries are the concatenated audio+vision
  sequence and whose keys are the text (Eq. 29-30) gives f_local.

"Text" is the anchor modality: with text absent from `modalities` (the paper's "w/o T" ablation) the first
modality takes its place. With no audio/vision at all (text-only datasets) the local path's target is only its
learnable [CLS] token, so the local path falls back to a learned attention pooling of the text sequence; the path
gate still weighs both paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, at_least, one_of, positive
from ..errors import ConfigError
from .base import ModelOutput, MSAModel, register_model
from .blocks import CrossAttention, ModalityEncoder, SinusoidalPositions, SoftmaxGate, presence_weights

# --------------------------------------------------------------------------- global path


class GlobalTokenTransformer(nn.Module):
    """Eq. 1-3: FC -> transformer over [global tokens; sequence]; returns the n_tokens global outputs (B, n, d).

    A sample without the modality gets zero tokens (the global tokens would otherwise carry a constant).
    """

    def __init__(self, d_in: int, d: int, n_tokens: int, layers: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(d_in, d), nn.Dropout(dropout))
        self.pos = SinusoidalPositions(d)
        self.tokens = nn.Parameter(torch.randn(1, n_tokens, d) * 0.02)  # ViT-style prepended tokens
        layer = nn.TransformerEncoderLayer(d, heads, hidden, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n = len(x), self.tokens.shape[1]
        h = torch.cat([self.tokens.expand(b, -1, -1), self.pos(self.proj(x))], dim=1)
        keep = torch.cat([mask.new_ones(b, n), mask], dim=1)  # the global tokens are always valid keys
        h = self.transformer(h, src_key_padding_mask=~keep)[:, :n]
        return self.norm(h) * mask.any(1)[:, None, None]


class TextEncoder(nn.Module):
    """Eq. 4: n-1 transformer layers over the text tokens; returns [h_t^0, ..., h_t^{n-1}]."""

    def __init__(self, d: int, layers: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, hidden, dropout, batch_first=True, norm_first=True)
            for _ in range(layers))

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        out = [h]
        for layer in self.layers:
            out.append(layer(out[-1]))
        return out


class ChannelAttention(nn.Module):
    """Eq. 16-19: squeeze (mean over tokens) -> W1 -> GELU -> W2 -> sigmoid, channel-wise scale plus residual."""

    def __init__(self, d: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d, max(1, d // reduction)), nn.GELU(), nn.Linear(max(1, d // reduction), d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc(x.mean(1))).unsqueeze(1)  # Eq. 16-17
        return x * s + x  # Eq. 18-19


class DGLQALayer(nn.Module):
    """Eq. 5-19: the learnable query attends to each modality separately; a softmax gate over the modalities
    (from the mean of their concatenated tokens) mixes the per-modality outputs; FC residual; channel attention.

    Keys/values use one projection per modality, i.e. W^K, W^V of Eq. 7-8 are block-diagonal over the
    concatenation, so Out_m depends on modality m only and the gate weights modalities, not mixtures.
    Inputs are layer-normed first, as in the AHL layer (ALMT) this layer extends.
    """

    def __init__(self, d: int, modalities: list[str], heads: int, dropout: float, reduction: int = 4):
        super().__init__()
        self.heads = heads
        self.modalities = list(modalities)
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.ModuleDict({m: nn.LayerNorm(d) for m in modalities})
        self.q = nn.Linear(d, d, bias=False)  # Eq. 6
        self.k = nn.ModuleDict({m: nn.Linear(d, d, bias=False) for m in modalities})  # Eq. 7, 9
        self.v = nn.ModuleDict({m: nn.Linear(d, d, bias=False) for m in modalities})  # Eq. 8, 9
        self.gate = SoftmaxGate(len(modalities) * d, len(modalities))  # Eq. 12-13
        self.out = nn.Sequential(nn.Linear(d, d), nn.Dropout(dropout))  # Eq. 15's FC
        self.channel = ChannelAttention(d, reduction)  # Eq. 16-19

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, H, T, d_h)

    def forward(self, lq: torch.Tensor, tokens: dict[str, torch.Tensor], present: torch.Tensor):
        b, t, d = lq.shape
        q = self._heads(self.q(self.norm_q(lq)))
        outs, maps = [], {}
        for m in self.modalities:
            h = self.norm_kv[m](tokens[m])
            k, v = self._heads(self.k[m](h)), self._heads(self.v[m](h))
            attn = (q @ k.transpose(-1, -2) * k.shape[-1] ** -0.5).softmax(-1)  # Eq. 10
            outs.append((attn @ v).transpose(1, 2).reshape(b, t, d))  # Eq. 11
            maps[m] = attn.mean(1)
        # Eq. 12; a missing modality enters as zeros, so the gate of the others cannot depend on it
        con_mean = torch.cat([tokens[m].mean(1) * present[:, i, None] for i, m in enumerate(self.modalities)], -1)
        gate = self.gate(con_mean, available=present)  # Eq. 13; a missing modality gets weight 0
        fused = (torch.stack(outs, 1) * gate[:, :, None, None]).sum(1)  # Eq. 14
        lq = lq + self.out(fused)  # Eq. 15
        return self.channel(lq), gate, maps


class StandardQueryAttention(nn.Module):
    """Table 2's "DGLQA -> Std.A" ablation: one multi-head attention of the query over all modality tokens
    (no per-modality split, no learned modality gate, no channel attention). Its "gate" is the attention mass
    each modality receives, averaged over the query tokens."""

    def __init__(self, d: int, modalities: list[str], heads: int, dropout: float, reduction: int = 4):
        super().__init__()
        self.modalities = list(modalities)
        self.attn = CrossAttention(d, heads, dropout)

    def forward(self, lq: torch.Tensor, tokens: dict[str, torch.Tensor], present: torch.Tensor):
        n = tokens[self.modalities[0]].shape[1]
        kv = torch.cat([tokens[m] for m in self.modalities], dim=1)
        lq, w = self.attn(lq, kv, present.repeat_interleave(n, dim=1))
        gate = w.unflatten(-1, (len(self.modalities), n)).sum(-1).mean(1)  # (B, M)
        empty = gate.sum(-1, keepdim=True) < 1e-6  # nothing present: spread evenly rather than all zeros
        gate = torch.where(empty, torch.full_like(gate, 1 / gate.shape[-1]), gate)
        maps = {m: a for m, a in zip(self.modalities, w.unflatten(-1, (len(self.modalities), n)).unbind(2))}
        return lq, gate, maps


class AHLLayer(nn.Module):
    """Table 2's "DGLQA -> AHL": ALMT's Adaptive Hyper-modality Learning layer (Zhang et al., 2023). The text tokens
    of this layer query each other modality, and the outputs are added to the hyper-modality (here the learnable
    query), with no modality gate and no channel attention: H^j = H^{j-1} + sum_m Attn(h_t^j, h_m, h_m). Its
    "gate" is the plain share of each present non-text modality (B, M), text 0."""

    def __init__(self, d: int, modalities: list[str], heads: int, dropout: float, reduction: int = 4):
        super().__init__()
        self.modalities = list(modalities)
        self.anchor = "text" if "text" in modalities else self.modalities[0]
        self.others = [m for m in self.modalities if m != self.anchor]
        self.norm_q = nn.LayerNorm(d)
        self.attn = nn.ModuleDict({m: nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
                                   for m in self.others})

    def forward(self, lq: torch.Tensor, tokens: dict[str, torch.Tensor], present: torch.Tensor):
        q = self.norm_q(tokens[self.anchor])
        maps = {}
        for i, m in enumerate(self.modalities):
            if m in self.others:
                h, maps[m] = self.attn[m](q, tokens[m], tokens[m], need_weights=True)
                lq = lq + h * present[:, i, None, None]  # a missing modality adds nothing
        share = present.float() * torch.tensor([m in self.others for m in self.modalities], device=present.device)
        gate = share / share.sum(1, keepdim=True).clamp_min(1.0)
        return lq, gate, maps


QUERY_ATTENTION = {"dglqa": DGLQALayer, "standard": StandardQueryAttention, "ahl": AHLLayer}


class DepthwiseConvBlock(nn.Module):
    """Eq. 20: depthwise conv (kernel 3) along the query tokens, then GELU and batch norm."""

    def __init__(self, d: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.bn = nn.BatchNorm1d(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.gelu(self.conv(x.transpose(1, 2)))).transpose(1, 2)


class AdaptiveGate(nn.Module):
    """Eq. 22-24: G = sigmoid(FC([LQ'; h_t; f])), LQ'' = G * LQ' + (1 - G) * h_t."""

    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(3 * d, d)

    def forward(self, lq: torch.Tensor, ht: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.sigmoid(self.fc(torch.cat([lq, ht, f.unsqueeze(1).expand_as(lq)], dim=-1)))
        return g * lq + (1 - g) * ht, g


# --------------------------------------------------------------------------- cross-attention (both paths)


class CrossTransformerLayer(nn.Module):
    """Target self-attention, target -> source cross-attention, feed-forward (each residual + LayerNorm)."""

    def __init__(self, d: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.self_attn = CrossAttention(d, heads, dropout)
        self.cross_attn = CrossAttention(d, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d),
                                 nn.Dropout(dropout))
        self.norm = nn.LayerNorm(d)

    def forward(self, tgt, tgt_mask, src, src_mask):
        tgt, _ = self.self_attn(tgt, tgt, tgt_mask)
        tgt, w = self.cross_attn(tgt, src, src_mask)
        return self.norm(tgt + self.ffn(tgt)), w


class CrossModalTransformer(nn.Module):
    """Eq. 21, 25, 30: CrossAttn(source, target)[0] -- a [CLS] token is prepended to the target, the target
    queries the source for `depth` layers, and the [CLS] output is returned with the last layer's attention
    (B, 1 + T_tgt, T_src).

    ALMT's cross-transformer (which the paper cites) has no target self-attention, so its [CLS] output never
    sees the target; here the target attends to itself first, so f_local depends on audio/vision as Sec. 3.4.2
    intends. No positions are added: the inputs carry them already, and positions over a concatenation of two
    padded sequences would depend on the padding.
    """

    def __init__(self, d: int, depth: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.layers = nn.ModuleList(CrossTransformerLayer(d, heads, hidden, dropout) for _ in range(depth))

    def forward(self, src, src_mask, tgt=None, tgt_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(src)
        cls = self.cls.expand(b, -1, -1)
        x = cls if tgt is None else torch.cat([cls, tgt], dim=1)
        x_mask = src_mask.new_ones(b, 1) if tgt is None else torch.cat([src_mask.new_ones(b, 1), tgt_mask], dim=1)
        w = None
        for layer in self.layers:
            x, w = layer(x, x_mask, src, src_mask)
        return x[:, 0], w


# --------------------------------------------------------------------------- local path and fusion


class SpatialAttention(nn.Module):
    """Eq. 26: a per-step attention map from a depthwise-separable conv (depthwise k over time, pointwise to 1
    channel, sigmoid) that rescales the visual sequence."""

    def __init__(self, d_in: int, kernel: int = 3):
        super().__init__()
        self.depthwise = nn.Conv1d(d_in, d_in, kernel, padding=kernel // 2, groups=d_in)
        self.pointwise = nn.Conv1d(d_in, 1, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x * mask.unsqueeze(-1)  # padding acts as the conv's zero padding, whatever its length
        a = torch.sigmoid(self.pointwise(self.depthwise(x.transpose(1, 2)))).transpose(1, 2)  # (B, T, 1)
        return x * a, a.squeeze(-1) * mask


class PathGate(nn.Module):
    """Eq. 31-34: FG = softmax(FC(GELU(FC([f_global; f_local])))), f_fused = FG[0] f_global + FG[1] f_local."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(2 * d, hidden), nn.GELU())  # Eq. 31-32
        self.gate = SoftmaxGate(hidden, 2)  # Eq. 33

    def forward(self, f_global: torch.Tensor, f_local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.gate(self.fc(torch.cat([f_global, f_local], dim=-1)))
        return w[:, :1] * f_global + w[:, 1:] * f_local, w  # Eq. 34


# --------------------------------------------------------------------------- model


@dataclass
class DPDFLQConfig(ModelConfig):
    """Table 3, MOSI column, unless noted."""

    d_model: int = positive(128)  # learnable query dimension (Table 3); every path works at this width
    heads: int = positive(8)  # "8-head attention in all transformer components" (Sec. 3.5)
    layers: int = at_least(1, 0)  # projection transformer depth, Eq. 2 / 28 (not in the paper; ALMT's proj_depth)
    hidden: int = positive(256)  # hidden dimension (Table 3): feed-forward width and path-gate FC (Eq. 32)
    query_len: int = positive(8)  # learnable query length l_t (Table 3; also the number of global tokens, Eq. 3)
    dglqa_depth: int = positive(3)  # DGLQA depth n (Table 3); the text encoder has n-1 layers (Eq. 4)
    # GPath CA depth: Table 3 says 2 on MOSI and 4 on MOSEI, but A.2 (Fig. 7) finds 2 optimal on both datasets
    # and MOSEI insensitive to it; we follow the ablation evidence and use 2 everywhere (also half the cost)
    gpath_ca_depth: int = positive(2)
    lpath_ca_depth: int = positive(2)  # LPath CA depth (Table 3)
    reduction: int = positive(4)  # channel-attention reduction ratio r (Eq. 17)
    conv_kernel: int = positive(3)  # depthwise conv kernel (Eq. 20) and spatial-attention kernel (Eq. 26)
    # ablation switches (Table 2)
    global_path: bool = True  # false: "w/o GPath"
    local_path: bool = True  # false: "w/o LPath"
    path_gate: bool = True  # false: "w/o Gate", the two paths are averaged
    # how the learnable query attends to the modalities: dglqa (Eq. 5-19) | standard ("DGLQA -> Std.A": one
    # attention over all tokens) | ahl ("DGLQA -> AHL": ALMT's text-queried hyper-modality) | none ("w/o DGLQA":
    # the query never sees the modality tokens)
    query_attention: str = one_of("dglqa", "dglqa", "standard", "ahl", "none")
    gpath_ca: bool = True  # false: "w/o GPath CA", f_global is the mean of LQ'' (no Eq. 21-25 cross-attention)
    swap_ca: bool = False  # true: "LPath CA <-> GPath CA", each path's cross-attention flow reversed (see below)


@register_model("dpdf_lq", "DPDF-LQ: global (DGLQA learnable query) and local (cross-modal) paths, gated")
class DPDFLQ(MSAModel):
    """DPDF-LQ over a Batch: ModelOutput with `gates["modality"]` (B, M, the DGLQA gate averaged over layers) and
    `gates["path"]` (B, 2: global, local)."""

    Config = DPDFLQConfig
    gate_names = {"path": ("global", "local")}

    def __init__(self, input_dims: dict[str, int], cfg: DPDFLQConfig, **context):
        super().__init__(input_dims, cfg, **context)
        d, heads, drop = cfg.d_model, cfg.heads, cfg.dropout
        hidden, layers = cfg.hidden, cfg.layers
        self.use_global, self.use_local = cfg.global_path, cfg.local_path
        self.use_path_gate, self.query_attention = cfg.path_gate, cfg.query_attention
        if not (self.use_global or self.use_local):
            raise ConfigError("dpdf_lq needs global_path or local_path (or both)")
        self.anchor = "text" if "text" in self.modalities else self.modalities[0]
        self.others = [m for m in self.modalities if m != self.anchor]

        if self.use_global:
            n_tokens, depth = cfg.query_len, cfg.dglqa_depth
            seen = self.input_dims if self.query_attention != "none" else {self.anchor: self.input_dims[self.anchor]}
            self.global_tokens = nn.ModuleDict({m: GlobalTokenTransformer(dim, d, n_tokens, layers, heads, hidden, drop)
                                                for m, dim in seen.items()})  # w/o DGLQA only the text is read
            self.text_encoder = TextEncoder(d, depth - 1, heads, hidden, drop)
            self.query = nn.Parameter(torch.randn(1, n_tokens, d) * 0.02)  # LQ_0
            block = QUERY_ATTENTION.get(self.query_attention)
            self.dglqa = nn.ModuleList(block(d, self.modalities, heads, drop, cfg.reduction)
                                       for _ in range(depth)) if block else nn.ModuleList()
            self.dwconv = DepthwiseConvBlock(d, cfg.conv_kernel)
            if cfg.gpath_ca:
                ca_depth = cfg.gpath_ca_depth
                self.text_ca = CrossModalTransformer(d, ca_depth, heads, hidden, drop)  # Eq. 21
                self.adaptive_gate = AdaptiveGate(d)
                self.global_ca = CrossModalTransformer(d, ca_depth, heads, hidden, drop)  # Eq. 25
        if self.use_local:
            if "vision" in self.input_dims:
                self.spatial = SpatialAttention(self.input_dims["vision"], cfg.conv_kernel)
            self.local_encoders = nn.ModuleDict({m: ModalityEncoder(dim, d, layers, heads, drop)
                                                 for m, dim in self.input_dims.items()})
            self.local_ca = CrossModalTransformer(d, cfg.lpath_ca_depth, heads, hidden, drop)
        if self.use_global and self.use_local and self.use_path_gate:
            self.path_gate = PathGate(d, hidden)
        self.head = nn.Linear(d, self.out_dim)  # Eq. 35

    def global_path(self, inputs, present, attention, extras) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = {m: self.global_tokens[m](x, mask) for m, (x, mask) in inputs.items() if m in self.global_tokens}
        text = self.text_encoder(tokens[self.anchor])  # Eq. 4: [h_t^0 .. h_t^{n-1}]
        lq = self.query.expand(len(present), -1, -1)
        gates, maps = [], {}
        for i, layer in enumerate(self.dglqa):  # layer i sees text layer i-1 (Eq. 5)
            lq, gate, maps = layer(lq, {**tokens, self.anchor: text[i]}, present)
            gates.append(gate)
        attention.update({f"dglqa_{m}": a for m, a in maps.items()})
        lq = self.dwconv(lq)  # Eq. 20
        if not self.cfg.gpath_ca:  # "w/o GPath CA": the query itself, pooled
            f_global = lq.mean(1)
        else:
            ht = text[-1]
            always = present.new_ones(ht.shape[:2])
            # Eq. 21: the text (target) attends to the query (source); `swap_ca` reverses the flow
            f, attention["text_ca"] = self.cross(self.text_ca, lq, always, ht, always)
            lq, g = self.adaptive_gate(lq, ht, f)  # Eq. 22-24
            f_global, attention["global_ca"] = self.cross(self.global_ca, lq, always, ht, always)  # Eq. 25
            extras["adaptive_gate"] = g.mean((1, 2))
        if not gates:  # "w/o DGLQA": no modality gate; report the plain share of the present modalities
            return f_global, presence_weights(present)
        gates = torch.stack(gates, 1)  # (B, n_layers, M)
        extras["modality_gate_layers"] = gates
        return f_global, gates.mean(1)

    def cross(self, block: "CrossModalTransformer", src, src_mask, tgt, tgt_mask):
        """A path's cross-attention, target attending to source; "LPath CA <-> GPath CA" (`swap_ca`) reverses the
        flow (the source attends to the target), which swaps the direction each path uses."""
        return block(tgt, tgt_mask, src, src_mask) if self.cfg.swap_ca else block(src, src_mask, tgt, tgt_mask)

    def local_path(self, inputs, attention) -> torch.Tensor:
        seq, mask = {}, {}
        for m, (x, mk) in inputs.items():
            if m == "vision":
                x, attention["spatial"] = self.spatial(x, mk)  # Eq. 26
            seq[m], _ = self.local_encoders[m](x, mk)  # Eq. 27-28
            mask[m] = mk
        tgt = torch.cat([seq[m] for m in self.others], 1) if self.others else None  # Eq. 29
        tgt_mask = torch.cat([mask[m] for m in self.others], 1) if self.others else None
        if tgt is None:  # text only: the [CLS] token alone attends to the text
            f_local, attention["local_ca"] = self.local_ca(seq[self.anchor], mask[self.anchor])
        else:  # Eq. 30: audio+vision (target) attend to the text (source); `swap_ca` reverses the flow
            f_local, attention["local_ca"] = self.cross(self.local_ca, seq[self.anchor], mask[self.anchor], tgt,
                                                        tgt_mask)
        return f_local

    def forward(self, batch) -> ModelOutput:
        inputs = self.inputs(batch)
        present = torch.stack([inputs[m][1].any(1) for m in self.modalities], 1)  # (B, M)
        attention, extras, gates = {}, {}, {}
        f_global = f_local = None
        if self.use_global:
            f_global, gates["modality"] = self.global_path(inputs, present, attention, extras)
            extras["f_global"] = f_global
        if self.use_local:
            f_local = self.local_path(inputs, attention)
            extras["f_local"] = f_local
        if f_global is None or f_local is None:  # one path only: it takes all the weight
            fused = f_global if f_local is None else f_local
            w = torch.tensor([1.0, 0.0] if f_local is None else [0.0, 1.0], device=fused.device)
            gates["path"] = w.expand(len(fused), 2).clone()
        elif self.use_path_gate:
            fused, gates["path"] = self.path_gate(f_global, f_local)
        else:  # Table 2 "w/o Gate": plain average of the two paths
            fused = (f_global + f_local) / 2
            gates["path"] = fused.new_full((len(fused), 2), 0.5)
        logits = self.head(fused)
        return ModelOutput(pred=self.to_pred(logits), logits=logits, gates=gates, attention=attention,
                           fused=fused, extras=extras)
