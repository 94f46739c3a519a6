"""A run's typed config, built or read back without importing Lightning, so that a wrong model name, key or value
is reported within the time it takes to import torch (`dynafuse train` checks it before anything else)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..config import compose, load_run_config
from ..data.core import MODALITIES
from ..errors import ConfigError, DataError
from ..metrics import METRIC_KEYS
from ..models import model_config, model_entry
from .rundir import CONFIG, RunDir

MONITORS = (*[k for k in METRIC_KEYS if k != "n"], "f1_3", "auto")


def build_config(model: str, dataset: str, overrides: list[str] | dict | None = None,
                 config_file: str | Path | None = None, preset: str | None = None) -> DictConfig:
    """The typed run config of `model` on `dataset`: the model family's defaults <- dataset preset <- model
    preset <- named `preset` <- `config_file` <- `overrides` (`key.path=value`). ConfigError (one line) on an
    unknown model, key, wrong type or out-of-range value, before any data is read."""
    cfg = compose(model_config(model), model, dataset, overrides, config_file, preset)
    wrong = [m for m in cfg.model.modalities or [] if m not in MODALITIES]
    if wrong:  # else found out only once the data is read
        raise ConfigError(f"model.modalities: {wrong[0]!r} is not a modality; choose from {', '.join(MODALITIES)}")
    stages = model_entry(model).cls.stages
    unknown = [s for s in [*cfg.train.stages, *cfg.train.skip_stages] if s not in stages]
    if unknown:  # a typo would otherwise be ignored in silence
        raise ConfigError(f"train stage {unknown[0]!r}: {model} trains in the stage{'s' * (len(stages) > 1)} "
                          + ", ".join(stages))
    if cfg.train.monitor not in MONITORS:
        raise ConfigError(f"train.monitor={cfg.train.monitor!r} is not a metric; choose one of {', '.join(MONITORS)}")
    if cfg.train.strategy != "auto":  # Lightning is imported only to check a strategy someone chose
        from lightning.pytorch.strategies import StrategyRegistry

        strategies = ["auto", *StrategyRegistry.available_strategies()]
        if cfg.train.strategy not in strategies:
            raise ConfigError(f"train.strategy={cfg.train.strategy!r} is not a Lightning strategy; choose one of "
                              + ", ".join(sorted(strategies)))
    return cfg


def run_config(run: RunDir) -> DictConfig:
    """A run folder's config.yaml read back through its model's schema (checked like a new config)."""
    raw = run.raw_config()
    name = (raw.get("model") or {}).get("name")
    if not name:
        raise DataError("config.yaml names no model (model.name)", run / CONFIG)
    return load_run_config(model_config(name), raw, run / CONFIG)
