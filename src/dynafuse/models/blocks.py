"""Shared building blocks. Each is small and named after what the papers call it."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid steps: (B, T, D), (B, T) -> (B, D); rows with no valid step give zeros."""
    w = mask.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def masked_softmax(logits: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Softmax over the available options only; a row with none gets uniform weights (never NaN)."""
    none = ~available.any(-1, keepdim=True)
    return logits.masked_fill(~available, float("-inf")).masked_fill(none, 0.0).softmax(-1)


def keep_one_key(mask: torch.Tensor) -> torch.Tensor:
    """A copy of a key mask (B, T) in which a row with no valid key gets one dummy key (position 0).

    Attention over a row whose keys are all masked is a softmax of -inf only, which is NaN; with the dummy key it
    stays finite. The caller zeroes (or ignores) the output of those rows, so the dummy never leaks."""
    safe = mask.clone()
    safe[~mask.any(-1), 0] = True
    return safe


def presence_weights(present: torch.Tensor) -> torch.Tensor:
    """(B, M) bool -> (B, M) float weights, uniform over the present modalities (a mean over what a sample has);
    a sample with none gets uniform weights over all M."""
    w = present.float()
    w[w.sum(1) == 0] = 1.0
    return w / w.sum(1, keepdim=True)


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine positional encoding (Vaswani et al.), added to the projected inputs."""

    def __init__(self, d_model: int, max_len: int = 4096):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]]


class ModalityEncoder(nn.Module):
    """2501.08085's ModalityTransformer: projection -> positions -> transformer -> pooled state.

    Returns the sequence (B, T, d) and the pooled state (B, d). A sample without the modality
    (all-false mask) gets a zero state instead of the NaN an all-masked attention row would give.
    """

    def __init__(self, d_in: int, d_model: int = 64, layers: int = 1, heads: int = 4, dropout: float = 0.1,
                 max_len: int = 4096):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(d_in, d_model), nn.Dropout(dropout))
        self.pos = SinusoidalPositions(d_model, max_len)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, return_states: bool = False):
        """-> (sequence, pooled), plus with `return_states` the hidden states: the embedded input, then each layer's
        output (KuDA's adapters read them)."""
        safe = keep_one_key(mask)  # an empty row gets one dummy step; its output is zeroed below
        h = self.pos(self.proj(x))
        states = [h]
        for layer in self.transformer.layers:
            h = layer(h, src_key_padding_mask=~safe)
            states.append(h)
        h = self.norm(h) * mask.unsqueeze(-1)
        return (h, masked_mean(h, mask), states) if return_states else (h, masked_mean(h, mask))


class Head(nn.Module):
    """Prediction head: a small MLP from a representation to the task output."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        hidden = hidden or d_in
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def is_lora_weight(name: str) -> bool:
    """A parameter name of a low-rank adapter (peft's `lora_A` / `lora_B`), not of the pretrained model."""
    return ".lora_" in name


class TextBackbone(nn.Module):
    """A Hugging Face encoder run inside the model, so it is fine-tuned (MiniLM-L6 by default).

    What trains (`cfg`: the model's config, a `ModelConfig`; None = the whole backbone):
    - the whole backbone (`finetune_layers=null`, `lora_rank=null`); its unused pooler never does;
    - `finetune_layers=N`: its top N layers only (the bottom stays as pretrained; CrossSent caches it);
    - `lora_rank=r`: low-rank adapters only (LoRA, Hu et al. 2021, Eq. 3: h = W0 x + (alpha / r) B A x, B = 0 at
      the start, so the model starts as the pretrained one), on every layer's attention projections (BERT's
      query/key/value/attention.output.dense, MPNet's q/k/v/o; `lora_targets=all` adds the feed-forward), or on the
      top N layers only with `finetune_layers=N`. The adapters are injected in place (peft's
      `inject_adapter_in_model`), so a model that runs `encoder.encoder.layer[i]` itself runs the adapted layers.
    Raises ConfigError when peft is missing or the backbone has no such layers.
    """

    def __init__(self, name: str | None = None, cfg: ModelConfig | None = None):
        super().__init__()
        from ..data.text import load_backbone

        self.encoder = load_backbone(name)
        self.hidden_size = self.encoder.config.hidden_size
        self.finetune_layers = cfg.finetune_layers if cfg is not None else None
        self.lora_rank = cfg.lora_rank if cfg is not None else None
        self.tuned = None  # names of the encoder.layer blocks that train (None: all)
        if self.finetune_layers is not None:
            depth = len(self.layers())
            self.tuned = [f"encoder.layer.{i}." for i in range(max(0, depth - self.finetune_layers), depth)]
        if self.lora_rank:
            add_lora(self.encoder, cfg, self.tuned)
        self.set_trainable(True)

    def layers(self) -> nn.ModuleList:
        """The transformer blocks (`encoder.layer`, BERT-style and MPNet)."""
        layers = getattr(getattr(self.encoder, "encoder", None), "layer", None)
        if layers is None:
            raise ConfigError(f"model.finetune_layers needs a BERT-style backbone (encoder.layer); "
                              f"{type(self.encoder).__name__} is not one")
        return layers

    def set_trainable(self, flag: bool) -> None:
        """Freeze the backbone (False), or train what the config says (True; see the class)."""
        for n, p in self.encoder.named_parameters():
            trains = not n.startswith("pooler.") and (self.tuned is None or n.startswith(tuple(self.tuned)))
            p.requires_grad = flag and trains and (is_lora_weight(n) if self.lora_rank else True)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) and mask (B, T) -> the last layer's token states (B, T, H)."""
        return self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state


def add_lora(encoder: nn.Module, cfg: ModelConfig, within: list[str] | None = None) -> list[str]:
    """Inject LoRA adapters (rank `cfg.lora_rank`, scale `cfg.lora_alpha / rank`, dropout `cfg.lora_dropout`) in
    place into the attention projections of `encoder` (every nn.Linear under an `.attention.` module of a layer;
    `lora_targets=all`: every nn.Linear of a layer), only in the layers whose names start with one of `within`
    (None: all). Returns the adapted module names. ConfigError: peft missing, or nothing to adapt."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError("model.lora_rank needs peft: pip install \"dynafuse[lora]\"") from None
    names = [n for n, m in encoder.named_modules()
             if isinstance(m, nn.Linear) and n.startswith("encoder.layer.")
             and (cfg.lora_targets == "all" or ".attention." in n)
             and (within is None or n.startswith(tuple(within)))]
    if not names:
        raise ConfigError(f"model.lora_rank: {type(encoder).__name__} has no linear layers under encoder.layer "
                          f"to adapt (lora_targets={cfg.lora_targets})")
    rank = int(cfg.lora_rank)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=cfg.lora_alpha or rank, lora_dropout=cfg.lora_dropout,
                                       target_modules=names, bias="none"), encoder)
    return names


class CrossAttention(nn.Module):
    """Multi-head attention of a query sequence over a key/value sequence, with a residual and LayerNorm.

    Query rows whose keys are all masked (the other modality is missing) get their input back unchanged.
    Returns the updated query (B, Tq, d) and the attention weights (B, Tq, Tk), averaged over heads.
    """

    def __init__(self, d_model: int, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        has_keys = kv_mask.any(1)
        h, w = self.attn(q, kv, kv, key_padding_mask=~keep_one_key(kv_mask), need_weights=True)
        h = h * has_keys[:, None, None]  # nothing to attend to: no update
        return self.norm(q + h), w * has_keys[:, None, None]


class SoftmaxGate(nn.Module):
    """Input-conditioned weights over n options: softmax(W x). Masked options get weight 0."""

    def __init__(self, d_in: int, n: int):
        super().__init__()
        self.proj = nn.Linear(d_in, n)

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.proj(x)
        return logits.softmax(-1) if available is None else masked_softmax(logits, available)


class Adapter(nn.Module):
    """Residual bottleneck adapter (Houlsby et al.): x + up(GELU(down(x)))."""

    def __init__(self, d_model: int, bottleneck: int = 32, dropout: float = 0.1):
        super().__init__()
        self.down, self.up = nn.Linear(d_model, bottleneck), nn.Linear(bottleneck, d_model)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.up.weight)  # starts as the identity, so a pretrained backbone is undisturbed
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.drop(nn.functional.gelu(self.down(x))))
