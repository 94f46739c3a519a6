"""The model contract every family follows, and the one registry.

- `create_model(name, input_dims, cfg)` builds any registered model (timm-style).
- `forward(batch) -> ModelOutput` with `pred (B,)` plus the internals worth looking at.
- `loss_terms()` names the extra loss terms the model needs; the trainer adds them without special cases.
- `stages` lists training stages (a two-stage model such as KuDA declares two); the trainer runs them in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import TextBackbone

MODELS: dict[str, tuple[type, dict, str]] = {}


def register_model(name: str, description: str, **defaults):
    """Register a model class under `name`; `defaults` are config values this name implies."""

    def deco(cls):
        MODELS[name] = (cls, defaults, description)
        return cls

    return deco


def create_model(name: str, input_dims: dict[str, int], cfg: dict | None = None) -> "MSAModel":
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    cls, defaults, _ = MODELS[name]
    return cls(dict(input_dims), {**defaults, **(cfg or {})})


def list_models() -> dict[str, str]:
    return {name: desc for name, (_, _, desc) in sorted(MODELS.items())}


@dataclass
class ModelOutput:
    pred: torch.Tensor  # (B,) score (regression) or class in {-1, 0, 1} (3-class task)
    logits: torch.Tensor  # (B, 1) or (B, 3): what the task loss is computed on
    unimodal: dict[str, torch.Tensor] = field(default_factory=dict)  # per-modality head outputs
    gates: dict[str, torch.Tensor] = field(default_factory=dict)  # named gate weights, e.g. modality (B, M)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)  # named attention maps
    fused: torch.Tensor | None = None  # (B, d) fused representation
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


def gate_components(name: str, width: int, modalities: list[str]) -> list[str]:
    """Column names of a (B, M) gate: DPDF-LQ's path gate mixes (global, local); a modality gate follows the
    model's modality order; anything else is numbered."""
    if name == "path" and width == 2:
        return ["global", "local"]
    if width == len(modalities):
        return list(modalities)
    return [name] if width == 1 else [str(i) for i in range(width)]


# A loss term is called as term(out, batch, task=..., kind=...) and returns a scalar.
LossTerm = Callable[..., torch.Tensor]


class MSAModel(nn.Module):
    """Base class: resolves the modalities it uses, the task head size and the text backbone."""

    stages: tuple[str, ...] = ("main",)

    def __init__(self, input_dims: dict[str, int], cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.task = cfg.get("task", "regression")
        if self.task not in ("regression", "3class"):
            raise ConfigError(f"task must be 'regression' or '3class', not {self.task!r}")
        self.out_dim = 1 if self.task == "regression" else 3
        self.label_scale = cfg.get("value_range", 3.0) / 3.0  # 1 on [-3, 3] data, 1/3 on [-1, 1] (SIMS)
        wanted = cfg.get("modalities") or list(input_dims)
        self.modalities = [m for m in ("text", "audio", "vision") if m in wanted and m in input_dims]
        if not self.modalities:
            raise ConfigError(f"model needs one of {list(wanted)} but the data has {list(input_dims)}")
        self.input_dims = {m: input_dims[m] for m in self.modalities}
        # Train-split feature statistics live in the model, so a checkpoint standardises new clips the same way.
        self.standardize = cfg.get("standardize", True)
        for m, d in self.input_dims.items():
            if d:
                self.register_buffer(f"mean_{m}", torch.zeros(d))
                self.register_buffer(f"std_{m}", torch.ones(d))
        self.progress = 0.0  # share of training done; the trainer updates it every epoch
        self.stage = self.stages[-1]
        self.text_backbone = None
        if self.input_dims.get("text") == 0:  # token ids: this model runs (and fine-tunes) the backbone
            self.text_backbone = TextBackbone(cfg.get("backbone"), cfg.get("finetune_layers"))
            self.input_dims["text"] = self.text_backbone.hidden_size

    def inputs(self, batch, run_backbone: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(features, mask) per modality the model uses; text ids go through the backbone first, unless
        `run_backbone=False` (a model that runs the backbone layer by layer itself gets the ids back)."""
        out = {}
        for m in self.modalities:
            x, mask = batch.x[m], batch.mask[m]
            if m == "text" and self.text_backbone is not None:
                x = self.text_backbone(x, mask) if run_backbone else x
            elif self.standardize:
                x = (x - getattr(self, f"mean_{m}")) / getattr(self, f"std_{m}") * mask.unsqueeze(-1)
            out[m] = (x, mask)
        return out

    def set_feature_stats(self, stats: dict) -> None:
        """Store train-split (mean, std) per modality; called once by the trainer before fitting."""
        for m, (mean, std) in stats.items():
            if hasattr(self, f"mean_{m}"):
                getattr(self, f"mean_{m}").copy_(torch.as_tensor(mean))
                getattr(self, f"std_{m}").copy_(torch.as_tensor(std))

    def to_pred(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.squeeze(-1) if self.task == "regression" else logits.argmax(-1) - 1

    def loss_terms(self) -> dict[str, tuple[float, LossTerm]]:
        return {}

    def task_weight(self, stage: str) -> float:
        """Weight of the task loss in a stage (a pretraining stage may train other heads only)."""
        return 1.0

    def stage_setup(self, stage: str) -> None:
        """Called by the trainer before each declared stage; override to freeze or unfreeze parts."""
        self.stage = stage
