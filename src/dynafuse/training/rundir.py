"""`RunDir`: the one reader and writer of a run folder.

A run folder holds
- `config.yaml`: the resolved, typed config (complete: it rebuilds the same run);
- `checkpoints/[<stage>/]{best,last}.ckpt` and `done.json` per finished stage (paths relative to the folder, so a
  run moves between clones and machines);
- `logs/<stage>/metrics.csv` (Lightning's CSV logger; a resumed run keeps the epochs before its kill);
- `metrics.json` (`{"valid": {...}, "test": {...}}`), `ordinal.json`, `predictions.csv`;
- `run.json`: timing, sizes, selection, feature spec. It is written last, in one atomic rename, and its presence
  is THE fact that the run finished: training, evaluation, the runner and the reports all ask `finished`;
- evaluations written later: `robustness.json`, `transfer-<target>.json`, `explain/`.

Every read of a malformed file is a one-line `DataError` naming it.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

from ..errors import ConfigError, DataError, DynafuseError, first_line
from ..files import atomic_write_json, atomic_write_text, safe_name

CONFIG, INFO, METRICS, ORDINAL, PREDICTIONS = "config.yaml", "run.json", "metrics.json", "ordinal.json", "predictions.csv"
ROBUSTNESS = "robustness.json"
# everything a run folder may hold (also transfer-*.json); the runner writes train.log before the training starts,
# `dynafuse tune` a trial's params.json
RUN_NAMES = {CONFIG, INFO, METRICS, ORDINAL, PREDICTIONS, ROBUSTNESS, "checkpoints", "logs", "train.log", "explain",
             "params.json", ".lock", ".lock.owner"}


class RunDir:
    """A run folder (see the module docstring). `path` need not exist yet."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ---------------------------------------------------------------- state
    @property
    def finished(self) -> bool:
        """run.json exists: it is written last, atomically, after metrics and predictions."""
        return (self.path / INFO).is_file()

    @property
    def started(self) -> bool:
        """A run was started here (its checkpoints folder exists) whether or not it finished."""
        return (self.path / "checkpoints").is_dir()

    def stage_dir(self, stage: str, n_stages: int) -> Path:
        return self.path / "checkpoints" / (stage if n_stages > 1 else "")

    def transfer_file(self, target: str) -> Path:
        return self.path / f"transfer-{safe_name(target)}.json"

    # ---------------------------------------------------------------- reading
    def read_json(self, name: str, default=None):
        """A JSON file of the run (`default` when absent); a malformed one is a DataError naming it."""
        p = self.path / name
        if not p.exists():
            return default
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"not valid JSON ({e}); the file is damaged: delete it and rerun what writes it",
                            p) from None

    def raw_config(self) -> dict:
        """config.yaml as plain YAML (no schema): what the reports need (task, variant) from any run."""
        p = self.path / CONFIG
        if not p.exists():
            raise DynafuseError("not a run folder (no config.yaml)", self.path)
        try:
            cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise DataError(f"invalid YAML ({first_line(e)})", p) from None
        if not isinstance(cfg, dict):
            raise DataError("config.yaml must hold a mapping of sections", p)
        return cfg

    def info(self) -> dict:
        """run.json of a finished run, with `input_dims` as ints."""
        if not self.path.is_dir():
            raise DynafuseError("no such run folder" if not self.path.exists() else "is a file, not a run folder",
                                self.path)
        if not (self.path / CONFIG).exists():
            raise DynafuseError("not a run folder (no config.yaml)", self.path)
        info = self.read_json(INFO)
        if info is None:
            raise DynafuseError("the run has not finished (no run.json): resume it with `dynafuse train ... "
                                "--resume`", self.path)
        if not isinstance(info, dict) or "stages" not in info or "input_dims" not in info:
            raise DataError("run.json lacks stages/input_dims: not written by `dynafuse train`", self.path / INFO)
        info["input_dims"] = {k: int(v) for k, v in info["input_dims"].items()}
        return info

    def metrics(self) -> dict:
        m = self.read_json(METRICS)
        if not isinstance(m, dict):
            raise DataError("missing or not a mapping of splits", self.path / METRICS)
        return m

    def resolve(self, recorded: str | Path) -> Path:
        """A checkpoint path as run.json/done.json record it: relative to the folder, or (runs written before
        paths were relative) absolute on the machine that trained it, mapped to this folder's checkpoints/."""
        p = Path(recorded)
        if not p.is_absolute():
            return self.path / p
        if p.exists():
            return p
        parts = p.parts
        return self.path.joinpath(*parts[parts.index("checkpoints"):]) if "checkpoints" in parts else p

    def relative(self, path: str | Path) -> str:
        """How a checkpoint path inside the folder is recorded."""
        try:
            return str(Path(path).resolve().relative_to(self.path.resolve()))
        except ValueError:
            return str(path)

    def best_checkpoint(self) -> Path:
        """The checkpoint valid selected in the last stage; DynafuseError when it is not on this machine."""
        info = self.read_json(INFO)
        if not isinstance(info, dict) or not info.get("stages"):
            raise DynafuseError("the run has not finished (no run.json with stages): resume it with "
                                "`dynafuse train ... --resume`", self.path)
        stages = info["stages"]
        best = self.resolve(stages[list(stages)[-1]]["best"])
        if not best.exists():
            raise DynafuseError(f"its checkpoint {self.relative(best)} is not here (deleted, or a committed run: "
                                "those carry no checkpoints): use a run trained on this machine (e.g. runs/demo from "
                                "`make demo`), or copy the run's checkpoints/ folder", self.path)
        return best

    def has_checkpoint(self) -> bool:
        try:
            self.best_checkpoint()
            return True
        except DynafuseError:
            return False

    def record(self) -> dict:
        """One row for summaries and reports: names, seed, task, variant, metrics, params, s/epoch."""
        info, cfg = self.read_json(INFO), self.raw_config()
        if not isinstance(info, dict) or not {"model", "dataset", "seed"} <= set(info):
            raise DataError("run.json lacks model/dataset/seed: not written by `dynafuse train`", self.path / INFO)
        stages = info.get("stages", {}).values()
        epochs = sum(s.get("epochs", 0) for s in stages)
        return {"dir": str(self.path), "model": info["model"], "dataset": info["dataset"], "seed": info["seed"],
                "task": (cfg.get("model") or {}).get("task", "regression"), "variant": cfg.get("variant", ""),
                "metrics": self.metrics(), "params": info.get("params"),
                "value_range": info.get("value_range", 3.0),
                "text_backbone": ((cfg.get("data") or {}).get("text") or {}).get("backbone", "minilm"),
                "sec_per_epoch": sum(s.get("seconds", 0) for s in stages) / max(epochs, 1)}

    # ---------------------------------------------------------------- writing (each file atomically)
    def write_config(self, text: str) -> None:
        atomic_write_text(self.path / CONFIG, text)

    def write_json(self, name: str, obj) -> Path:
        return atomic_write_json(self.path / name, obj)

    @contextmanager
    def lock(self):
        """Hold the folder's lock (`.lock`, an OS file lock that dies with its process) for a training run; a
        second holder gets one DynafuseError line naming the process that has it. A folder made only for the lock
        (the training failed before writing anything) is removed again, with the parent folders made for it (./runs/):
        nothing partly written is left. A folder holding other files than a run's is refused (DynafuseError).
        In a distributed run only rank 0 calls it (`training.run.train`: the other ranks are its workers)."""
        foreign = self.foreign_files()
        if foreign:
            raise DynafuseError(f"holds other files than a run's ({', '.join(foreign[:3])}"
                                f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder for --out",
                                self.path)
        # the folders this call creates (the run folder and any missing parents, e.g. ./runs/)
        made = [d for d in (self.path, *self.path.parents) if not d.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        lock, owner = FileLock(self.path / ".lock"), self.path / ".lock.owner"
        try:
            lock.acquire(timeout=0)
        except Timeout:
            who = owner.read_text(encoding="utf-8").strip() if owner.exists() else "another process"
            raise DynafuseError(f"another training is using this run folder ({who}); wait for it, or choose "
                                "another --out", self.path) from None
        try:
            owner.write_text(f"pid {os.getpid()} on {socket.gethostname()}", encoding="utf-8")
            yield self
        finally:
            owner.unlink(missing_ok=True)
            lock.release()
            if {p.name for p in self.path.iterdir()} <= {".lock"}:  # nothing written: leave no trace
                (self.path / ".lock").unlink(missing_ok=True)
                for folder in made:   # innermost first; stop at one something else has written into
                    if any(folder.iterdir()):
                        break
                    folder.rmdir()

    def foreign_files(self) -> list[str]:
        """Names in the folder that no run writes (a data folder given as --out): training there is refused."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name not in RUN_NAMES
                      and not (p.name.startswith("transfer-") and p.name.endswith(".json")))

    def clear_results(self) -> None:
        """Before training again (--force): remove the finished marker first, then the other results."""
        for name in (INFO, METRICS, PREDICTIONS, ORDINAL):
            (self.path / name).unlink(missing_ok=True)


def find_runs(roots: list[str | Path]) -> list[RunDir]:
    """Every finished run folder (with run.json) under the given folders (or the folders themselves), each once
    however many of the roots hold it."""
    out, seen = [], set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise ConfigError("no such folder", root)
        for p in sorted(root.rglob(INFO)):
            if (p.parent / CONFIG).exists() and p.parent.resolve() not in seen:
                seen.add(p.parent.resolve())
                out.append(RunDir(p.parent))
    return out
