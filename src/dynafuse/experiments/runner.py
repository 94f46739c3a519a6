"""Declared experiments: a YAML grid of models x datasets x seeds x variants, run resumably, then summarised.

```yaml
out: runs/foundation           # run folders: OUT/DATASET/MODEL[-VARIANT][-3class]-sSEED
seeds: [0, 1, 2]
overrides: [train.progress=false]   # applied to every cell
workers: 1                     # runs at once (each a separate process)
report: reports/foundation     # summary written to REPORT.md / REPORT.json
grid:
  - models: [early_fusion, daf]
    datasets: [mosi, mosi-bclstm]
    task: regression           # or 3class
    variants:                  # optional: name -> overrides (ablations); "" is the plain model
      "": []
      static: [model.dynamic=false]
```
A cell whose run folder has `metrics.json` is skipped; one with checkpoints but no metrics resumes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ConfigError


@dataclass
class Cell:
    model: str
    dataset: str
    seed: int
    task: str = "regression"
    variant: str = ""
    overrides: list[str] = field(default_factory=list)

    def run_dir(self, out: Path) -> Path:
        name = self.model + (f"-{self.variant}" if self.variant else "") + ("-3class" if self.task == "3class" else "")
        return out / self.dataset.replace(":", "_").replace("/", "_") / f"{name}-s{self.seed}"


def load_experiment(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError("no such experiment file", p)
    spec = yaml.safe_load(p.read_text()) or {}
    if "grid" not in spec:
        raise ConfigError("an experiment needs a 'grid' list", p)
    return spec


def expand(spec: dict) -> list[Cell]:
    cells = []
    for entry in spec["grid"]:
        seeds = entry.get("seeds", spec.get("seeds", [0]))
        variants = entry.get("variants") or {"": []}
        for dataset in entry["datasets"]:
            for model in entry["models"]:
                for variant, over in variants.items():
                    for seed in seeds:
                        cells.append(Cell(model, dataset, int(seed), entry.get("task", "regression"), variant or "",
                                          [*spec.get("overrides", []), *entry.get("overrides", []), *over]))
    return cells


def _run_cell(cell: Cell, out: Path, data_dir: str | None) -> tuple[Cell, int, float]:
    run = cell.run_dir(out)
    args = [sys.executable, "-m", "dynafuse.cli", "train", "--model", cell.model, "--dataset", cell.dataset,
            "--seed", str(cell.seed), "--task", cell.task, "--out", str(run), *cell.overrides]
    if cell.variant:
        args.append(f"variant={cell.variant}")
    if data_dir:
        args += ["--data-dir", data_dir]
    if (run / "checkpoints").exists():
        args.append("--resume")
    started = time.time()
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "train.log", "a") as log:
        code = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT).returncode
    return cell, code, time.time() - started


def run_experiment(path: str | Path, data_dir: str | None = None, workers: int | None = None,
                   dry_run: bool = False, report_only: bool = False) -> list[Cell]:
    """Run every unfinished cell (local backend: a pool of processes) and return the failed ones."""
    from rich.console import Console

    console = Console()
    spec = load_experiment(path)
    out = Path(spec.get("out", "runs/experiment"))
    cells = expand(spec)
    todo = [c for c in cells if not (c.run_dir(out) / "metrics.json").exists()]
    console.print(f"{len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run -> {out}")
    if report_only:
        todo = []
    if dry_run:
        for c in todo:
            console.print(f"  {c.run_dir(out)}  {' '.join(c.overrides)}")
        return []
    failed = []
    # Threads only wait on child processes; each cell trains in its own process.
    with ThreadPoolExecutor(max_workers=workers or spec.get("workers", 1)) as pool:
        for cell, code, secs in pool.map(lambda c: _run_cell(c, out, data_dir), todo):
            status = "ok" if code == 0 else f"FAILED (exit {code}, see train.log)"
            console.print(f"{status:>8} {secs:7.1f}s  {cell.run_dir(out)}")
            if code:
                failed.append(cell)
    if spec.get("report"):  # only this experiment's cells, even when several experiments share `out`
        from ..analysis.summary import find_runs, group_runs, write_summary

        runs = find_runs([c.run_dir(out) for c in cells if c.run_dir(out).exists()])
        write_summary(group_runs(runs), spec["report"])
    return failed
