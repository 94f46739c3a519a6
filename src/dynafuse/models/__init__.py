"""Models: the one registry and one file per model family. Importing this package registers every family:
each module in this folder is imported, so there is no hand-kept list of models to fall out of sync."""

import importlib
import pkgutil

from .base import (
    MODELS,
    TEXT_FEATURES,
    TOKEN_IDS,
    ModelOutput,
    MSAModel,
    benchmark_models,
    create_model,
    list_models,
    model_config,
    model_entry,
    register_model,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "blocks"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["MODELS", "TEXT_FEATURES", "TOKEN_IDS", "ModelOutput", "MSAModel", "benchmark_models", "create_model",
           "list_models", "model_config", "model_entry", "register_model"]
