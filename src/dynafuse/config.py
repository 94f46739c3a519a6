"""Configs are plain nested dicts from YAML presets: defaults <- dataset preset <- model preset <- overrides.
A model preset may end with `datasets: {NAME: {...}}`, its settings for one dataset, merged over the rest of it.

Overrides are `key.path=value` strings; values are parsed as YAML (`train.lr=3e-4`, `model.modalities=[text]`).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import yaml

from .errors import ConfigError

PRESETS = resources.files("dynafuse") / "configs"


def _read(path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML ({e})", path) from None


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_overrides(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _value(raw)
    return out


def _value(raw: str):
    """YAML value, except that `3e-4` is a number (YAML 1.1 would read it as a string)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def dataset_preset_name(dataset: str) -> str:
    return dataset.split(":", 1)[0] if ":" in dataset else dataset


def build_config(model: str, dataset: str, overrides: list[str] | dict | None = None, config_file=None) -> dict:
    from .models import MODELS

    if model not in MODELS:  # fail before any data is loaded or encoded
        raise ConfigError(f"unknown model {model!r}; known: {sorted(MODELS)}")
    cfg = _read(PRESETS / "defaults.yaml")
    data_preset = dataset_preset_name(dataset)
    cfg = merge(cfg, _read(PRESETS / "datasets" / f"{data_preset}.yaml"))
    preset = _read(PRESETS / "models" / f"{model}.yaml")
    per_dataset = preset.pop("datasets", None) or {}
    cfg = merge(merge(cfg, preset), per_dataset.get(data_preset) or {})
    if config_file:
        if not Path(config_file).exists():
            raise ConfigError("no such config file", config_file)
        cfg = merge(cfg, _read(Path(config_file)))
    over = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    cfg = merge(cfg, over)
    cfg["model"]["name"], cfg["data"]["name"] = model, dataset
    return cfg


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
