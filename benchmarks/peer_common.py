"""What the peer benchmarks (mmsa_peer.py, kuda_peer.py) share: paths, the child environment, one logged
step per child process, and a peer's own virtualenv with torch pinned.

Standard library only: the drivers run under the system python3 as well as under our .venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
WORK = BENCH / "work"
OUR_PY = ROOT / ".venv" / "bin" / "python"
TORCH = "torch==2.13.0"  # the CPU wheel this machine carries; any other spec pulls GBs of CUDA packages
# One thread everywhere: the machine's 2 cores are shared, and CPU seconds of a 1-thread process are stable.
ENV = {**os.environ, "DYNAFUSE_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def step(name: str, cmd: list, log: Path, cwd: Path = ROOT) -> int:
    """Run one child process, its output to `log`; return its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    with open(log, "w") as f:
        code = subprocess.call([str(c) for c in cmd], cwd=cwd, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    print(f"    {'done' if code == 0 else f'FAILED (exit {code}, see {log})'} in {time.time() - t0:.0f} s", flush=True)
    return code


def ensure_venv(path: Path, packages: list[str], fallback: list[list[str]] | None = None,
                check_import: str | None = None) -> Path:
    """Create the virtualenv `path` once and return its python: torch first, then `packages` with the torch
    pin repeated so pip cannot replace it. When that does not resolve, each `fallback` argument list is
    installed in turn instead (e.g. `--no-deps` plus the other requirements). A `.ready` file marks it done."""
    py = path / "bin" / "python"
    ready = path / ".ready"
    if ready.exists():
        return py

    def pip(*args: str) -> None:
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", *args], env=ENV)

    print(f"creating {path} ...", flush=True)
    venv.create(path, with_pip=True)
    pip(TORCH)
    try:
        pip(*packages, TORCH)
    except subprocess.CalledProcessError:
        if not fallback:
            raise
        for args in fallback:
            pip(*args)
    version = subprocess.check_output([str(py), "-c", "import torch; print(torch.__version__)"], text=True).strip()
    if not version.startswith(TORCH.split("==")[1]):
        sys.exit(f"torch changed to {version} in {path}; refusing to go on")
    if check_import:
        subprocess.check_call([str(py), "-c", f"import {check_import}"], env=ENV)
    ready.write_text(version + "\n")
    return py
