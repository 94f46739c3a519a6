"""Cheap routes to fine-tune a text backbone on a CPU, side by side (issue 19 item 3): CrossSent on MOSI with MiniLM-L6
and with all-mpnet-base-v2, each fine-tuned four ways:
- `full`: every backbone weight trains (the paper's setting);
- `top-2 cached`: the top 2 layers train, GMRA sits below them, and the frozen layers under it are computed once
  per dataset (`model.finetune_layers=2`, the frozen-layer cache; MiniLM's CPU setting, the ratios' baseline);
- `lora-8`: rank-8 LoRA adapters on every layer's attention projections, the pretrained weights frozen;
- `lora-8 top-2 cached`: the adapters on the top 2 layers only, the rest cached as in `top-2 cached`.
MPNet has 12 layers, so its GMRA goes after layer 10 (`model.inject_layer=10`): 2 layers above it, as layer 4 of
MiniLM's 6.

    DYNAFUSE_CACHE=/work/cache/dynafuse .venv/bin/python benchmarks/finetune_routes.py [--threads 1] [--epochs 2]

1. Cost: `dynafuse bench --dataset mosi --train --models crosssent` with one `--variant` per route and backbone
   (parameters, trainable parameters, s/step, s/epoch, x MiniLM's top-2 cached), in a fresh process per row:
   results/finetune_routes_bench.{md,json}.
2. Does it learn: one short real training per backbone for LoRA and `top-2 cached` (`--epochs`, official MOSI
   split, the CrossSent preset otherwise): valid MAE per epoch, and the selected epoch's test MAE / Corr. Run folders
   in benchmarks/work/finetune_routes/ (gitignored).
Each step is skipped when its output exists (delete it to redo). Writes results/finetune_routes.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
from pathlib import Path

import lightning as L
import torch

from dynafuse.analysis.bench import bench, markdown
from dynafuse.analysis.summary import md_table
from dynafuse.files import atomic_write_json, atomic_write_text
from dynafuse.metrics import score_metrics
from dynafuse.training import RunDir, build_config, predict_batches, prepare_data, train
from dynafuse.training.run import build_module, data_context, loader

HERE = Path(__file__).resolve().parent
RESULTS, WORK = HERE / "results", HERE / "work" / "finetune_routes"
MPNET = ["data.text.backbone=mpnet", "model.inject_layer=10"]
ROUTES = {"full": [], "top-2 cached": ["model.finetune_layers=2"], "lora-8": ["model.lora_rank=8"],
          "lora-8 top-2 cached": ["model.lora_rank=8", "model.finetune_layers=2"]}
VARIANTS = {f"{backbone} {route}": [*(MPNET if backbone == "mpnet" else []), *over]
            for backbone in ("minilm", "mpnet") for route, over in ROUTES.items()}
BASELINE = "minilm top-2 cached"
# MPNet's LoRA is trained on the top-2 layers with the rest cached: on every layer it costs ~8x that per epoch here
# (the cost table), and whether the adapters learn is the same question
TRAINED = ["minilm lora-8", "minilm top-2 cached", "mpnet lora-8 top-2 cached", "mpnet top-2 cached"]


def cost(threads: int, repeats: int, steps: int) -> dict:
    path = RESULTS / "finetune_routes_bench.json"
    if path.exists():
        return json.loads(path.read_text())
    result = bench(["crosssent"], "mosi", train=True, threads=threads, repeats=repeats, warmup=1, steps=steps,
                   overrides=["train.progress=false"], variants=list(VARIANTS.items()),
                   baseline=f"crosssent ({BASELINE})")
    atomic_write_text(RESULTS / "finetune_routes_bench.md", markdown(result))
    atomic_write_json(path, result)
    return result


def untrained_valid_mae(cfg) -> float:
    """Valid MAE of the model as `train` builds it (same seed), before any step: epoch 0 of the curve."""
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    bundle = prepare_data(cfg)
    lit = build_module(cfg, bundle, data_context(cfg, bundle)[0])
    out = predict_batches(lit.model, loader(bundle, "valid", cfg, shuffle=False))
    return float(score_metrics(out.pred, bundle.splits["valid"].y, "regression", bundle.value_range)["mae"])


def short_run(name: str, epochs: int, threads: int) -> dict:
    """One real training of CrossSent on MOSI with the variant's overrides; its valid MAE before training and after
    each epoch."""
    out = WORK / name.replace(" ", "_")
    over = [*VARIANTS[name], f"train.max_epochs={epochs}", f"train.patience={epochs}", "train.progress=false",
            f"train.threads={threads}"]
    cfg = build_config("crosssent", "mosi", over)
    start = out / "untrained_valid_mae.json"
    if not start.exists():
        atomic_write_json(start, untrained_valid_mae(cfg))
    if not RunDir(out).finished:
        train(cfg, out, force=True)
    info = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "logs" / "main" / "metrics.csv") as f:
        valid = [json.loads(start.read_text())] + [float(r["valid/mae"]) for r in csv.DictReader(f)
                                                    if r.get("valid/mae")]
    stage = info["stages"]["main"]
    return {"name": name, "overrides": over, "trainable": info["trainable_params"], "params": info["params"],
            "valid_mae": valid, "test": metrics["test"], "sec_per_epoch": stage["seconds"] / max(stage["epochs"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("DYNAFUSE_THREADS") or 1))
    ap.add_argument("--repeats", type=int, default=5, help="bench: timed inference passes per figure")
    ap.add_argument("--steps", type=int, default=5, help="bench: timed training steps per row")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each short training")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    result = cost(a.threads, a.repeats, a.steps)
    runs = [short_run(name, a.epochs, a.threads) for name in TRAINED]
    atomic_write_json(WORK / "short_runs.json", runs)
    rows = [[r["name"], f"{r['trainable']:,}", " → ".join(f"{v:.3f}" for v in r["valid_mae"]),
             f"{r['test']['mae']:.3f}", f"{r['test']['corr']:.3f}", f"{r['sec_per_epoch']:.0f}"] for r in runs]
    cmd = "python benchmarks/finetune_routes.py " + " ".join(sys.argv[1:])
    md = "\n".join([
        "# Fine-tuning a text backbone on a CPU: full, top-2 cached, LoRA",
        "",
        f"Generated by `{cmd}` on {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{a.threads} torch thread(s); other jobs shared the machine, so compare ratios, not absolute times. "
        "CrossSent on MOSI (official split, text token ids + openSMILE audio). MPNet rows put GMRA after layer 10 "
        "of 12 (`model.inject_layer=10`), MiniLM rows after layer 4 of 6 (the preset).",
        "",
        "## Cost per route (`dynafuse bench`)",
        "",
        "Inference figures run the model as trained: for the cached routes they start from the cached frozen "
        "layers (a new clip goes through the whole backbone, as in the `full` rows).",
        "",
        markdown(result).strip(),
        "",
        f"## Does it learn: {a.epochs} epochs each on the full MOSI train split",
        "",
        "Valid MAE before training (the model as built, same seed) and after each epoch, and the test MAE / Corr "
        "of the epoch valid selected (one seed; a check that the route learns, not a result).",
        "",
        md_table(["run", "trainable", "valid MAE per epoch", "test MAE", "test Corr", "s/epoch"], rows),
        "",
        "Overrides: " + "; ".join(f"{r['name']}: `{' '.join(r['overrides'])}`" for r in runs) + ".",
    ])
    atomic_write_text(RESULTS / "finetune_routes.md", md + "\n")
    print(md)


if __name__ == "__main__":
    main()
