"""The one trainer, the run folder (`RunDir`) and the one prediction path.

Names are imported on first use (PEP 562), so that `from dynafuse.training import RunDir` or `build_config` does
not pay for Lightning: a command reports a wrong path or setting before the trainer is imported."""

from __future__ import annotations

import importlib

_WHERE = {"LitMSA": "module", "Predictions": "predict", "predict_batches": "predict", "RunDir": "rundir",
          "find_runs": "rundir", "build_config": "settings", "run_config": "settings", "evaluate_run": "run",
          "load_model": "run", "load_run": "run", "prepare_data": "run", "train": "run"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
