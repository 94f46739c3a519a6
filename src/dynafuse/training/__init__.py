"""The one trainer, the run folder (`RunDir`) and the one prediction path."""

from .module import LitMSA
from .predict import Predictions, predict_batches
from .run import (
           build_config,
           evaluate_run,
           load_model,
           load_run,
           prepare_data,
           run_config,
           train,
)
from .rundir import RunDir, find_runs

__all__ = ["LitMSA", "Predictions", "RunDir", "build_config", "evaluate_run", "find_runs", "load_model",
           "load_run", "predict_batches", "prepare_data", "run_config", "train"]
