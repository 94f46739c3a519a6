"""The dynafuse half of the MMSA peer benchmark; runs in our own .venv.

    .venv/bin/python benchmarks/dynafuse_side.py convert DATASET OUT.pkl
    .venv/bin/python benchmarks/dynafuse_side.py time MODEL DATASET OUT_DIR
    .venv/bin/python benchmarks/dynafuse_side.py report WORK_DIR OUT_STEM DATASET [DATASET ...]

`convert` reads our real data through dynafuse itself and writes it in MMSA's feature-pickle layout (plus a
JSON sidecar with dims and notes). `time` trains one of our models for 2 epochs and records its seconds per
epoch, wall and CPU. `report` scores MMSA's test predictions with OUR metric code, puts them
beside our finished foundation runs and the in-session timings, and writes OUT_STEM.md / .json atomically.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from dynafuse.analysis.summary import find_runs, group_runs
from dynafuse.files import atomic_write, atomic_write_json, atomic_write_text
from dynafuse.metrics import aggregate, compute_metrics, format_mean_std
from dynafuse.training import build_config
from dynafuse.training.run import prepare_data

MODALITIES = ("text", "audio", "vision")
COLUMNS = (("mae", "MAE", 3), ("corr", "Corr", 3), ("acc2_has0", "Acc-2 has0", 1), ("acc2_non0", "Acc-2 non0", 1),
           ("f1_has0", "F1 has0", 1), ("f1_non0", "F1 non0", 1), ("acc7", "Acc-7", 1))


# ---------------------------------------------------------------- convert

def pad_at_start(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Move each row's valid steps to the end, zeros before them (MMSA-FET's padding_location="start").

    MMSA's LSTM models (TFN, LMF, LF-DNN, EF-LSTM) read the last time step of an unpacked sequence; with the
    zeros at the end (FET's default) they never see the words and learn a constant (see README)."""
    out = np.zeros_like(x)
    for i, n in enumerate(lengths):
        if n:
            out[i, x.shape[1] - n:] = x[i, :n]
    return out


def mmsa_sequence(split, m: str, stats: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """(N, T, D) float32 zero-padded at the start, its lengths, and a note. Features are z-scored with the
    train-split statistics, as our models do inside; a modality the data lacks becomes a zero (N, 1, 1)."""
    n = len(split)
    if m not in split.features:
        return np.zeros((n, 1, 1), np.float32), np.ones(n, np.int64), f"{m}: absent, zero (N, 1, 1) placeholder"
    x = np.asarray(split.features[m], dtype=np.float32)
    lengths = np.asarray(split.lengths[m], dtype=np.int64)
    mean, std = stats[m]
    x = pad_at_start((x - mean) / std, lengths)
    padded = ", zero-padded at the start" if x.shape[1] > 1 else ""
    return x, lengths, f"{m}: {x.shape[1:]} (z-scored with train statistics{padded})"


def mmsa_split(split, stats: dict) -> tuple[dict, list[str]]:
    y = np.asarray(split.y, dtype=np.float32)
    out = {"id": np.asarray(split.ids),
           "raw_text": np.asarray(split.raw_text if split.raw_text is not None else [""] * len(split)),
           "regression_labels": y,
           "classification_labels": (np.sign(y) + 1).astype(np.int64),  # MMSA: 0 neg, 1 neutral, 2 pos
           "annotations": np.array(["Negative", "Neutral", "Positive"])[(np.sign(y) + 1).astype(int)]}
    notes = []
    for m in MODALITIES:
        x, lengths, note = mmsa_sequence(split, m, stats)
        out[m] = x
        if m != "text":
            out[f"{m}_lengths"] = lengths
        notes.append(note)
    return out, notes


def convert(dataset: str, out: Path) -> None:
    """Our data for `dataset` as read by early_fusion (frozen MiniLM token states), in MMSA's layout."""
    bundle = prepare_data(build_config("early_fusion", dataset, []))
    stats = bundle.feature_stats()
    data, notes = {}, []
    for name, split in bundle.splits.items():
        data[name], notes = mmsa_split(split, stats)
    info = {"dataset": dataset, "source": bundle.source, "n": {k: len(s) for k, s in bundle.splits.items()},
            "dims": {m: int(data["train"][m].shape[2]) for m in MODALITIES},
            "seq_lens": {m: int(data["train"][m].shape[1]) for m in MODALITIES},
            "notes": notes + ["no text_bert: the non-BERT models read `text` only"] + bundle.notes}
    atomic_write(out, lambda p: p.write_bytes(pickle.dumps(data, protocol=4)))
    atomic_write_json(out.with_suffix(".json"), info)
    print(json.dumps(info, indent=1))


# ---------------------------------------------------------------- timing

def time_ours(model: str, dataset: str, out: Path) -> None:
    """Our trainer, 2 epochs per stage, with each Lightning fit's CPU time recorded beside run.json's wall time.

    CPU time of a 1-thread process hardly depends on what else the shared machine runs; wall time does."""
    import lightning as L

    from dynafuse.training.run import train

    cpu = []
    fit = L.Trainer.fit

    def timed_fit(self, *args, **kwargs):
        c0 = time.process_time()
        result = fit(self, *args, **kwargs)
        cpu.append(time.process_time() - c0)
        return result

    L.Trainer.fit = timed_fit
    train(build_config(model, dataset, ["train.max_epochs=2", "train.patience=99", "train.progress=false"]), out,
          force=True)
    stages = json.loads((out / "run.json").read_text())["stages"].values()
    epochs = max(sum(s["epochs"] for s in stages), 1)
    timing = {"epochs": epochs, "sec_per_epoch": sum(s["seconds"] for s in stages) / epochs,
              "cpu_sec_per_epoch": sum(cpu) / epochs}
    atomic_write_json(out / "timing.json", timing)
    print(json.dumps(timing))


# ---------------------------------------------------------------- report

def ours_rows(dataset: str, timing: dict) -> list[dict]:
    """Our finished foundation runs (regression, no variant): mean ± std over seeds."""
    rows = []
    for g in group_runs(find_runs([Path("runs/foundation") / dataset])):
        if g["task"] != "regression" or g["variant"]:
            continue
        rows.append({"model": g["model"], "framework": "dynafuse", "seeds": g["n_seeds"], "agg": g["agg"],
                     "params": g["params"], **timing.get(g["model"], {})})
    return rows


def ours_timing(work: Path, dataset: str) -> dict[str, dict]:
    """Wall and CPU seconds per epoch of our short timing runs (written by `time_ours`)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((work / "ours" / dataset).glob("*/timing.json"))}


def mmsa_rows(work: Path, dataset: str) -> list[dict]:
    rows = []
    for path in sorted((work / "mmsa" / dataset).glob("*.json")):
        r = json.loads(path.read_text())
        row = {"model": r["model"], "framework": "MMSA", "seeds": 1, "params": r.get("params"),
               "sec_per_epoch": r.get("sec_per_epoch"), "cpu_sec_per_epoch": r.get("cpu_sec_per_epoch"),
               "epochs": r.get("epochs"), "status": r["status"],
               "error": r.get("error"), "config_changes": r.get("config_changes"),
               "mmsa_own_metrics": r.get("mmsa_test_metrics")}
        if r["status"] == "ok":  # scored with our metric code, so the columns mean the same on both sides
            row["agg"] = aggregate([compute_metrics(np.asarray(r["test_pred"]), np.asarray(r["test_label"]), 3.0)])
        rows.append(row)
    return rows


def cell(row: dict, key: str, digits: int) -> str:
    if "agg" not in row:
        return "–"
    if row["seeds"] > 1:
        return format_mean_std(row["agg"], key, digits)
    return f"{row['agg'][key]['mean']:.{digits}f}"  # one seed: no spread to show


def table(dataset: str, rows: list[dict], base: float | None) -> str:
    head = ("| model | framework | seeds | " + " | ".join(c[1] for c in COLUMNS)
            + " | params | s/epoch (wall) | CPU s/epoch | CPU ratio to our early_fusion |")
    lines = [f"\n**{dataset}** (test split)\n", head, "|---|---|---|" + "---|" * (len(COLUMNS) + 4)]
    for r in rows:
        wall, cpu = r.get("sec_per_epoch"), r.get("cpu_sec_per_epoch")
        timing = f"{wall:.2f} | {cpu:.2f} | {cpu / base:.2f}×" if wall and cpu and base else "– | – | –"
        cells = " | ".join(cell(r, k, d) for k, _, d in COLUMNS)
        if r.get("status") == "failed":
            cells = f"failed: {r['error']}" + " |" * (len(COLUMNS) - 1)
        params = f"{r['params']:,}" if r.get("params") else "–"
        lines.append(f"| {r['model']} | {r['framework']} | {r['seeds']} | {cells} | {params} | {timing} |")
    return "\n".join(lines) + "\n"


def report(work: Path, out_stem: Path, datasets: list[str]) -> None:
    md, blob = ["# MMSA peer comparison (generated by benchmarks/mmsa_peer.py)\n"], {}
    for dataset in datasets:
        timing = ours_timing(work, dataset)
        rows = ours_rows(dataset, timing) + mmsa_rows(work, dataset)
        data_info = json.loads((work / "data" / f"{dataset}.json").read_text())
        md.append(table(dataset, rows, timing.get("early_fusion", {}).get("cpu_sec_per_epoch")))
        md.append("Data given to MMSA: " + "; ".join(data_info["notes"]) + "\n")
        blob[dataset] = {"rows": rows, "data": data_info}
    text = "\n".join(md)
    atomic_write_text(out_stem.with_suffix(".md"), text)
    atomic_write_json(out_stem.with_suffix(".json"), blob)
    print(text)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "convert":
        convert(args[0], Path(args[1]))
    elif cmd == "time":
        time_ours(args[0], args[1], Path(args[2]))
    elif cmd == "report":
        report(Path(args[0]), Path(args[1]), args[2:])
    else:
        sys.exit(f"unknown command {cmd!r}")
