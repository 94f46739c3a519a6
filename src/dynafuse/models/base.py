"""The model contract every family follows, and the one registry.

- `create_model(name, input_dims, cfg)` builds any registered model (timm-style); `cfg` is the family's typed
  config (a `ModelConfig` subclass, the only copy of its defaults) or a dict of overrides to it.
- `forward(batch) -> ModelOutput` with `pred (B,)` plus the internals worth looking at.
- `loss_terms()` names the extra loss terms the model needs; the trainer adds them without special cases.
- `stages` lists training stages (a two-stage model such as KuDA declares two); the trainer runs them in order.
- A model describes itself: `Config` (its typed config), `text_inputs` (token ids and/or frozen features),
  `gate_names` (the component names of its non-modality gates); the registry entry says whether the cost
  benchmark includes it by default. Tests and the benchmark read these, so adding a model is one new file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..config import ModelConfig, check_ranges, merge_layer
from ..data.core import MODALITIES
from ..errors import ConfigError
from .blocks import TextBackbone

TEXT_FEATURES, TOKEN_IDS = "features", "token_ids"


@dataclass
class ModelEntry:
    """A registered name: its class, the config field values the name implies, and how it is listed."""

    cls: type
    defaults: dict
    description: str
    benchmark: bool = True  # measured by `dynafuse bench` unless other models are named


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, benchmark: bool = True, **defaults):
    """Class decorator: register `cls` under `name`; `defaults` are config values this name implies (stack the
    decorator to register one class under several names, e.g. early/late fusion)."""

    def deco(cls):
        MODELS[name] = ModelEntry(cls, defaults, description, benchmark)
        return cls

    return deco


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def model_config(name: str, overrides: dict | None = None) -> ModelConfig:
    """The typed config of a registered model: its family's defaults, the name's own values, then `overrides`
    (checked: an unknown key, a wrong type or an out-of-range value is a ConfigError)."""
    entry = model_entry(name)
    base = OmegaConf.structured(entry.cls.Config(name=name, **entry.defaults))
    cfg = OmegaConf.to_object(merge_layer(base, dict(overrides or {}), f"model {name}"))
    check_ranges(cfg, "model.")
    return cfg


def create_model(name: str, input_dims: dict[str, int], cfg: ModelConfig | DictConfig | dict | None = None,
                 **context) -> "MSAModel":
    """Build a registered model. `input_dims` maps modality -> feature dim (0: text as token ids); `context` is
    what the data tells the model (see `MSAModel.__init__`: value_range, backbone, unimodal_labels,
    stage_modalities)."""
    entry = model_entry(name)
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_object(cfg)
    if not isinstance(cfg, ModelConfig):
        cfg = model_config(name, cfg)
    return entry.cls(dict(input_dims), cfg, **context)


def list_models() -> dict[str, str]:
    return {name: e.description for name, e in sorted(MODELS.items())}


def benchmark_models() -> list[str]:
    """The models `dynafuse bench` measures by default, in registration order."""
    return [name for name, e in MODELS.items() if e.benchmark]
@dataclass
class ModelOutput:
    pred: torch.Tensor  # (B,) score (regression) or class in {-1, 0, 1} (3-class task)
    logits: torch.Tensor  # (B, 1) or (B, 3): what the task loss is computed on
    unimodal: dict[str, torch.Tensor] = field(default_factory=dict)  # per-modality head outputs
    gates: dict[str, torch.Tensor] = field(default_factory=dict)  # named gate weights, e.g. modality (B, M)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)  # named attention maps
    fused: torch.Tensor | None = None  # (B, d) fused representation
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


# A loss term is called as term(out, batch, task=..., kind=...) and returns a scalar.
LossTerm = Callable[..., torch.Tensor]


class MSAModel(nn.Module):
    """Base class: resolves the modalities it uses, the task head size and the text backbone.

    Subclasses set `Config` (their ModelConfig subclass) and, where it differs, `text_inputs`, `gate_names`
    and `stages`. Errors: ConfigError when the data has none of the wanted modalities, or text in a form the
    model does not take.
    """

    Config: type[ModelConfig] = ModelConfig
    stages: tuple[str, ...] = ("main",)
    text_inputs: tuple[str, ...] = (TEXT_FEATURES, TOKEN_IDS)  # frozen token states, or ids for a backbone it runs
    gate_names: dict[str, tuple[str, ...]] = {}  # a gate that does not weigh modalities: its column names

    def __init__(self, input_dims: dict[str, int], cfg: ModelConfig, value_range: float = 3.0,
                 backbone: str | None = None, unimodal_labels=(), stage_modalities: dict | None = None,
                 text_cached_layers: int = 0):
        """`value_range`: labels lie in [-R, R]; `backbone`: the text backbone a token-id model runs;
        `unimodal_labels`: the modalities the data has its own unimodal labels for; `stage_modalities`: per
        stage trained on another dataset (`stage_datasets`), the modalities that dataset provides with this run's
        feature spec; `text_cached_layers`: training text may arrive as the cached output of the backbone's first N
        (frozen) layers instead of token ids (`text_cache_layers`). The trainer records this context in run.json
        so a finished run rebuilds the same model."""
        super().__init__()
        self.cfg = cfg
        self.text_cached_layers = int(text_cached_layers)
        self.unimodal_labels = tuple(unimodal_labels)
        self.stage_modalities = {k: tuple(v) for k, v in (stage_modalities or {}).items()}
        self.task = cfg.task
        self.out_dim = 1 if self.task == "regression" else 3
        self.value_range = float(value_range)
        self.label_scale = self.value_range / 3.0  # 1 on [-3, 3] data, 1/3 on [-1, 1] (SIMS)
        self.modalities = self.used_modalities(cfg, input_dims)
        if not self.modalities:
            raise ConfigError(f"model {cfg.name} needs one of {list(cfg.modalities or MODALITIES)} but the data has "
                              f"{list(input_dims)}")
        self.input_dims = {m: input_dims[m] for m in self.modalities}
        form = TOKEN_IDS if self.input_dims.get("text") == 0 else TEXT_FEATURES
        if "text" in self.input_dims and form not in self.text_inputs:
            raise ConfigError(f"model {cfg.name} takes text as {' or '.join(self.text_inputs)}, not {form}: set "
                              f"data.text.finetune={'true' if TOKEN_IDS in self.text_inputs else 'false'}")
        # Train-split feature statistics live in the model, so a checkpoint standardises new clips the same way.
        self.standardize = cfg.standardize
        for m, d in self.input_dims.items():
            if d:
                self.register_buffer(f"mean_{m}", torch.zeros(d))
                self.register_buffer(f"std_{m}", torch.ones(d))
        self.progress = 0.0  # share of training done; the trainer updates it every epoch
        self.stage = self.stages[-1]
        self.text_backbone = None
        if self.input_dims.get("text") == 0:  # token ids: this model runs (and fine-tunes) the backbone
            self.text_backbone = TextBackbone(backbone, cfg)
            self.input_dims["text"] = self.text_backbone.hidden_size
        elif cfg.lora_rank and "text" in self.input_dims:
            raise ConfigError("model.lora_rank adapts a text backbone the model runs, but text arrives as frozen "
                              "features: set data.text.finetune=true")

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

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """A continuous sentiment score per sample (B,): the regression output, or for the 3-class task the
        expected level sum_c p_c * c over the classes c in {-1, 0, 1}."""
        if self.task == "regression":
            return logits.squeeze(-1)
        return logits.softmax(-1) @ torch.tensor([-1.0, 0.0, 1.0], device=logits.device, dtype=logits.dtype)

    def gate_components(self, name: str, width: int) -> list[str]:
        """Column names of a (B, width) gate: its declared `gate_names`, else the model's modality order when it
        has one column per modality, else numbered."""
        if len(self.gate_names.get(name, ())) == width:
            return list(self.gate_names[name])
        if width == len(self.modalities):
            return list(self.modalities)
        return [name] if width == 1 else [str(i) for i in range(width)]

    def loss_terms(self) -> dict[str, tuple[float, LossTerm]]:
        return {}

    @classmethod
    def text_cache_layers(cls, cfg: ModelConfig, depth: int) -> int:
        """How many bottom layers of a fine-tuned text backbone (of `depth` layers) stay frozen and feed nothing
        but the layers above, so the trainer may compute them once per dataset; 0 by default."""
        return 0

    @staticmethod
    def used_modalities(cfg: ModelConfig, data_modalities) -> list[str]:
        """The modalities the model reads: those of `cfg.modalities` (all when empty) that the data has."""
        wanted = cfg.modalities or list(data_modalities)
        return [m for m in MODALITIES if m in wanted and m in data_modalities]

    @classmethod
    def stage_datasets(cls, cfg: ModelConfig, data_modalities, unimodal_labels) -> dict[str, str]:
        """Stages trained on another dataset than the run's ({stage: dataset name}); none by default."""
        return {}

    def run_info(self) -> dict:
        """What the run folder's run.json should record about this model beyond its config (and print)."""
        return {}

    def task_weight(self, stage: str) -> float:
        """Weight of the task loss in a stage (a pretraining stage may train other heads only)."""
        return 1.0

    def stage_setup(self, stage: str) -> None:
        """Called by the trainer before each declared stage; override to freeze or unfreeze parts."""
        self.stage = stage
