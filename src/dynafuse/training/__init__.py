from .module import LitMSA
from .run import evaluate_run, load_run, train

__all__ = ["LitMSA", "evaluate_run", "load_run", "train"]
