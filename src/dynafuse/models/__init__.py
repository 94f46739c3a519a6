"""Models: the registry and one file per model family. Importing this package registers them all."""

from . import fusion_2501_08085  # noqa: F401  (registers the models)
from .base import MODELS, ModelOutput, MSAModel, create_model, list_models, register_model

__all__ = ["MODELS", "ModelOutput", "MSAModel", "create_model", "list_models", "register_model"]
