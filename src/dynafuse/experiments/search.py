"""Hyper-parameter search that selects on the valid split only: `dynafuse tune SEARCH.yaml`.

```yaml
model: kuda
dataset: mosi
out: runs/tune/kuda-mosi       # trial-NNN/ run folders, study.db, trials.csv, best.yaml
trials: 20                     # completed trials wanted (a rerun only adds the missing ones)
seed: 0                        # the sampler's seed, and every trial's train.seed
metric: mae                    # read from metrics.json["valid"]; error metrics (mae, mse, jump2, ...) minimised, others maximised
overrides: [train.progress=false]   # applied to every trial
task: regression               # optional, as in `dynafuse train --task`
backend: optuna                # or ray (Ray Tune + OptunaSearch); same as --backend
workers: 1                     # trials at once
gpus_per_trial: 0              # ray backend: GPUs each trial reserves (Ray hides GPUs from a trial that reserves none)
space:
  train.lr: {loguniform: [1e-4, 3e-3]}
  model.dropout: {uniform: [0.0, 0.3]}
  model.k: {choice: [0.5, 1.0, 2.0]}
  model.layers: {int: [1, 3]}
```
Each trial is one training run in its own process, the experiment runner's cell (`python -m dynafuse.cli train`),
in `out/trial-NNN/` beside its `params.json`; the objective is the run's VALID metric. Training writes test scores
as always, but nothing here reads them: the objective, `trials.csv` and `best.yaml` come from the valid split only.

Both backends keep the Optuna study (seeded TPE sampler) in `out/study.db` (SQLite). A killed search resumes:
finished trials are not rerun, a trial cut off mid-training is asked again and resumes from its checkpoint (its
params find its folder), and only completed trials count towards `trials`. One search per `out` runs at a time
(`out/.lock`).

The result feeds an experiment as a variant, trained over seeds and tested once:
```yaml
grid:
  - models: [kuda]
    datasets: [mosi]
    variants: {tuned: [train.lr=0.0007, model.dropout=0.12]}   # best.yaml's `overrides`
```
"""

from __future__ import annotations

import itertools
import json
import os
from contextlib import contextmanager
from pathlib import Path

import yaml

from ..config import check_keys, read_yaml
from ..data.registry import reader_of
from ..errors import ConfigError, DynafuseError
from ..files import atomic_write_csv, atomic_write_json, atomic_write_text, safe_name
from ..metrics import CLASS_KEYS, METRIC_KEYS, MMSA_KEYS, lower_is_better
from ..training import RunDir, build_config
from .runner import TASKS, Cell, overrides_list, ray_session, run_cell

KINDS = ("loguniform", "uniform", "int", "choice")
SEARCH_BACKENDS = ("optuna", "ray")
REGRESSION_METRICS = tuple(dict.fromkeys(k for k in (*METRIC_KEYS, *MMSA_KEYS[3.0], *MMSA_KEYS[1.0]) if k != "n"))
METRICS = tuple(dict.fromkeys((*REGRESSION_METRICS, *CLASS_KEYS)))
SEARCH_KEYS = ("model", "dataset", "out", "trials", "seed", "metric", "overrides", "task", "backend", "workers",
               "gpus_per_trial", "space")


class TrialFailed(DynafuseError):
    """A trial's training run exited with an error (its train.log says why)."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise DynafuseError("dynafuse tune needs Optuna: pip install dynafuse[sweep]") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def load_search(path: str | Path) -> dict:
    """The search file with its defaults filled in; its space is checked here, before anything trains."""
    p = Path(path)
    if not p.exists():
        raise ConfigError("no such search file", p)
    spec = read_yaml(p, "a search file")
    check_keys(spec, SEARCH_KEYS, "the search file", p)
    missing = [k for k in ("model", "dataset", "metric", "space") if not spec.get(k)]
    if missing:
        raise ConfigError(f"a search needs {', '.join(missing)}", p)
    if not isinstance(spec["space"], dict):
        raise ConfigError("'space' maps config keys to ranges, e.g. train.lr: {loguniform: [1e-4, 3e-3]}", p)
    spec = {"out": f"runs/tune/{spec['model']}-{safe_name(str(spec['dataset']))}", "trials": 20, "seed": 0,
            "overrides": [], "task": "regression", "backend": "optuna", "workers": 1, "gpus_per_trial": 0, **spec,
            "file": str(p)}
    gpus = spec["gpus_per_trial"]
    if not isinstance(gpus, (int, float)) or isinstance(gpus, bool) or gpus < 0:
        raise ConfigError(f"gpus_per_trial must be a number >= 0, not {gpus!r}", p)
    for key in ("trials", "workers", "seed"):
        if not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < (key != "seed"):
            raise ConfigError(f"{key} must be a {'non-negative' if key == 'seed' else 'positive'} whole number, "
                              f"not {spec[key]!r}", p)
    if spec["task"] not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, not {spec['task']!r}", p)
    if spec["metric"] not in METRICS:
        raise ConfigError(f"metric {spec['metric']!r} is not a metric; choose one of {', '.join(METRICS)}", p)
    computed = CLASS_KEYS if spec["task"] == "3class" else REGRESSION_METRICS
    if spec["metric"] not in computed:  # else found out only once a trial has trained
        raise ConfigError(f"metric {spec['metric']!r} is not computed in the {spec['task']} task; choose one of "
                          + ", ".join(computed), p)
    spec["overrides"] = overrides_list(spec["overrides"], "overrides", p)
    check_space(spec, distributions(spec["space"], p), p)
    return spec


def check_space(spec: dict, space: dict, p: Path) -> None:
    """Build the trial config at every end of every range (and each choice) now: an unknown key or a value out of
    its range is one line naming the search file and the key, before any trial trains."""
    base = [*spec["overrides"], f"model.task={spec['task']}"]
    try:
        reader_of(str(spec["dataset"]))
        build_config(str(spec["model"]), str(spec["dataset"]), base)
    except ConfigError as e:
        raise ConfigError(f"model/dataset/overrides: {e.problem}", p) from None
    for key, dist in space.items():
        for v in getattr(dist, "choices", None) or (dist.low, dist.high):
            try:
                build_config(str(spec["model"]), str(spec["dataset"]), [*base, *trial_overrides({key: v})])
            except ConfigError as e:
                raise ConfigError(f"space.{key} = {v!r}: {e.problem}", p) from None


def distributions(space: dict, path=None) -> dict:
    """The search space as Optuna distributions: {key: {loguniform|uniform|int: [low, high]} or {choice: [...]}}."""
    optuna = _optuna()
    d = optuna.distributions
    out = {}
    for key, rule in space.items():
        kind, values = next(iter(rule.items())) if isinstance(rule, dict) and len(rule) == 1 else (None, None)
        try:
            if kind == "choice" and isinstance(values, list) and values:
                out[key] = d.CategoricalDistribution(values)
            elif kind in KINDS and isinstance(values, list) and len(values) == 2:
                low, high = values
                out[key] = (d.IntDistribution(int(low), int(high)) if kind == "int" else
                            d.FloatDistribution(float(low), float(high), log=kind == "loguniform"))
            else:
                raise ValueError(f"write {{one of {'|'.join(KINDS[:3])}: [low, high]}} or {{choice: [values]}}")
        except (TypeError, ValueError) as e:
            raise ConfigError(f"space.{key}: {e}", path) from None
    return out


def direction(metric: str) -> str:
    return "minimize" if lower_is_better(metric) else "maximize"


def trial_overrides(params: dict) -> list[str]:
    """Params as `key.path=value` overrides (JSON values read back as YAML: numbers, strings, lists)."""
    return [f"{k}={json.dumps(v)}" for k, v in params.items()]


def _params(run: Path) -> dict | None:
    try:
        return json.loads((run / "params.json").read_text())
    except (OSError, ValueError):
        return None


def trial_dir(out: Path, params: dict) -> Path:
    """The folder of these params: the one holding them already (a resumed trial), else the next free trial-NNN."""
    for run in sorted(out.glob("trial-*")):
        if _params(run) == params:
            return run
    for n in itertools.count():
        run = out / f"trial-{n:03d}"
        try:
            run.mkdir(parents=True)  # claiming by mkdir is atomic, also between trials running at once
        except FileExistsError:
            continue
        atomic_write_json(run / "params.json", params)
        return run


def valid_score(run: Path, metric: str) -> float:
    """The selection score: `metric` on the VALID split of a finished trial. Nothing else is read."""
    valid = RunDir(run).metrics()["valid"]
    if metric not in valid:
        raise ConfigError(f"metric {metric!r} is not among the valid metrics ({', '.join(valid)})", run)
    return float(valid[metric])


def run_trial(spec: dict, params: dict, data_dir: str | None = None, cwd: str | None = None) -> float:
    """Train (or resume, or reuse) the run of these params and return its valid score."""
    out = Path(spec["out"])
    run = trial_dir(out, params)
    cell = Cell(spec["model"], spec["dataset"], int(spec["seed"]), spec["task"],
                overrides=[*spec["overrides"], *trial_overrides(params)], folder=run.name)
    _, _, code, _ = run_cell(cell, out, data_dir, cwd)
    if code:
        raise TrialFailed(f"training exited with {code}; see train.log", run)
    return valid_score(run, spec["metric"])


@contextmanager
def _only_search(out: Path):
    """Hold out/.lock while searching: a second search on the same study would fail the first one's trials."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DynafuseError("another search is running in this folder", out) from None
        yield  # the lock goes with the process, also when it is killed


def open_study(spec: dict):
    """The search's Optuna study in out/study.db, created or loaded; trials cut off by a kill are asked again."""
    optuna = _optuna()
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}")
    try:
        study = optuna.create_study(study_name="dynafuse", storage=storage, direction=direction(spec["metric"]),
                                    sampler=optuna.samplers.TPESampler(seed=int(spec["seed"])), load_if_exists=True)
    except ValueError as e:  # e.g. the metric's direction changed since the study was created
        raise ConfigError(f"cannot continue the study in {out / 'study.db'}: {e}", spec["file"]) from None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.enqueue_trial(t.params)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    # Continue the sampler's random stream instead of replaying it (which would propose the done trials again)
    study.sampler = optuna.samplers.TPESampler(seed=int(spec["seed"]) + len(study.trials))
    return study, storage


def _completed(study) -> int:
    return sum(t.state.name == "COMPLETE" for t in study.trials)


def _optuna_search(spec, study, space, n, data_dir) -> None:
    """Ask, train, tell: n trials, `workers` at a time (threads, each waiting on its trial's process)."""
    from concurrent.futures import ThreadPoolExecutor

    optuna = _optuna()

    def one(_):
        trial = study.ask(space)
        try:
            value = run_trial(spec, trial.params, data_dir)
        except TrialFailed as e:
            print(f"trial {trial.number} failed: {e}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        study.tell(trial, value)  # an interrupt leaves the trial RUNNING, so the next start resumes it

    if spec["workers"] <= 1:
        for i in range(n):
            one(i)
        return
    with ThreadPoolExecutor(max_workers=spec["workers"]) as pool:
        list(pool.map(one, range(n)))


def _tune_trial(config: dict, spec: dict, data_dir: str | None, cwd: str) -> dict:
    return {"score": run_trial(spec, config, data_dir, cwd)}


def _ray_search(spec, study, storage, space, n, data_dir) -> None:
    """Ray Tune trials (1 CPU and `gpus_per_trial` GPUs each, `workers` at once) proposed by an OptunaSearch on the
    same stored study."""
    with ray_session(spec["workers"]):
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(space, metric="score", mode="min" if direction(spec["metric"]) == "minimize" else "max",
                                sampler=study.sampler, study_name=study.study_name, storage=storage)
        # Ray workers may start elsewhere: absolute paths, and this folder as the trial's working directory
        spec = {**spec, "out": str(Path(spec["out"]).resolve())}
        data_dir = data_dir and str(Path(data_dir).resolve())
        trainable = tune.with_resources(tune.with_parameters(_tune_trial, spec=spec, data_dir=data_dir,
                                                             cwd=os.getcwd()),
                                           {"cpu": 1, "gpu": spec["gpus_per_trial"]})
        tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=n,
                                                          max_concurrent_trials=spec["workers"]),
                   run_config=tune.RunConfig(storage_path=str(Path(spec["out"]) / "ray"), name="tune",
                                             verbose=0)).fit()


def trial_rows(spec: dict) -> list[dict]:
    """One row per trial folder: its params and its valid score (empty while unfinished). No test numbers."""
    rows = []
    for run in sorted(Path(spec["out"]).glob("trial-*")):
        params = _params(run)
        if params is None:
            continue
        done = RunDir(run).finished
        rows.append({"trial": run.name, **params,
                     f"valid_{spec['metric']}": valid_score(run, spec["metric"]) if done else ""})
    return rows


def best_trial(rows: list[dict], metric: str) -> dict:
    """The finished trial with the best valid score (the first one on ties)."""
    key = f"valid_{metric}"
    done = [r for r in rows if r[key] != ""]
    if not done:
        raise DynafuseError("no trial finished; see the trials' train.log")
    pick = min if direction(metric) == "minimize" else max
    return pick(done, key=lambda r: r[key])


def write_results(spec: dict) -> dict:
    """Write out/trials.csv and out/best.yaml atomically; return the best trial's entry."""
    out, metric = Path(spec["out"]), spec["metric"]
    rows = trial_rows(spec)
    best = best_trial(rows, metric)
    atomic_write_csv(out / "trials.csv", rows)
    params = {k: v for k, v in best.items() if k in spec["space"]}
    result = {"model": spec["model"], "dataset": spec["dataset"], "out": str(out), "trial": best["trial"],
              "selected_on": "valid", "metric": metric, "direction": direction(metric),
              "valid_score": best[f"valid_{metric}"], "params": params, "overrides": trial_overrides(params),
              "trials_finished": sum(r[f"valid_{metric}"] != "" for r in rows)}
    atomic_write_text(out / "best.yaml", yaml.safe_dump(result, sort_keys=False))
    return result


def tune(path: str | Path, backend: str | None = None, trials: int | None = None, workers: int | None = None,
         data_dir: str | None = None) -> dict:
    """Run the search until `trials` trials have completed; write trials.csv and best.yaml; return the best."""
    spec = load_search(path)
    spec["backend"] = backend or spec["backend"]
    spec["trials"] = int(trials if trials is not None else spec["trials"])
    spec["workers"] = int(workers or spec["workers"])
    if spec["backend"] not in SEARCH_BACKENDS:
        raise ConfigError(f"unknown backend {spec['backend']!r}; choose one of {', '.join(SEARCH_BACKENDS)}", path)
    with _only_search(Path(spec["out"])):
        study, storage = open_study(spec)
        space = distributions(spec["space"], path)
        n = max(0, spec["trials"] - _completed(study))
        print(f"{spec['model']} on {spec['dataset']}: {_completed(study)} trials completed, {n} to run "
              f"({spec['backend']}) -> {spec['out']}")
        if n and spec["backend"] == "ray":
            _ray_search(spec, study, storage, space, n, data_dir)
        elif n:
            _optuna_search(spec, study, space, n, data_dir)
        return write_results(spec)
