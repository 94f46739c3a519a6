"""Declared experiments: a YAML grid of models x datasets x seeds x variants, run resumably, then summarised.

```yaml
out: runs/foundation           # run folders: OUT/DATASET/MODEL[-VARIANT][-3class]-sSEED
seeds: [0, 1, 2]
overrides: [train.progress=false]   # applied to every cell
workers: 1                     # cells at once (local: processes; ray: CPUs of the private local Ray instance)
backend: local                 # or ray (same as --backend)
cpus_per_cell: 1               # ray backend: CPUs each cell reserves
gpus_per_cell: 0               # ray backend: GPUs each cell reserves (Ray hides GPUs from a cell that reserves none)
report: reports/foundation     # summary written to REPORT.md / REPORT.json
grid:
  - models: [early_fusion, daf]
    datasets: [mosi, mosi-bclstm]
    task: regression           # or 3class
    preset: 2501.08085         # optional: a named preset (`dynafuse train --preset`) for this block's cells
    overrides: [train.patience=4]   # optional: this block's cells only (after the global ones, before a variant's)
    variants:                  # optional: name -> overrides (ablations); "" is the plain model
      "": []
      static: [model.dynamic=false]
    evaluate:                  # optional, after training: `dynafuse robust RUN` / `dynafuse transfer RUN --dataset T`
      robustness: true
      transfer: [mosei]
```
Each cell's processes use one torch thread (the trainer's default), so `workers` cells never oversubscribe the
cores; a cell with `train.threads=auto` (or DYNAFUSE_THREADS=auto) gets cpu_count // workers threads instead.
A cell whose run folder has finished (`run.json`) is not trained again; one with checkpoints but no run.json resumes.
An evaluation runs when its result (`robustness.json`, `transfer-T.json`) is missing and the run's selected
checkpoint is on this machine; a finished run without its checkpoint (e.g. a fresh clone) is listed, not retrained.

Backends: `local` runs cells in a pool of child processes; `ray` runs each cell as a Ray task, on a private
loopback-only Ray instance, or on the cluster at `$RAY_ADDRESS` (run folders, data and the text cache must then sit
on a filesystem that every node sees at the same path). Both run the same `run_cell` (`python -m dynafuse.cli
train ...`, then the evaluations, output appended to the cell's `train.log`), so skipping, failures and the report
are the same.

A configuration chosen on valid by `dynafuse tune` (see `search.py`) enters a grid as a variant, to be trained over
seeds and tested once: `variants: {tuned: [<best.yaml's overrides>]}`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..analysis.report import write_report
from ..config import check_keys, read_yaml
from ..data.registry import reader_of
from ..errors import ConfigError, DynafuseError, first_line
from ..files import safe_name
from ..training import RunDir, build_config

BACKENDS = ("local", "ray")
EVALUATIONS = ("robustness", "transfer")
TASKS = ("regression", "3class")
EXPERIMENT_KEYS = ("out", "seeds", "overrides", "workers", "backend", "cpus_per_cell", "gpus_per_cell", "report",
                   "grid")
BLOCK_KEYS = ("models", "datasets", "seeds", "task", "preset", "overrides", "variants", "evaluate")


@dataclass
class Cell:
    model: str
    dataset: str
    seed: int
    task: str = "regression"
    variant: str = ""
    overrides: list[str] = field(default_factory=list)
    evaluate: dict = field(default_factory=dict)
    folder: str = ""  # a fixed folder name under `out` (tuning trials), instead of DATASET/MODEL-...
    preset: str = ""  # a named preset (`dynafuse train --preset`)

    def run_dir(self, out: Path) -> Path:
        if self.folder:
            return out / self.folder
        name = self.model + (f"-{self.variant}" if self.variant else "") + ("-3class" if self.task == "3class" else "")
        return out / safe_name(self.dataset) / f"{name}-s{self.seed}"


def listed(value, key: str, source: object, kind: type = str, required: bool = False) -> list:
    """A list of `kind` (a single value is a list of one); else a ConfigError naming `key` (None: [] unless
    `required`)."""
    if value is None and not required:
        return []
    items = [value] if isinstance(value, kind) and not isinstance(value, bool) else value
    if (not isinstance(items, list) or (required and not items)
            or not all(isinstance(v, kind) and not isinstance(v, bool) for v in items)):
        raise ConfigError(f"{key} must be a {'non-empty ' if required else ''}list of {kind.__name__}s, "
                          f"not {value!r}", source)
    return items


def seed_list(value, key: str, source: object) -> list[int]:
    """Seeds: a non-empty list of distinct integers >= 0 (a repeated seed would train one folder twice). A single
    number is refused: `seeds: 3` reads as three seeds but would be the one seed 3."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(f"{key} must be a list of seeds, e.g. [0, 1, 2] (or [{value}] for the one seed {value}), "
                          f"not {value!r}", source)
    seeds = listed(value, key, source, int, required=True)
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{key} must be distinct integers >= 0, not {value!r}", source)
    return seeds


def overrides_list(value, key: str, source: object) -> list[str]:
    """A list of `key.path=value` strings."""
    items = listed(value, key, source)
    bad = [o for o in items if "=" not in o]
    if bad:
        raise ConfigError(f"{key}: {bad[0]!r} is not a key.path=value override", source)
    return items


def _block(entry: object, where: str, p: Path) -> dict:
    """One grid block, its keys and value types checked (lists normalised)."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping (models, datasets, ...), not {entry!r}", p)
    check_keys(entry, BLOCK_KEYS, where, p)
    out = dict(entry, models=listed(entry.get("models"), f"{where}.models", p, required=True),
               datasets=listed(entry.get("datasets"), f"{where}.datasets", p, required=True),
               overrides=overrides_list(entry.get("overrides"), f"{where}.overrides", p))
    if entry.get("preset") is not None:  # `preset: 2501.08085` is a YAML number: the name is its text
        out["preset"] = entry["preset"] if isinstance(entry["preset"], str) else str(entry["preset"])
    if "seeds" in entry:
        out["seeds"] = seed_list(entry["seeds"], f"{where}.seeds", p)
    if entry.get("task", "regression") not in TASKS:
        raise ConfigError(f"{where}.task must be one of {', '.join(TASKS)}, not {entry['task']!r}", p)
    variants = entry.get("variants") or {"": []}
    if not isinstance(variants, dict):
        raise ConfigError(f"{where}.variants maps a variant name to its overrides, not {variants!r}", p)
    names = [str(k) if k is not None else "" for k in variants]
    bad = [n for n in names if n and (safe_name(n) != n or n[0] in ".-")]  # a folder name, not a path or flag
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"{where}.variants: {bad[0]!r} is not a variant name (letters, digits, _ . + -; it "
                          "names the run folder)" if bad else f"{where}.variants: two names for the plain model "
                          "(an empty and a null name)", p)
    out["variants"] = {n: overrides_list(v, f"{where}.variants.{k}", p) for n, (k, v) in zip(names, variants.items())}
    evaluate = entry.get("evaluate") or {}
    if (not isinstance(evaluate, dict) or set(evaluate) - set(EVALUATIONS)
            or not isinstance(evaluate.get("transfer") or [], list)):
        raise ConfigError(f"{where}.evaluate takes robustness: true and transfer: [datasets], not {evaluate}", p)
    return out


def check_cells(spec: dict, p: Path) -> None:
    """Build every cell's config (and name every dataset) now, so a typo fails in one line before any training."""
    done, folders = set(), {}
    for i, entry in enumerate(spec["grid"]):
        for dataset in [*entry["datasets"], *((entry.get("evaluate") or {}).get("transfer") or [])]:
            try:
                reader_of(dataset)
            except ConfigError as e:
                raise ConfigError(f"grid[{i}]: {e.problem}", p) from None
            if ":" in dataset and not Path(dataset.split(":", 1)[1]).exists():  # cells run in this folder
                raise ConfigError(f"grid[{i}]: dataset {dataset!r}: no such file or folder (paths are read from "
                                  f"{os.getcwd()})", p)
        for c in expand({**spec, "grid": [entry]}):
            key = (c.model, c.dataset, c.task, c.preset, tuple(c.overrides), c.variant)
            run = c.run_dir(Path("."))
            j, other = folders.setdefault(run, (i, key))
            if other != key:  # the second cell would find the first one's finished run and never train
                raise ConfigError(f"grid[{j}] and grid[{i}] both write {run} with other settings: give one of "
                                  "them a variant name", p)
            if key in done:
                continue
            done.add(key)
            try:
                build_config(c.model, c.dataset, [*c.overrides, f"model.task={c.task}",
                                                  *([f"variant={c.variant}"] if c.variant else [])],
                             preset=c.preset or None)
            except ConfigError as e:
                at = f" ({e.path})" if e.path and e.path != "command-line override" else ""
                raise ConfigError(f"grid[{i}], {c.model} on {c.dataset}"
                                  f"{f' [{c.variant}]' if c.variant else ''}: {e.problem}{at}", p) from None


def load_experiment(path: str | Path) -> dict:
    """The experiment file, checked before anything runs: its keys, each block's keys and types, and every
    cell's config (one ConfigError line naming the file and the key)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError("no such experiment file", p)
    spec = read_yaml(p, "an experiment file")
    check_keys(spec, EXPERIMENT_KEYS, "the experiment file", p)
    if not isinstance(spec.get("grid"), list) or not spec["grid"]:
        raise ConfigError("an experiment needs a 'grid': a list of blocks (models, datasets, ...)", p)
    spec["grid"] = [_block(entry, f"grid[{i}]", p) for i, entry in enumerate(spec["grid"])]
    spec["seeds"] = seed_list(spec.get("seeds", [0]), "seeds", p)
    spec["overrides"] = overrides_list(spec.get("overrides"), "overrides", p)
    for key, kind in (("out", str), ("report", str), ("workers", int), ("cpus_per_cell", (int, float))):
        if spec.get(key) is not None and (not isinstance(spec[key], kind) or isinstance(spec[key], bool)
                                          or (kind is not str and spec[key] <= 0)):
            raise ConfigError(f"{key} must be a {'path' if kind is str else 'positive number'}, not {spec[key]!r}",
                              p)
    gpus = spec.get("gpus_per_cell", 0)
    if not isinstance(gpus, (int, float)) or isinstance(gpus, bool) or gpus < 0:
        raise ConfigError(f"gpus_per_cell must be a number >= 0, not {gpus!r}", p)
    check_cells(spec, p)
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
                                          [*spec.get("overrides", []), *entry.get("overrides", []), *over],
                                          dict(entry.get("evaluate") or {}), preset=entry.get("preset", "")))
    return cells


def evaluations(cell: Cell, run: Path, data_dir: str | None) -> list[tuple[str, list[str]]]:
    """The declared evaluations whose result file is missing, as (label, `dynafuse` arguments)."""
    todo, rd = [], RunDir(run)
    if cell.evaluate.get("robustness") and not (rd / "robustness.json").exists():
        todo.append(("robust", ["robust", str(run)]))
    for target in cell.evaluate.get("transfer") or []:
        if not rd.transfer_file(target).exists():
            opt_in = "data.options.allow_pickle=true" in cell.overrides  # the cell trusts pickles: its targets too
            todo.append((f"transfer {target}", ["transfer", str(run), "--dataset", target,
                                                *(["--data-dir", data_dir] if data_dir else []),
                                                *(["--allow-pickle"] if opt_in else [])]))
    return todo


def steps(cell: Cell, out: Path, data_dir: str | None) -> list[tuple[str, list[str]]]:
    """What is left to do for a cell, in order: train (unless finished), then the missing evaluations."""
    run = cell.run_dir(out)
    if RunDir(run).finished:
        todo = evaluations(cell, run, data_dir)
        return todo if todo and RunDir(run).has_checkpoint() else []
    args = ["train", "--model", cell.model, "--dataset", cell.dataset, "--seed", str(cell.seed), "--task", cell.task,
            "--out", str(run), *cell.overrides]
    if cell.variant:
        args.append(f"variant={cell.variant}")
    if cell.preset:
        args += ["--preset", cell.preset]
    if data_dir:
        args += ["--data-dir", data_dir]
    if RunDir(run).started:
        args.append("--resume")
    return [("train", args), *evaluations(cell, run, data_dir)]


def _call(args: list[str], log: Path, cwd: str | None) -> int:
    """One `dynafuse` command in its own process, its output appended to `log`; returns the exit code."""
    with open(log, "a") as f:
        return subprocess.run([sys.executable, "-m", "dynafuse.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                              cwd=cwd).returncode


def run_cell(cell: Cell, out: Path, data_dir: str | None, cwd: str | None = None) -> tuple[Cell, str, int, float]:
    """Do a cell's remaining steps, stopping at the first that fails: (cell, failed step or "", exit code, seconds).

    The one function both backends run (a Ray task runs it in a Ray worker)."""
    started = time.time()
    run = cell.run_dir(out)
    run.mkdir(parents=True, exist_ok=True)
    for label, args in steps(cell, out, data_dir):
        code = _call(args, run / "train.log", cwd)
        if code:
            return cell, label, code, time.time() - started
    return cell, "", 0, time.time() - started


@contextmanager
def ray_session(cpus: int):
    """Connect to the Ray cluster at $RAY_ADDRESS, else start a private loopback-only instance with `cpus` CPUs."""
    address = os.environ.get("RAY_ADDRESS") or None
    if not address:
        # Ray's switch for single-machine use: every Ray service binds 127.0.0.1 (read at import, and by Ray's
        # child processes through the environment); no usage reports either.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        from ray._private import ray_constants
    except ImportError:
        raise DynafuseError("the ray backend needs Ray: pip install dynafuse[sweep]") from None
    local = {}
    if not address:
        ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before the variable was set
        local = {"num_cpus": cpus, "_system_config": {"enable_metrics_collection": False}}
    ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             configure_logging=False, **local)
    try:
        yield ray
    finally:
        ray.shutdown()


def _local_results(jobs: list[tuple], workers: int):
    # Threads only wait on child processes; each step runs in its own process.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done in as_completed([pool.submit(run_cell, *job) for job in jobs]):
            yield done.result()


def _ray_results(jobs: list[tuple], workers: int, cpus_per_cell: float, gpus_per_cell: float = 0):
    with ray_session(workers) as ray:
        task = ray.remote(run_cell).options(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell)
        cell_of = {task.remote(*job): job[0] for job in jobs}
        pending = list(cell_of)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayError as e:  # the task itself died (worker killed, node lost): a failed cell
                print(f"ray: {type(e).__name__}: {first_line(e)}", file=sys.stderr)
                yield cell_of[done[0]], "ray task", -1, 0.0


def share_threads(cells: list[Cell], threads: int) -> list[Cell]:
    """Cells that ask for `train.threads=auto` (in their overrides, or by DYNAFUSE_THREADS=auto) get `threads`
    instead: their processes run beside the other workers' and share the cores with them, which a child cannot see
    when they all start at once. The others keep their setting (the default: 1 thread per process)."""
    env_auto = os.environ.get("DYNAFUSE_THREADS", "").strip() == "auto"

    def asks(c: Cell) -> bool:
        given = [o for o in c.overrides if o.startswith("train.threads=")]
        return (given[-1] == "train.threads=auto") if given else env_auto

    return [replace(c, overrides=[*c.overrides, f"train.threads={threads}"]) if asks(c) else c for c in cells]


def run_cells(cells: list[Cell], out: Path, data_dir: str | None, backend: str = "local", workers: int = 1,
              cpus_per_cell: float = 1, console=None, gpus_per_cell: float = 0) -> list[Cell]:
    """Run the cells' remaining steps on a backend, printing each as it ends; return the failed ones, in order.
    A cell asking for train.threads=auto gets the cores over the workers (local) or its CPUs (ray)."""
    cwd = os.getcwd()
    cells = share_threads(cells, max(1, int(cpus_per_cell)) if backend == "ray"
                          else max(1, (os.cpu_count() or 1) // max(workers, 1)))
    if backend == "ray":  # Ray workers may start elsewhere: give them absolute paths and this folder as cwd
        out, data_dir = out.resolve(), data_dir and str(Path(data_dir).resolve())
        results = _ray_results([(c, out, data_dir, cwd) for c in cells], workers, cpus_per_cell, gpus_per_cell)
    else:
        results = _local_results([(c, out, data_dir, cwd) for c in cells], workers)
    failed = set()
    for cell, step, code, secs in results:
        status = "ok" if code == 0 else f"FAILED ({step} exit {code}, see train.log)"
        if console:
            console.print(f"{status:>8} {secs:7.1f}s  {cell.run_dir(out)}", markup=False)
        if code:
            failed.add(cell.run_dir(out))
    return [c for c in cells if c.run_dir(out) in failed]


def run_experiment(path: str | Path, data_dir: str | None = None, workers: int | None = None,
                   dry_run: bool = False, report_only: bool = False, backend: str | None = None) -> list[Cell]:
    """Run every unfinished cell and its missing evaluations; return the failed cells."""
    from rich.console import Console

    console = Console(soft_wrap=True)  # long run paths stay on one line
    spec = load_experiment(path)
    backend = backend or spec.get("backend", "local")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}", path)
    out = Path(spec.get("out", "runs/experiment"))
    cells = expand(spec)
    todo = [c for c in cells if steps(c, out, data_dir)]
    console.print(f"{len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run -> {out}")
    for c in cells:
        run = c.run_dir(out)
        if RunDir(run).finished and not RunDir(run).has_checkpoint() and evaluations(c, run, data_dir):
            console.print(f"  {run}: evaluations skipped, its checkpoint is not on this machine")
    if report_only:
        todo = []
    if dry_run:
        for c in todo:
            console.print(f"  {c.run_dir(out)}  ({', '.join(s for s, _ in steps(c, out, data_dir))})  "
                          f"{' '.join(c.overrides)}", markup=False)
        return []
    failed = run_cells(todo, out, data_dir, backend, workers or spec.get("workers", 1),
                       spec.get("cpus_per_cell", 1), console, spec.get("gpus_per_cell", 0)) if todo else []
    finished = [c.run_dir(out) for c in cells if RunDir(c.run_dir(out)).finished]
    if spec.get("report") and finished:  # only this experiment's cells, even when several experiments share `out`
        write_report(finished, spec["report"], data_dir=data_dir)
    elif report_only:
        raise DynafuseError("no finished cell to report yet: run the experiment first" if spec.get("report") else
                            "the experiment file names no `report:` to write", path)
    return failed
