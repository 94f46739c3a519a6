"""GPU when there is one: train.accelerator and train.devices default to auto. On this CPU-only machine auto is one
CPU process, with the threads and the numbers of accelerator=cpu, devices=1. (DDP over two CPU processes:
tests/test_training.py::test_ddp_two_cpu_processes.)"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator

from dynafuse.config import TrainConfig
from dynafuse.errors import ConfigError
from dynafuse.training import build_config, train
from dynafuse.training.run import local_processes, other_rank, set_threads

CPU = ["train.accelerator=cpu", "train.devices=1"]  # the settings every run used before auto


def test_defaults_take_a_gpu_where_there_is_one():
    t = TrainConfig()
    assert (t.accelerator, t.devices, t.num_nodes, t.strategy, t.precision) == ("auto", "auto", 1, "auto", "32-true")
    cfg = build_config("daf", "mosi", ["train.precision=bf16-mixed", "train.num_nodes=2", "train.strategy=ddp"])
    assert (cfg.train.accelerator, cfg.train.devices, cfg.train.precision) == ("auto", "auto", "bf16-mixed")


@pytest.mark.parametrize("override, key", [("train.precision=bf17", "train.precision"),
                                           ("train.accelerator=quantum", "train.accelerator"),
                                           ("train.devices=0", "train.devices"), ("train.num_nodes=0", "num_nodes")])
def test_bad_device_settings_are_one_line(override, key):
    with pytest.raises(ConfigError, match=key):
        build_config("daf", "mosi", [override])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks how auto resolves without a GPU")
def test_auto_is_one_cpu_process_here(monkeypatch):
    trainer = L.Trainer(accelerator="auto", devices="auto", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    assert isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices == 1
    assert local_processes(TrainConfig()) == 1 and local_processes(TrainConfig(accelerator="cpu", devices=2)) == 2
    monkeypatch.delenv("DYNAFUSE_THREADS", raising=False)
    before = torch.get_num_threads()
    try:  # threads as for one process, not divided as for several
        assert set_threads(build_config("daf", "mosi")) == set_threads(build_config("daf", "mosi", CPU))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("env, other", [({}, False), ({"LOCAL_RANK": "1"}, True), ({"NODE_RANK": "0"}, False),
                                        ({"NODE_RANK": "2"}, True), ({"RANK": "3"}, True),
                                        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "1"}, False),
                                        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "4"}, True)])
def test_other_ranks_leave_the_run_folder_to_rank_0(monkeypatch, env, other):
    for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert other_rank() is other


@pytest.mark.slow
def test_auto_gives_the_cpu_numbers(data_dir, tmp_path):
    """DAF on a real MOSI subset: the defaults (auto) and the old explicit CPU settings give identical files."""
    quick = ["train.progress=false", "train.max_epochs=2", "data.limit=64", f"data.data_dir={data_dir}"]
    train(build_config("daf", "mosi", quick + CPU), tmp_path / "cpu")
    train(build_config("daf", "mosi", quick), tmp_path / "auto")
    for f in ("metrics.json", "predictions.csv"):
        assert (tmp_path / "cpu" / f).read_bytes() == (tmp_path / "auto" / f).read_bytes()


def test_ray_cells_and_trials_reserve_gpus(tmp_path, monkeypatch):
    """Ray hides GPUs from a task that reserves none: `gpus_per_cell` (experiments) and `gpus_per_trial` (tune)
    reserve them; each is checked when the file is read."""
    from contextlib import contextmanager

    import yaml

    from dynafuse.experiments import runner, search

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"gpus_per_cell": 1, "grid": [{"models": ["daf"], "datasets": ["mosi"]}]}))
    spec = runner.load_experiment(path)
    asked, refs = {}, []

    class Task:  # records its options; every cell "succeeds" without running
        def options(self, **kw):
            asked.update(kw)
            return self

        def remote(self, cell, *rest):
            refs.append(cell)
            return len(refs) - 1  # a task reference

    class FakeRay:
        def remote(self, fn):
            return Task()

        def wait(self, pending, num_returns):
            return pending[:1], pending[1:]

        def get(self, ref):
            return refs[ref], "", 0, 0.0

    @contextmanager
    def session(cpus):
        yield FakeRay()

    monkeypatch.setattr(runner, "ray_session", session)
    cells = runner.expand(spec)
    assert runner.run_cells(cells, tmp_path / "out", None, "ray", 1, 2, None, spec["gpus_per_cell"]) == []
    assert asked == {"num_cpus": 2, "num_gpus": 1}
    path.write_text(yaml.safe_dump({"gpus_per_cell": -1, "grid": [{"models": ["daf"], "datasets": ["mosi"]}]}))
    with pytest.raises(ConfigError, match="gpus_per_cell"):
        runner.load_experiment(path)
    tune = tmp_path / "tune.yaml"
    tune.write_text(yaml.safe_dump({"model": "daf", "dataset": "mosi", "metric": "mae", "gpus_per_trial": "one",
                                    "space": {"train.lr": {"loguniform": [1e-4, 1e-3]}}}))
    with pytest.raises(ConfigError, match="gpus_per_trial"):
        search.load_search(tune)
