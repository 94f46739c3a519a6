from .core import Batch, Bundle, Split, SplitDataset
from .registry import (
           DATASETS,
           DESCRIPTIONS,
           load_dataset,
           register_dataset,
           resolve_data_dir,
)

__all__ = ["Batch", "Bundle", "Split", "SplitDataset", "DATASETS", "DESCRIPTIONS", "load_dataset",
           "register_dataset", "resolve_data_dir"]
