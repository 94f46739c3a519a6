"""MMSA peer comparison: MMSA's non-BERT models and ours on the same real data, on the same machine.

    python3 benchmarks/mmsa_peer.py [--datasets mosi mosi-bclstm] [--models tfn lmf ...]

Run from the repository root (system python3 or .venv/bin/python; this driver uses the standard library
only). Each step runs in a child process with the right environment and is skipped when its output exists:
1. MMSA 2.2.1 goes into its own venv, benchmarks/.venv-mmsa (torch==2.13.0 installed first and pinned);
2. our data, read through dynafuse in our .venv, is written as an MMSA feature pickle (benchmarks/work/data);
3. each MMSA model trains once (seed 1111, MMSA's default MOSI hyper-parameters, CPU, 1 thread) through
   benchmarks/mmsa_side.py, which applies the CPU shims at run time;
4. our early_fusion and kuda train 2 epochs each to time them in this session, on the same machine;
5. benchmarks/dynafuse_side.py scores everything with our metric code and writes
   benchmarks/results/mmsa_peer.md and .json.
See benchmarks/README.md for what is shimmed and the caveats.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from peer_common import BENCH, OUR_PY, TORCH, WORK, ensure_venv, step

MMSA_VENV = BENCH / ".venv-mmsa"
MMSA_PY = MMSA_VENV / "bin" / "python"
MMSA = "mmsa==2.2.1"
MMSA_DEPS = ["transformers>=4.4.0", "numpy>=1.20.3", "pandas>=1.2.5", "tqdm>=4.62.2", "nvidia-ml-py3>=7.352.0",
             "scikit-learn>=0.24.2", "easydict>=1.9"]  # MMSA's requirements without torch (for --no-deps)
MODELS = ["tfn", "lmf", "lf_dnn", "ef_lstm", "mfn", "graph_mfn", "mult", "mfm"]
OURS_TIMED = ["early_fusion", "kuda"]
DATASETS = ["mosi", "mosi-bclstm"]


def ensure_mmsa_venv() -> None:
    """benchmarks/.venv-mmsa, once: MMSA with torch pinned; if that cannot resolve, MMSA without its
    requirements plus the requirements other than torch."""
    ensure_venv(MMSA_VENV, [MMSA], fallback=[["--no-deps", MMSA], [*MMSA_DEPS, TORCH]], check_import="MMSA")


def convert(dataset: str) -> Path:
    pkl = WORK / "data" / f"{dataset}.pkl"
    if not pkl.with_suffix(".json").exists():
        if step(f"convert {dataset} to MMSA's pickle", [OUR_PY, BENCH / "dynafuse_side.py", "convert", dataset, pkl],
                WORK / "logs" / f"convert-{dataset}.log"):
            sys.exit("conversion failed")
    return pkl


def run_mmsa(dataset: str, model: str, pkl: Path) -> None:
    """One MMSA model; a finished result is kept, a failed one is tried again."""
    out = WORK / "mmsa" / dataset / f"{model}.json"
    if out.exists() and json.loads(out.read_text())["status"] == "ok":
        return
    step(f"MMSA {model} on {dataset}", [MMSA_PY, BENCH / "mmsa_side.py", model, pkl, out,
                                         WORK / "mmsa-files" / dataset / model],
         WORK / "logs" / f"mmsa-{dataset}-{model}.log")


def time_ours(dataset: str, model: str) -> None:
    """Two epochs (per stage) of our model, 1 thread, to measure seconds per epoch on this machine now."""
    out = WORK / "ours" / dataset / model
    if (out / "timing.json").exists():
        return
    step(f"time ours: {model} on {dataset}", [OUR_PY, BENCH / "dynafuse_side.py", "time", model, dataset, out],
         WORK / "logs" / f"ours-{dataset}-{model}.log")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=DATASETS)
    ap.add_argument("--models", nargs="+", default=MODELS, help="MMSA models (non-BERT)")
    a = ap.parse_args()
    t0 = time.time()
    ensure_mmsa_venv()
    for dataset in a.datasets:
        pkl = convert(dataset)
        for model in OURS_TIMED:
            time_ours(dataset, model)
        for model in a.models:
            run_mmsa(dataset, model, pkl)
    code = step("report", [OUR_PY, BENCH / "dynafuse_side.py", "report", WORK, BENCH / "results" / "mmsa_peer",
                           *a.datasets], WORK / "logs" / "report.log")
    print((WORK / "logs" / "report.log").read_text())
    print(f"total {time.time() - t0:.0f} s")
    sys.exit(code)


if __name__ == "__main__":
    main()
