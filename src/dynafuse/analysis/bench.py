"""`dynafuse bench`: what each model costs, measured side by side in one run on one machine.

Each model is built from its own preset and fed real batches of the dataset (the trainer's `prepare_data`,
`build_module` and `loader`), in a fresh process of its own so that no model inherits another's memory or warm
caches. Every process uses the same number of torch threads. Per model:
- parameters, total and trainable (in the model's final training stage);
- FLOPs per sample of one forward pass: `torch.utils.flop_counter.FlopCounterMode` on the first test batch of 64,
  divided by 64. It counts matrix products, convolutions and attention; elementwise ops, norms and embedding
  lookups are not counted;
- batch-1 latency and batch-64 throughput in eval mode under `inference_mode`: the median of `repeats` timed passes
  after `warmup` untimed ones (CrossSent's Table 4 uses 20 warm-up and 50 timed passes on a GPU);
- peak inference memory at batch 64 (see `inference_peak_mb`);
- with `train`: seconds per optimiser step (median of `steps` after `warmup`) and per epoch of the train split,
  with the preset's batch size, and the ratio to early fusion.
The machine's own dense matmul rate is measured in the same run at the same thread count: in each model's
process, a 1024x1024 matmul takes turns with the model's timed passes (and steps), so both see the same load.
A model's achieved FLOP/s (FLOPs per sample x throughput), as a share of that rate, means the same thing on any
machine, and so do the ratios between models; the absolute times do not. Ratios between processes (to early
fusion, with / without GMRA) are taken on times scaled by each process's matmul rate, which cancels load from
other jobs that changed during the run. CrossSent is measured a second time with `model.gmra=false`:
this gives the GMRA overhead, laid out like CrossSent's Table 4.

With `thread_epochs` (`--compare-threads`), real training runs (`dynafuse train`, a few epochs) are also timed with
one torch thread (the trainer's default) and with two, alone and two identical runs at once: s/epoch and the ratios
(`compare_threads`), the evidence for the default.
"""

from __future__ import annotations

import ctypes
import gc
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
)

from ..data import SplitDataset
from ..errors import ConfigError, DynafuseError
from ..files import atomic_write_json, atomic_write_text, safe_name
from ..models import benchmark_models, list_models
from ..progress import progress
from ..training import RunDir, build_config, prepare_data
from ..training.run import build_module, choose_threads, loader
from .summary import md_table

NO_GMRA = ("crosssent", "gmra=false", ["model.gmra=false"])  # (model, variant, overrides): the Table 4 baseline
BATCH = 64  # the batch of the throughput, FLOP and memory figures (CrossSent's Table 4 uses 64)
MATMUL_N = 1024  # the machine probe: an N x N float32 matmul
MEMORY_REPEATS = 5  # inference passes whose peak-memory readings give the median


# ---------------------------------------------------------------------------------------------- measures


def _sdpa_cpu_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU attention kernel that torch 2.13's counter does not know: Q K^T plus attention x V."""
    b, h, s_q, d = q_shape
    s_k, d_v = k_shape[-2], v_shape[-1]
    return 2 * b * h * s_q * s_k * (d + d_v)


_SDPA_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _SDPA_CPU not in flop_registry:  # a later torch may count it itself
    register_flop_formula(_SDPA_CPU)(_sdpa_cpu_flops)


def count_flops(model: torch.nn.Module, *inputs) -> int:
    """FLOPs of one eval forward pass.

    PyTorch's fused "fast path" for nn.MultiheadAttention / TransformerEncoderLayer runs as one kernel that the
    counter cannot see into (it counts 0), so it is switched off while counting; the arithmetic is the same.
    The pass runs with autograd on (nothing is backpropagated): the counter's module tracker hooks the autograd
    graph of any input that requires grad (DPDF-LQ passes its learnable queries between modules), which fails
    under `inference_mode` or `no_grad`.
    """
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.enable_grad(), counter:
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(counter.get_total_flops())


def median_seconds(fns: list, repeats: int, warmup: int) -> list[float]:
    """Median wall time of each of `fns` over `repeats` rounds, after `warmup` untimed rounds.

    Within a round the functions take turns, so each sees the same load from other jobs on the machine; the
    median resists a noisy neighbour."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(warmup + max(1, repeats)):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def matmul_probe(n: int = MATMUL_N):
    """A dense float32 n x n matmul to time, and its FLOPs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return (lambda: torch.mm(a, b)), 2 * n ** 3


def matmul_flops(n: int = MATMUL_N, repeats: int = 20, warmup: int = 3) -> float:
    """This machine's dense float32 matmul rate (FLOP/s) at the current torch thread count."""
    mm, flops = matmul_probe(n)
    return flops / median_seconds([mm], repeats, warmup)[0]


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def inference_peak_mb(model: torch.nn.Module, batch, repeats: int = MEMORY_REPEATS) -> float | None:
    """Peak memory one batch's inference adds to the process, in MiB (Linux; None elsewhere).

    CPU torch has no allocator statistics like CUDA's `max_memory_allocated`. So we measure what the operating
    system sees. First a warm-up pass, so that the model, the data and the runtime's caches and thread pools are
    resident. Before each measured pass, free memory goes back to the OS (`malloc_trim`), so the pass cannot hide
    inside pages freed earlier, and the process's peak resident set is reset (VmHWM, by writing 5 to
    /proc/self/clear_refs); after it, we read how far VmHWM rose above the resident set just before. Heap
    fragmentation moves a single reading by a few MiB, so this returns the median of `repeats` passes. Each model
    runs in a fresh process, so no model inherits another's pages. The weights are not included (they were
    resident before the pass); they are `weights_mb`.
    """
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    with torch.inference_mode():
        model(batch)
    rises = []
    for _ in range(repeats):
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: freed pages may stay resident; the figure can only be lower
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return None
        before = _proc_status_kb("VmRSS")
        with torch.inference_mode():
            model(batch)
        rises.append((_proc_status_kb("VmHWM") - before) / 1024)
    return statistics.median(rises)


def train_step(lit, dl):
    """One real optimiser step (forward, the model's full loss, backward, AdamW) on the next batch of `dl`."""
    lit.model.stage_setup(lit.model.stages[-1])  # the final stage, with its trainable parameters
    lit.model.progress = 1.0  # past any ramp-up, so every declared loss term is on (CrossSent's MPR, EIOI)
    opt = torch.optim.AdamW([p for p in lit.model.parameters() if p.requires_grad], lr=1e-4)
    lit.train()
    batches = iter(dl)

    def step():
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(dl)
            batch = next(batches)
        loss, _ = lit.compute_loss(lit.model(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


# ---------------------------------------------------------------------------------------------- one model


def measure_model(model: str, dataset: str, variant: str, overrides: list[str], threads: int, repeats: int,
                  warmup: int, train: bool, steps: int) -> dict:
    """Every figure for one model; runs in its own process (see `bench`)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = build_config(model, dataset, overrides)
    bundle = prepare_data(cfg)
    lit = build_module(cfg, bundle)
    net = lit.model
    net.stage_setup(net.stages[-1])
    net.eval()
    big, one = (next(iter(DataLoader(ds, batch_size=size, collate_fn=ds.collate)))
                for ds in [SplitDataset(bundle.splits["test"])] for size in (BATCH, 1))  # first test batch of 64, 1
    n = len(big.y)

    def infer(batch):
        with torch.inference_mode():
            net(batch)

    row = {"model": model, "variant": variant, "dataset": dataset,
           "params": sum(p.numel() for p in net.parameters()),
           "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
           "weights_mb": sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()]) / 2 ** 20,
           "batch": n, "inference_peak_mb": inference_peak_mb(net, big),
           "flops_per_sample": count_flops(net, big) / n}
    # The matmul probe takes turns with the model's own passes: both see the same load from other jobs.
    mm, mm_flops = matmul_probe()
    one_s, big_s, mm_s = median_seconds([lambda: infer(one), lambda: infer(big), mm], repeats, warmup)
    row.update(latency_ms=1000 * one_s, throughput=n / big_s, matmul_flops=mm_flops / mm_s)
    if train:
        dl = loader(bundle, "train", cfg, shuffle=True)
        step_s, mm_s = median_seconds([train_step(lit, dl), mm], steps, warmup)
        row.update(train_batch=cfg.data.batch_size, sec_per_step=step_s, sec_per_epoch=step_s * len(dl),
                   train_matmul_flops=mm_flops / mm_s)
    return row


def _in_fresh_process(fn, *args):
    """Run fn(*args) in a new interpreter ('spawn'): a clean heap, no inherited torch state."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


# ---------------------------------------------------------------------------------------------- the run


def resolve_threads(threads: int | None = None) -> int:
    """--threads, else the trainer's default (`training.run.choose_threads`: $DYNAFUSE_THREADS, else 1)."""
    return choose_threads(threads)[0]


# ---------------------------------------------------------------------------------------------- thread settings

THREAD_RUNS = (("daf", "mosi-bclstm"), ("early_fusion", "mosi"))  # a light and a heavier run, as in issue 18
THREAD_COUNTS = (1, 2)  # the default against two threads (the cores of the machines this was built on)
JOB_COUNTS = (1, 2)  # one run alone, two identical runs at once


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes; None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def train_jobs(model: str, dataset: str, threads: int, jobs: int, epochs: int, overrides: list[str],
               work: Path) -> list[float]:
    """Start `jobs` identical real training runs (`dynafuse train`, each in its own process) at once, with
    `threads` torch threads each and exactly `epochs` epochs (no early stop); return each run's s/epoch (fit
    seconds over epochs, from its run.json: validation included, data loading not)."""
    procs, runs = [], []
    for j in range(jobs):
        run = work / f"{model}-{safe_name(dataset)}-t{threads}-j{jobs}-{j}"
        shutil.rmtree(run, ignore_errors=True)
        args = [sys.executable, "-m", "dynafuse.cli", "train", "--model", model, "--dataset", dataset, "--out", str(run),
                *overrides, f"train.threads={threads}", f"train.max_epochs={epochs}", f"train.patience={epochs}",
                "train.progress=false"]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        runs.append(run)
    out = []
    for proc, run in zip(procs, runs):
        _, err = proc.communicate()
        if proc.returncode:
            last = (err.strip().splitlines() or ["(no output)"])[-1]
            raise DynafuseError(f"the timed training run failed (exit {proc.returncode}): {last}", run)
        stages = RunDir(run).info()["stages"].values()
        out.append(sum(s["seconds"] for s in stages) / max(1, sum(s["epochs"] for s in stages)))
    return out


def compare_threads(runs=THREAD_RUNS, threads=THREAD_COUNTS, jobs=JOB_COUNTS, epochs: int = 5,
                    overrides: list[str] = (), work: str | Path | None = None) -> dict:
    """s/epoch of real training runs for every (run, jobs at once, threads): the default of one thread against
    more, alone and beside an identical run. For each run the settings follow each other, so they see about the
    same load from other jobs; each run's text cache is built before the timing."""
    settings = len(runs) * (1 + len(jobs) * len(threads))
    with tempfile.TemporaryDirectory(prefix="dynafuse-threads-", dir=work) as tmp, \
            progress("bench: training runs timed", settings, "settings", every=0) as bar:
        rows, start = [], load_average()
        for model, dataset in runs:
            train_jobs(model, dataset, 1, 1, 1, list(overrides), Path(tmp))  # warm: text cache, page cache
            bar.advance(1, f"{model} on {dataset}: warm-up run")
            for n_jobs in jobs:
                for n_threads in threads:
                    secs = train_jobs(model, dataset, n_threads, n_jobs, epochs, list(overrides), Path(tmp))
                    rows.append({"model": model, "dataset": dataset, "jobs": n_jobs, "threads": n_threads,
                                 "sec_per_epoch": statistics.mean(secs), "sec_per_epoch_jobs": secs})
                    bar.advance(1, f"{model} on {dataset}, {n_jobs} at once, {n_threads} threads: "
                                   f"{rows[-1]['sec_per_epoch']:.2f} s/epoch")
    return {"epochs": epochs, "threads": list(threads), "jobs": list(jobs), "rows": rows,
            "load_average": [start, load_average()], "logical_cores": os.cpu_count()}


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version()}


def check_models(models: list[str]) -> None:
    known = list_models()
    unknown = [m for m in models if m not in known]
    if unknown:
        raise ConfigError(f"unknown model {unknown[0]!r}; known: {', '.join(known)}")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`"NAME: key=value key=value"` (a `--variant`) -> (NAME, overrides). ConfigError when malformed."""
    name, sep, rest = text.partition(":")
    overrides = rest.split()
    if not sep or not name.strip() or any("=" not in o for o in overrides):
        raise ConfigError(f"--variant {text!r} must look like 'NAME: key.path=value ...'")
    return name.strip(), overrides


def bench(models: list[str] | None = None, dataset: str = "mosi", train: bool = False, threads: int | None = None,
          repeats: int = 20, warmup: int = 3, steps: int = 10, overrides: list[str] = (),
          thread_epochs: int | None = None, variants: list[tuple[str, list[str]]] = (),
          baseline: str | None = None) -> dict:
    """Measure `models` (default: the registry's `benchmark` models) side by side; CrossSent also without GMRA.

    `variants` [(name, overrides)]: measure each model once per variant instead (e.g. one text backbone and
    fine-tuning route each), labelled `model (name)`. `baseline`: the row label (`model` or `model (variant)`)
    that the training ratio divides by (default early_fusion, when measured); ConfigError when not a row.
    `thread_epochs`: also compare thread settings on real training runs of that many epochs (`compare_threads`)."""
    models = list(models or benchmark_models())
    check_models(models)
    threads = resolve_threads(threads)
    specs = []
    for m in models:
        if variants:
            specs += [(m, name, list(extra)) for name, extra in variants]
            continue
        specs.append((m, "", []))
        if m == NO_GMRA[0]:
            specs.append(NO_GMRA)
    labels = [_label({"model": m, "variant": v}) for m, v, _ in specs]
    if baseline is not None and baseline not in labels:
        raise ConfigError(f"--baseline {baseline!r} is not a measured row; rows: {', '.join(labels)}")
    baseline = baseline or "early_fusion"
    rows = []
    with progress(f"bench: models measured on {dataset}", len(specs), "models", every=0) as bar:
        for m, variant, extra in specs:
            rows.append(_in_fresh_process(measure_model, m, dataset, variant, [*overrides, *extra], threads, repeats,
                                          warmup, train, steps))
            bar.advance(1, m + (f" ({variant})" if variant else ""))
    for r in rows:
        r["achieved_flops"] = r["flops_per_sample"] * r["throughput"]
        r["share_of_matmul"] = r["achieved_flops"] / r["matmul_flops"]
    if train:  # epoch times in units of matmul time: load that differed between the processes cancels out
        work = [r["sec_per_epoch"] * r["train_matmul_flops"] for r in rows]
        base = next((w for r, w in zip(rows, work) if _label(r) == baseline), None)
        for r, w in zip(rows, work):
            r["vs_baseline"] = w / base if base else None
    probes = [r["matmul_flops"] for r in rows]
    machine = {**machine_info(threads), "matmul_flops": statistics.median(probes), "matmul_flops_range": [
        min(probes), max(probes)]}
    result = {"dataset": dataset, "machine": machine,
              "settings": {"repeats": repeats, "warmup": warmup, "batch": BATCH,
                           "train_steps": steps if train else None, "overrides": list(overrides),
                           "variants": {n: list(o) for n, o in variants}, "baseline": baseline if train else None},
              "rows": rows, "gmra": gmra_overhead(rows)}
    if thread_epochs:
        result["threads"] = compare_threads(epochs=thread_epochs, overrides=[o for o in overrides
                                                                             if o.startswith("data.data_dir=")])
    return result


def gmra_overhead(rows: list[dict]) -> dict | None:
    """CrossSent with / without GMRA, as ratios (Table 4: params, latency, throughput, peak memory).

    Times are first scaled by the matmul rate of their own process (latency x rate, throughput / rate), so that
    load that differed between the two processes cancels out; on a quiet machine this is the plain ratio."""
    full = next((r for r in rows if r["model"] == "crosssent" and not r["variant"]), None)
    base = next((r for r in rows if r["model"] == "crosssent" and r["variant"] == NO_GMRA[1]), None)
    if not (full and base):
        return None

    def memory(r):  # weights + what inference adds, the nearest to Table 4's peak GPU memory
        return r["weights_mb"] + (r["inference_peak_mb"] or 0.0)

    out = {k: full[k] / base[k] for k in ("params", "flops_per_sample")}
    out["latency_ms"] = (full["latency_ms"] * full["matmul_flops"]) / (base["latency_ms"] * base["matmul_flops"])
    out["throughput"] = (full["throughput"] / full["matmul_flops"]) / (base["throughput"] / base["matmul_flops"])
    out["memory"] = memory(full) / memory(base)
    out["added_params"] = full["params"] - base["params"]
    return out


# ---------------------------------------------------------------------------------------------- reporting


def _label(r: dict) -> str:
    return r["model"] + (f" ({r['variant']})" if r["variant"] else "")


def _optional(value, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each table: inference, training (if measured), GMRA overhead (if measured)."""
    rows = result["rows"]
    out = [("Inference", ["model", "params", "trainable", "MFLOP/sample", "batch-1 ms", f"batch-{BATCH} samples/s",
                          "GFLOP/s", "% of matmul", "peak MB"],
            [[_label(r), f"{r['params']:,}", _optional(r.get("trainable"), ","), f"{r['flops_per_sample'] / 1e6:.2f}",
              f"{r['latency_ms']:.2f}", f"{r['throughput']:.0f}", f"{r['achieved_flops'] / 1e9:.2f}",
              f"{100 * r['share_of_matmul']:.1f}", _optional(r["inference_peak_mb"], ".1f")] for r in rows])]
    if "sec_per_step" in rows[0]:
        out.append(("Training", ["model", "batch", "trainable", "s/step", "s/epoch",
                                 f"x {result['settings'].get('baseline') or 'early_fusion'}"],
                    [[_label(r), str(r["train_batch"]), _optional(r.get("trainable"), ","), f"{r['sec_per_step']:.3f}",
                      f"{r['sec_per_epoch']:.1f}", _optional(r.get("vs_baseline", r.get("vs_early_fusion")), ".2f")] for r in rows]))  # older files
    if result.get("threads"):
        out.append(thread_table(result["threads"]))
    g = result.get("gmra")
    if g:
        out.append(("GMRA overhead (CrossSent Table 4): with / without GMRA",
                    ["params", "FLOP/sample", "batch-1 latency", f"batch-{BATCH} throughput", "memory"],
                    [[f"{g['params']:.3f} (+{g['added_params']:,})", f"{g['flops_per_sample']:.3f}",
                      f"{g['latency_ms']:.3f}", f"{g['throughput']:.3f}", f"{g['memory']:.3f}"]]))
    return out


def thread_table(t: dict) -> tuple[str, list[str], list[list[str]]]:
    """s/epoch per (run, jobs at once) and thread count, the ratio of the most threads to the default's, and per
    thread count the ratio of the most jobs at once to one job."""
    low, high = t["threads"][0], t["threads"][-1]
    cell = {(r["model"], r["dataset"], r["jobs"], r["threads"]): r["sec_per_epoch"] for r in t["rows"]}
    name = {1: "1 thread (default)"}
    header = ["training run", "jobs at once", *(f"s/epoch, {name.get(n, f'{n} threads')}" for n in t["threads"]),
              f"{high} threads / {low}"]
    rows = []
    for model, dataset in dict.fromkeys((r["model"], r["dataset"]) for r in t["rows"]):
        for jobs in t["jobs"]:
            secs = [cell[model, dataset, jobs, n] for n in t["threads"]]
            rows.append([f"{model} on {dataset}", str(jobs), *(f"{x:.2f}" for x in secs), f"{secs[-1] / secs[0]:.2f}"])
        one, most = t["jobs"][0], t["jobs"][-1]
        rows.append([f"{model} on {dataset}", f"{most} / {one} (slow-down)",
                     *(f"{cell[model, dataset, most, n] / cell[model, dataset, one, n]:.2f}" for n in t["threads"]),
                     ""])
    return (f"Training threads: {t['epochs']} epochs of real runs, alone and {t['jobs'][-1]} at once", header, rows)


def thread_note(t: dict) -> str:
    """How the thread comparison was measured, with the machine's load at its start and end."""
    load = ", ".join("?" if x is None else f"{x:.1f}" for x in t["load_average"])
    return (f"Training threads: `dynafuse train` runs of exactly {t['epochs']} epochs (train.max_epochs = "
            "train.patience), each in its own process with train.threads set; s/epoch = fit seconds (validation "
            "included, data loading not) / epochs, from run.json, the mean over the runs started together. 1-minute "
            f"load average at the start and end: {load} on {t['logical_cores']} logical cores (other jobs on the "
            "machine count too). More threads than free cores make each run wait for the others' threads: see the "
            "rows with 2 jobs at once.")


def notes(result: dict) -> list[str]:
    m, s = result["machine"], result["settings"]
    lo, hi = (x / 1e9 for x in m["matmul_flops_range"])
    lines = [f"Machine: {m['cpu']}, {m['threads']} torch thread(s) of {m['logical_cores']} logical cores, "
             f"torch {m['torch']}, Python {m['python']}; dense float32 matmul rate ({MATMUL_N}x{MATMUL_N} "
             f"torch.mm): {m['matmul_flops'] / 1e9:.1f} GFLOP/s, the median over the models' processes (range "
             f"{lo:.1f}-{hi:.1f}); in each process it is timed in turns with the model's own passes, so both see "
             "the same load.",
             f"Dataset {result['dataset']}, each model with its own preset, in a fresh process. Timing: eval + "
             f"inference_mode, median of {s['repeats']} passes after {s['warmup']} warm-up passes; batch-1 is the "
             f"first test sample, batch-{s['batch']} the first test batch.",
             "FLOPs: torch FlopCounterMode (matmuls, convolutions, attention; not elementwise ops) on the "
             f"batch-{s['batch']} pass, per sample (padding included). GFLOP/s = FLOPs/sample x throughput; "
             "% of matmul = that over the matmul rate probed in turns with the model's passes.",
             f"peak MB: how far one batch-{s['batch']} inference pass raises the process's peak resident set "
             "(VmHWM, reset just before) above its resident state after loading, with weights and runtime "
             f"already warm (MiB, median of {MEMORY_REPEATS} passes; a single reading moves by a few MiB); "
             "weights are not included. GMRA memory = weights + that peak; GMRA latency and throughput ratios are "
             "load-corrected (each time scaled by its process's matmul rate)."]
    if s.get("train_steps"):
        lines.append(f"Training: median of {s['train_steps']} AdamW steps after {s['warmup']} warm-up steps, "
                     "final training stage, full loss with every declared term; s/epoch = s/step x "
                     f"batches per train epoch; x {s.get('baseline') or 'early_fusion'} compares s/epoch scaled by the matmul rate timed "
                     "in turns with the steps (load-corrected).")
    for name, extra in (s.get("variants") or {}).items():
        lines.append(f"Variant {name}: {' '.join(extra) or '(the preset)'}.")
    if result.get("threads"):
        lines.append(thread_note(result["threads"]))
    lines.append("Compare ratios (between models, and to the matmul rate); absolute times depend on the machine "
                 "and its load.")
    return lines


def markdown(result: dict) -> str:
    parts = [f"Cost on {result['dataset']}, measured side by side in one run (`dynafuse bench`).", ""]
    parts += [f"- {line}" for line in notes(result)]
    for title, header, rows in tables(result):
        parts += ["", f"**{title}**", "", md_table(header, rows)]
    return "\n".join(parts) + "\n"


def print_report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped into a file: do not squeeze the tables into 80 columns
        console.width = 160
    for title, header, rows in tables(result):
        t = Table(title=title)
        for h in header:
            t.add_column(h, justify="left" if h == "model" else "right")
        for r in rows:
            t.add_row(*r)
        console.print(t)
    for line in notes(result):
        console.print(line, style="dim", highlight=False)


def write_report(result: dict, out: str | Path) -> tuple[Path, Path]:
    """OUT.md (tables and notes) and OUT.json (every number), each written atomically; with a thread comparison
    also OUT_threads.md, its table alone (the README quotes it where it explains the default)."""
    out = Path(out)
    md = atomic_write_text(out.with_name(out.name + ".md"), markdown(result))
    js = atomic_write_json(out.with_name(out.name + ".json"), result)
    t = result.get("threads")
    if t:
        title, header, rows = thread_table(t)
        atomic_write_text(out.with_name(out.name + "_threads.md"),
                          f"{title} (`dynafuse bench --compare-threads`, with the rest of {out.name}.md).\n\n"
                          f"{md_table(header, rows)}\n\n{thread_note(t)}\n")
    return md, js
