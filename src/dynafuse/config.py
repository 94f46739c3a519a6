"""Typed configs: one dataclass per section, the only copy of every default (OmegaConf structured configs).

A run's config is `RunConfig`: `variant`, `model` (the model family's own dataclass, a `ModelConfig`), `data`
(`DataConfig`) and `train` (`TrainConfig`). It is composed, in order, from
    the dataclass defaults <- configs/datasets/<dataset>.yaml <- configs/models/<model>.yaml (then its
    `datasets: {<dataset>: ...}` section) <- --config FILE <- key.path=value overrides.
Presets hold only what differs from the defaults, each with where it comes from (a paper, or ours). A named
preset (`--preset NAME`, configs/presets/NAME.yaml) holds a paper's own protocol, merged after the model preset.

Every layer is checked as it is merged: an unknown key (`model.dropuot=0.3`), a value of the wrong type
(`train.lr=fast`), a section given a scalar (`train=5`) or a value out of its range (`train.lr=-1`,
`data.batch_size=0`) is one `ConfigError` line naming the key, the source and, for a typo, the closest keys.
Ranges live in each field's metadata (`positive`, `at_least`, `in_range`, `one_of`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError, first_line

PRESETS = resources.files("dynafuse") / "configs"


# --------------------------------------------------------------------------- field helpers (ranges as metadata)

def positive(default, doc: str = ""):
    """A number that must be > 0."""
    return field(default=default, metadata={"check": ("gt", 0), "doc": doc})


def at_least(default, low, doc: str = ""):
    """A number that must be >= `low` (None passes: "not set")."""
    return field(default=default, metadata={"check": ("ge", low), "doc": doc})


def in_range(default, low, high, doc: str = "", high_open: bool = False):
    """A number in [low, high] (or [low, high) with `high_open`)."""
    return field(default=default, metadata={"check": ("range", low, high, high_open), "doc": doc})


def one_of(default, *choices, doc: str = ""):
    """A value from a fixed set."""
    return field(default=default, metadata={"check": ("choice", choices), "doc": doc})


def _problem(value, check) -> str | None:
    kind, *args = check
    if value is None:
        return None
    if kind == "choice":
        return None if value in args[0] else f"must be one of {', '.join(map(str, args[0]))}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # a type problem, which OmegaConf reports
    if not math.isfinite(value):
        return "must be a finite number"
    if kind == "gt" and not value > args[0]:
        return f"must be > {args[0]}"
    if kind == "ge" and not value >= args[0]:
        return f"must be >= {args[0]}"
    if kind == "range":
        low, high, high_open = args
        if not (low <= value < high if high_open else low <= value <= high):
            return f"must be in [{low}, {high}{')' if high_open else ']'}"
    return None


def check_ranges(obj, prefix: str = "", source: object = None) -> None:
    """Walk a config dataclass instance and refuse the first value outside its field's range."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, key + ".", source)
        elif isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    check_ranges(v, f"{key}.{k}.", source)
        elif "check" in f.metadata and (why := _problem(value, f.metadata["check"])):
            raise ConfigError(f"{key}={value!r} is out of range: it {why}", source)


# --------------------------------------------------------------------------- the sections

@dataclass
class ModelConfig:
    """What every model reads; a model family subclasses it with its own fields (and their paper sources)."""

    name: str = ""
    task: str = one_of("regression", "regression", "3class", doc="3class: 2501.08085's MOSEI task (cross-entropy)")
    d_model: int = positive(64)
    layers: int = at_least(1, 0)
    heads: int = positive(4)
    dropout: float = in_range(0.1, 0.0, 1.0, high_open=True)
    standardize: bool = True  # z-score each feature dim with train-split statistics (kept in the checkpoint)
    modalities: Optional[List[str]] = None  # null: every modality the data has
    finetune_layers: Optional[int] = at_least(None, 0, "token-id text: train only the backbone's top N layers")
    # token-id text: low-rank adapters (LoRA, Hu et al. 2021) train instead of the backbone's weights
    lora_rank: Optional[int] = positive(None, "LoRA rank r; null: no adapters (the weights themselves train)")
    lora_alpha: Optional[float] = positive(None, "LoRA scale alpha (updates x alpha/r); null: alpha = r, as Hu et "
                                                 "al. Sec. 4.1 (alpha set to the first r tried, not tuned)")
    lora_dropout: float = in_range(0.1, 0.0, 1.0, doc="dropout on the adapters' input (Hu et al.'s GPT-2 setting)",
                                   high_open=True)
    lora_targets: str = one_of("attention", "attention", "all",
                               doc="attention: query/key/value/output projections (BERT; MPNet's q/k/v/o); all: also "
                                   "the feed-forward")


@dataclass
class TextConfig:
    source: str = one_of("auto", "auto", "raw", "features", doc="auto: a dataset's own text features, else encode")
    backbone: str = "minilm"  # a packaged backbone name, or a local Hugging Face folder
    max_len: int = positive(50)
    finetune: bool = False  # false: frozen token states cached on disk; true: token ids, the model runs the backbone
    # fine-tuning a backbone whose bottom layers stay frozen: compute those layers once per dataset and cache them
    frozen_cache: bool = True


@dataclass
class DataOptions:
    """Reader options; each reader takes the ones its signature names (null: the reader's default)."""

    modalities: Optional[List[str]] = None  # mosi: which of text/audio (the leaky vectors are refused)
    text_column: Optional[str] = None  # label.csv column with the transcript (sims/simsv2: text_en by default)
    text_source: Optional[str] = None  # mosi-bclstm: transcript | cnn (the released 100-d text vectors)
    valid_share: Optional[float] = in_range(None, 0.0, 1.0, high_open=True)  # mosi-bclstm's carved valid share
    allow_pickle: bool = False  # pickles run code when they load: opt in for files you trust
    fix_nonfinite: bool = False  # replace NaN/Inf features with 0 (printed and recorded) instead of refusing
    # any dataset: clip labels outside [-R, R] into it (printed and recorded) instead of refusing the data
    clip_labels: bool = False
    split: Optional[str] = one_of(None, None, "train", "valid", "test",
                                  doc="misa: the split a single file holds (training needs the folder of all three)")


@dataclass
class DataConfig:
    name: str = ""
    data_dir: Optional[str] = None  # else $DYNAFUSE_DATA, else ../shared/datasets
    value_range: Optional[float] = one_of(None, None, 1.0, 3.0, doc="label scale [-R, R]; null: inferred")
    options: DataOptions = field(default_factory=DataOptions)
    text: TextConfig = field(default_factory=TextConfig)
    cache_dir: str = ".cache/dynafuse"
    batch_size: int = positive(32)
    limit: Optional[int] = positive(None, "keep only the first N rows of each split (smoke tests)")
    num_workers: int = at_least(0, 0)


@dataclass
class StageTrainConfig:
    """Settings of one training stage that differ from `train` (e.g. KuDA's stage 1 has its own lr); null: as
    `train`."""

    lr: Optional[float] = positive(None)
    weight_decay: Optional[float] = at_least(None, 0.0)
    max_epochs: Optional[int] = positive(None)
    patience: Optional[int] = at_least(None, 0)
    warmup_ratio: Optional[float] = in_range(None, 0.0, 1.0, high_open=True)
    loss: Optional[str] = one_of(None, None, "l1", "mse")


@dataclass
class TrainConfig:
    seed: int = in_range(0, 0, 2**32 - 1, "numpy's seed range")
    max_epochs: int = positive(40)
    patience: int = at_least(8, 0, "early stopping on the valid split")
    monitor: str = "mae"  # the valid metric that selects the checkpoint (checked against the metric suite)
    loss: str = one_of("l1", "l1", "mse")
    optimizer: str = one_of("adamw", "adamw", "adam", doc="adam: plain Adam, L2 weight decay (2501.08085 uses Adam)")
    lr: float = positive(3.0e-4, "chosen on MOSI valid MAE over 3 seeds (1e-3: 0.861, 3e-4: 0.850)")
    backbone_lr: float = positive(3.0e-5, "a fine-tuned backbone's pretrained weights (its LoRA adapters train at lr)")
    weight_decay: float = at_least(1.0e-4, 0.0)
    warmup_ratio: float = in_range(0.0, 0.0, 1.0, high_open=True)
    grad_clip: Optional[float] = at_least(1.0, 0.0)
    modality_dropout: float = in_range(0.0, 0.0, 1.0, doc="P: in training each sample drops each modality with P")
    # auto: a GPU where there is one, else the CPU (Lightning's choice); devices auto: every GPU, or 1 CPU process
    accelerator: str = one_of("auto", "auto", "cpu", "gpu", "cuda", "mps", "tpu")
    devices: Any = "auto"  # an int, or "auto"
    num_nodes: int = positive(1, "machines of a multi-node DDP run (README: Multi-node)")
    strategy: str = "auto"  # a Lightning strategy name (training.build_config checks it), e.g. ddp
    precision: str = one_of("32-true", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true",
                            doc="bf16-mixed: bfloat16 autocast (GPUs with bf16, recent CPUs); 16-mixed: fp16 (GPU)")
    # torch CPU threads per process: N, or auto (the cores free now); null: $DYNAFUSE_THREADS, else 1 (see
    # training.run.choose_threads for why one)
    threads: Any = None
    progress: bool = True
    init_from: Optional[str] = None  # a checkpoint whose matching weights start the run (KuDA's stage 1)
    skip_stages: List[str] = field(default_factory=list)
    stages: Dict[str, StageTrainConfig] = field(default_factory=dict)  # per stage name: what differs from the above


def stage_train(train: TrainConfig, stage: str) -> TrainConfig:
    """`train` with the settings its `stages[stage]` section sets (a copy; the others unchanged)."""
    over = train.stages.get(stage)
    if over is None:
        return train
    return dataclasses.replace(train, **{f.name: getattr(over, f.name) for f in dataclasses.fields(over)
                                         if getattr(over, f.name) is not None})


@dataclass
class RunConfig:
    variant: str = ""  # a label for ablation runs; runs are grouped by (dataset, task, model, variant)
    model: Any = None  # the model family's ModelConfig subclass
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- composing

class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path, what: str = "a config file") -> dict:
    """A YAML mapping (an absent preset is empty); anything else (invalid YAML, a key given twice, a list or a
    scalar at the top) is a one-line ConfigError naming the file."""
    try:
        text = Path(str(path)).read_text(encoding="utf-8") if Path(str(path)).exists() else ""
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"invalid YAML ({where}{getattr(e, 'problem', None) or first_line(e)})",
                          path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read ({e})", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a mapping of keys, not a {type(data).__name__}", path)
    return data


def check_keys(mapping: dict, allowed, where: str, source: object) -> None:
    """A key of `mapping` outside `allowed` is a ConfigError naming `where` and the closest allowed keys."""
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else f"valid keys: {', '.join(allowed)}"
            raise ConfigError(f"unknown key {key!r} in {where}; {hint}", source)


def parse_overrides(items: list[str]) -> dict:
    """`key.path=value` strings -> a nested dict; values are YAML (`3e-4` is a number, `[text]` a list)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        if not all(key.strip().split(".")):
            raise ConfigError(f"override {item!r} must look like key.path=value (a key is empty)")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a key inside {p!r}, which another override sets to a value")
        node[leaf] = _value(raw)
    return out


def _value(raw: str):
    """YAML value, except that `3e-4` is a number (YAML 1.1 would read it as a string)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _keys(node) -> list[str]:
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _explain(e: OmegaConfBaseException, base: DictConfig) -> str:
    """OmegaConf's error as one line: the dotted key, what is wrong, and the closest valid keys for a typo."""
    key = getattr(e, "full_key", None) or ""
    first = first_line(e, width=400)
    if type(e).__name__ in ("ConfigKeyError", "ConfigAttributeError") and key:
        *parents, leaf = key.split(".")
        node = base
        for p in parents:
            node = node.get(p) if isinstance(node, DictConfig) else None
        valid = _keys(node)
        close = difflib.get_close_matches(leaf, valid, n=3, cutoff=0.6)
        section = ".".join(parents) or "the top level"
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(valid)}"
        return f"unknown key {key!r} in {section}{hint}"
    if "is not a subclass of" in first or "Merge error" in first:
        return f"{key or 'a section'} must be a mapping of settings, not a single value ({first})"
    if "is not a ListConfig" in first:
        return f"{key} must be a list, e.g. {key}=[text,audio], not a single value"
    return f"{key}: {first}" if key else first


def merge_layer(base: DictConfig, layer: dict, source: object) -> DictConfig:
    """`layer` (a plain nested dict) merged into the typed config; any mistake is a ConfigError naming `source`."""
    if not layer:
        return base
    if not isinstance(layer, dict):
        raise ConfigError(f"expected a mapping of sections, not {type(layer).__name__}", source)
    for section, value in layer.items():
        if section in ("model", "data", "train") and value is not None and not isinstance(value, dict):
            raise ConfigError(f"{section!r} must be a mapping of settings, not {value!r}", source)
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(e, base), source) from None


def dataset_preset_name(dataset: str) -> str:
    """`mmsa:/x/aligned_50.pkl` -> `mmsa`; a registered name stays itself; `path:DIR`, a folder `dynafuse convert`
    wrote -> the preset of the dataset it was converted from (its meta.json `preset`), so it trains the same way."""
    if dataset.startswith("path:"):
        return converted_preset(dataset[len("path:"):]) or "path"
    return dataset.split(":", 1)[0] if ":" in dataset else dataset


def converted_preset(folder: str) -> str | None:
    """The `preset` a converted folder's meta.json names (None: none, or no readable meta.json; reading the data
    reports that)."""
    try:
        meta = json.loads((Path(folder).expanduser() / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    preset = meta.get("preset") if isinstance(meta, dict) else None
    return preset if isinstance(preset, str) and re.fullmatch(r"[\w-]+", preset) and preset != "path" else None


def presets() -> list[str]:
    """The named presets shipped in configs/presets/ (`--preset NAME`): a paper's own protocol."""
    return sorted(p.name[: -len(".yaml")] for p in (PRESETS / "presets").iterdir() if p.name.endswith(".yaml"))


def merge_preset(cfg: DictConfig, layer: dict, data_preset: str, source: str) -> DictConfig:
    """Merge a preset layer (a model's or a named one), then its own `datasets.NAME` section for this dataset
    (e.g. MOSEI's shorter schedule)."""
    per_dataset = layer.pop("datasets", None) or {}
    cfg = merge_layer(cfg, layer, source)
    return merge_layer(cfg, per_dataset.get(data_preset) or {}, f"{source}, datasets.{data_preset}")


def compose(model_config: ModelConfig, model: str, dataset: str, overrides: list[str] | dict | None = None,
            config_file=None, preset: str | None = None) -> DictConfig:
    """The typed run config of `model` on `dataset` (see the module docstring for the order of the layers; a
    named `preset` comes after the model preset, before --config)."""
    cfg = OmegaConf.structured(RunConfig(model=model_config))
    data_preset = dataset_preset_name(dataset)
    data_layer = read_yaml(PRESETS / "datasets" / f"{data_preset}.yaml")
    if dataset.startswith("path:"):  # a converted folder: its reader options were applied when it was converted
        (data_layer.get("data") or {}).pop("options", None)
    cfg = merge_layer(cfg, data_layer, f"dataset preset {data_preset}")
    cfg = merge_preset(cfg, read_yaml(PRESETS / "models" / f"{model}.yaml"), data_preset, f"model preset {model}")
    if preset:
        if preset not in presets():
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(presets())}")
        layer = read_yaml(PRESETS / "presets" / f"{preset}.yaml")
        models = layer.pop("models", None)  # the models a preset was written for (none: every model)
        if models and model not in models:
            raise ConfigError(f"preset {preset!r} is for {', '.join(models)}, not {model}")
        cfg = merge_preset(cfg, layer, data_preset, f"preset {preset}")
    if config_file:
        if not Path(config_file).exists():
            raise ConfigError("no such config file", config_file)
        cfg = merge_layer(cfg, read_yaml(config_file), config_file)
        validate(cfg, config_file)  # a value out of range in the file names the file
    over = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    cfg = merge_layer(cfg, over, "command-line override")
    cfg.model.name, cfg.data.name = model, dataset
    validate(cfg)
    return cfg


def validate(cfg: DictConfig, source: object = None) -> None:
    """Range checks of every section (types and keys were checked by the merge)."""
    obj = OmegaConf.to_object(cfg)
    check_ranges(obj, source=source)
    count_or_auto(obj.train.devices, "train.devices", "devices", source)
    if obj.train.threads is not None:
        count_or_auto(obj.train.threads, "train.threads", "threads", source)


def count_or_auto(value, key: str, what: str, source: object = None) -> None:
    """`value` must be a positive int or "auto" (train.devices, train.threads); else one ConfigError line."""
    if not (value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)):
        raise ConfigError(f"{key}={value!r} must be a positive number of {what} or 'auto'", source)


def load_run_config(model_config: ModelConfig, saved: dict, source: object) -> DictConfig:
    """A run folder's saved config, read back through the model's schema (so it is checked like a new one)."""
    cfg = merge_layer(OmegaConf.structured(RunConfig(model=model_config)), saved, source)
    validate(cfg, source)
    return cfg


def to_dict(cfg: DictConfig) -> dict:
    """A plain nested dict (for the run folder's config.yaml and for subprocess arguments)."""
    return OmegaConf.to_container(cfg, resolve=True)


def dump(cfg: DictConfig | dict) -> str:
    return yaml.safe_dump(to_dict(cfg) if isinstance(cfg, DictConfig) else cfg, sort_keys=False, allow_unicode=True)
