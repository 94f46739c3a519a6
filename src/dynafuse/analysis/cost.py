"""Training cost side by side, in one process: parameters and seconds per training epoch for each model.

Each model gets its own preset's data layout and batch size (CrossSent needs token ids, DPDF-LQ batches of 64).
Timing runs `steps` real optimiser steps after `warmup` steps and extrapolates to a full epoch of the train split.
"""

from __future__ import annotations

import time

import torch

from ..config import build_config
from ..training.run import build_module, loader, prepare_data


def train_cost(models: list[str], dataset: str = "mosi", steps: int = 10, warmup: int = 2,
               data_dir: str | None = None) -> list[dict]:
    rows = []
    for name in models:
        cfg = build_config(name, dataset, [f"data.data_dir={data_dir}"] if data_dir else [])
        bundle = prepare_data(cfg)
        lit = build_module(cfg, bundle)
        lit.model.stage_setup(lit.model.stages[-1])  # time the final stage, with its trainable parameters
        params = [p for p in lit.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        dl = loader(bundle, "train", cfg, shuffle=True)
        it = iter(dl)
        lit.train()
        times = []
        for i in range(warmup + steps):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(dl)
                batch = next(it)
            t0 = time.perf_counter()
            loss, _ = lit.compute_loss(lit.model(batch), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        step = sorted(times)[len(times) // 2]  # median: robust to a noisy neighbour
        rows.append({"model": name, "dataset": dataset, "params": sum(p.numel() for p in lit.model.parameters()),
                     "trainable": sum(p.numel() for p in params), "batch_size": cfg["data"]["batch_size"],
                     "sec_per_step": step, "sec_per_epoch": step * len(dl), "stage": lit.model.stage})
    base = next((r["sec_per_epoch"] for r in rows if r["model"] == "early_fusion"), None)
    for r in rows:
        r["vs_early_fusion"] = r["sec_per_epoch"] / base if base else None
    return rows


def cost_table(rows: list[dict]) -> str:
    lines = ["| model | params | trainable | batch | s/step | s/epoch | x early_fusion |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['vs_early_fusion']:.1f}" if r["vs_early_fusion"] else ""
        lines.append(f"| {r['model']} | {r['params']:,} | {r['trainable']:,} | {r['batch_size']} | "
                     f"{r['sec_per_step']:.3f} | {r['sec_per_epoch']:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"
