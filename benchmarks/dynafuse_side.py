"""The dynafuse half of the peer benchmarks (mmsa_peer.py, kuda_peer.py); runs in our own .venv.

    .venv/bin/python benchmarks/dynafuse_side.py convert DATASET OUT.pkl
    .venv/bin/python benchmarks/dynafuse_side.py export-kuda DATASET OUT.pkl
    .venv/bin/python benchmarks/dynafuse_side.py time MODEL DATASET OUT_DIR
    .venv/bin/python benchmarks/dynafuse_side.py train MODEL DATASET OUT_DIR [key=value ...]
    .venv/bin/python benchmarks/dynafuse_side.py report WORK_DIR OUT_STEM DATASET [DATASET ...]
    .venv/bin/python benchmarks/dynafuse_side.py report-kuda WORK_DIR OUT_STEM DATASET

`convert` reads our real data through dynafuse itself and writes it in MMSA's feature-pickle layout (plus a
JSON sidecar with dims and notes); `export-kuda` does the same in the layout of KuDA's reference code.
`time` trains one of our models for 2 epochs and records its seconds per epoch, wall and CPU; `train` is a
whole run with the same timing. `report` scores MMSA's test predictions with OUR metric code, puts them
beside our finished foundation runs and the in-session timings, and writes OUT_STEM.md / .json atomically;
`report-kuda` does the same for the KuDA reference and our kuda.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from dynafuse.analysis.summary import find_runs, group_runs
from dynafuse.errors import DataError
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


def zero_padding(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(N, T, D) with every step at or past a row's length set to 0 (valid steps first, as our Splits)."""
    return x * (np.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]


def mmsa_sequence(split, m: str, stats: dict, pad_start: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """(N, T, D) float32, zero-padded at the start (or, pad_start=False, at the end), its lengths, and a note.
    Features are z-scored with the train-split statistics, as our models do inside; a modality the data lacks
    becomes a zero (N, 1, 1)."""
    n = len(split)
    if m not in split.features:
        return np.zeros((n, 1, 1), np.float32), np.ones(n, np.int64), f"{m}: absent, zero (N, 1, 1) placeholder"
    x = np.asarray(split.features[m], dtype=np.float32)
    lengths = np.asarray(split.lengths[m], dtype=np.int64)
    mean, std = stats[m]
    x = (pad_at_start if pad_start else zero_padding)((x - mean) / std, lengths)
    padded = f", zero-padded at the {'start' if pad_start else 'end'}" if x.shape[1] > 1 else ""
    return x, lengths, f"{m}: {x.shape[1:]} (z-scored with train statistics{padded})"


def mmsa_split(split, stats: dict, pad_start: bool = True) -> tuple[dict, list[str]]:
    """One split in MMSA's feature-pickle layout (see benchmarks/README.md) and a note per modality."""
    y = np.asarray(split.y, dtype=np.float32)
    out = {"id": np.asarray(split.ids),
           "raw_text": np.asarray(split.raw_text if split.raw_text is not None else [""] * len(split)),
           "regression_labels": y,
           "classification_labels": (np.sign(y) + 1).astype(np.int64),  # MMSA: 0 neg, 1 neutral, 2 pos
           "annotations": np.array(["Negative", "Neutral", "Positive"])[(np.sign(y) + 1).astype(int)]}
    notes = []
    for m in MODALITIES:
        x, lengths, note = mmsa_sequence(split, m, stats, pad_start)
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


# ---------------------------------------------------------------- export for the KuDA reference

UNI_LETTER = {"text": "T", "audio": "A", "vision": "V"}
REF_SPLITS = ("train", "valid", "test")


def text_ids(offset: int, lengths: np.ndarray, width: int) -> np.ndarray:
    """(N, 3, L) float32 in the place of BERT's ids / mask / segment ids: row ids into the frozen text states
    (sample offset + i, step t -> (offset + i) * L + t), the token mask, zeros. kuda_side.py's BERT stand-in
    looks the ids up; the reference's own code reads the mask as BERT's attention mask."""
    n = len(lengths)
    ids = (offset + np.arange(n))[:, None] * width + np.arange(width)[None, :]
    mask = np.arange(width)[None, :] < lengths[:, None]
    return np.stack([ids, mask, np.zeros_like(ids)], axis=1).astype(np.float32)


def export_kuda(dataset: str, out: Path) -> None:
    """Our data for `dataset` in the layout the KuDA reference's `core/dataset.py` reads (MMSA's feature pickle
    plus `regression_labels_T/A/V`), with a JSON sidecar of dims, lengths and notes.

    Features are z-scored with train statistics and zero-padded at the end (the reference's masks put the valid
    steps first). `text` holds our frozen MiniLM token states (N, L, 384); `text_bert` indexes them (see
    `text_ids`). Raises DataError when the data has no text or no unimodal labels (the reference's knowledge
    stage learns from label_T/A/V)."""
    bundle = prepare_data(build_config("kuda", dataset, []))
    lacks = (["text"] if "text" not in bundle.modalities else []) + [
        f"label_{letter}" for m, letter in UNI_LETTER.items() if m not in bundle.reference.unimodal]
    if lacks:
        raise DataError(f"the KuDA reference needs text and label_T/A/V; {dataset} has no {', '.join(lacks)}",
                        bundle.source)
    stats = bundle.feature_stats()
    data, offsets, notes, offset = {}, {}, [], 0
    for name in REF_SPLITS:
        split = bundle.splits[name]
        data[name], notes = mmsa_split(split, stats, pad_start=False)
        data[name]["text_bert"] = text_ids(offset, split.lengths["text"], data[name]["text"].shape[1])
        for m, letter in UNI_LETTER.items():  # NaN = unknown (kept: each side decides what to do with it)
            data[name][f"regression_labels_{letter}"] = np.asarray(split.unimodal[m], dtype=np.float32)
        offsets[name], offset = offset, offset + len(split)
    absent = {m: {s: int((data[s][f"{m}_lengths"] == 0).sum()) for s in REF_SPLITS} for m in ("audio", "vision")}
    unknown = {letter: {s: int(np.isnan(data[s][f"regression_labels_{letter}"]).sum()) for s in REF_SPLITS}
               for letter in UNI_LETTER.values()}
    info = {"dataset": dataset, "source": bundle.source, "value_range": bundle.value_range,
            "n": {s: len(bundle.splits[s]) for s in REF_SPLITS}, "offsets": offsets,
            "dims": {m: int(data["train"][m].shape[2]) for m in MODALITIES},
            "seq_lens": {m: int(data["train"][m].shape[1]) for m in MODALITIES},
            "absent": absent, "unknown_unimodal_labels": unknown, "notes": notes + bundle.notes,
            "ours_dataset": dataset, "ours_overrides": []}
    atomic_write(out, lambda p: p.write_bytes(pickle.dumps(data, protocol=4)))
    atomic_write_json(out.with_suffix(".json"), info)
    print(json.dumps(info, indent=1))


# ---------------------------------------------------------------- timing

def train_timed(model: str, dataset: str, out: Path, overrides: list[str]) -> dict:
    """Our trainer, with each Lightning fit's (each stage's) CPU seconds recorded beside run.json's wall seconds.

    CPU time of a 1-thread process hardly depends on what else the shared machine runs; wall time does.
    Writes and returns OUT/timing.json: totals per epoch over all stages, and per stage."""
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
    train(build_config(model, dataset, ["train.progress=false", *overrides]), out, force=True)
    stages = json.loads((out / "run.json").read_text())["stages"]
    epochs = max(sum(s["epochs"] for s in stages.values()), 1)
    timing = {"epochs": epochs, "sec_per_epoch": sum(s["seconds"] for s in stages.values()) / epochs,
              "cpu_sec_per_epoch": sum(cpu) / epochs,
              "stages": {name: {"epochs": s["epochs"], "seconds": s["seconds"], "cpu_seconds": c}
                         for (name, s), c in zip(stages.items(), cpu)}}
    atomic_write_json(out / "timing.json", timing)
    print(json.dumps(timing))
    return timing


def time_ours(model: str, dataset: str, out: Path) -> None:
    """2 epochs per stage, to measure seconds per epoch on this machine now."""
    train_timed(model, dataset, out, ["train.max_epochs=2", "train.patience=99"])


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


# ---------------------------------------------------------------- report: KuDA side by side

KUDA_REPO_URL = "https://github.com/MKMaS-GUET/KuDA"


def kuda_reference(ref_dir: Path, value_range: float) -> tuple[dict | None, dict]:
    """The reference's row (its fusion seeds, each at its epoch of lowest valid MAE, scored with our metric code)
    and the details: the knowledge stage, other selection rules, the valid curve, failures."""
    knowledge_file = ref_dir / "knowledge.json"
    if not knowledge_file.exists():
        return None, {}
    knowledge = json.loads(knowledge_file.read_text())
    runs = [json.loads(p.read_text()) for p in sorted(ref_dir.glob("seed-*.json"))]
    ok = [r for r in runs if r["status"] == "ok"]
    details = {"knowledge": knowledge, "failed": {r["seed"]: r["error"] for r in runs if r["status"] != "ok"},
               "code": (ok or runs or [knowledge])[0].get("code")}
    if not ok:
        return None, details
    score = lambda r, rule, key="test_pred": compute_metrics(  # noqa: E731
        np.asarray(r[rule][key]), np.asarray(r[rule]["test_label"]), value_range)
    scored = {rule: [score(r, rule) for r in ok] for rule in ("selected", "last", "best_on_test")}
    scored["trainpath"] = [score(r, "selected", "test_pred_trainpath") for r in ok]
    details.update(seeds=[r["seed"] for r in ok],
                   rules={rule: {"agg": aggregate(rows), "epochs": [r[rule if rule in r else "selected"]["epoch"]
                                                                    for r in ok]}
                          for rule, rows in scored.items()},
                   valid_mae_curve=np.mean([[e["MAE"] for e in r["valid_curve"]] for r in ok], 0).tolist(),
                   trainpath_gap=[float(np.max(np.abs(np.subtract(r["selected"]["test_pred"],
                                                                  r["selected"]["test_pred_trainpath"])))) for r in ok],
                   options=ok[0]["options"])
    fusion_epochs = sum(r["fusion"]["epochs"] for r in ok)
    mods = knowledge["modalities"].values()
    row = {"model": "KuDA reference", "framework": "MKMaS-GUET/KuDA", "seeds": len(ok), "agg": aggregate(scored["selected"]),
           "params": ok[0]["params"], "trainable_params": ok[0]["trainable_params"],
           "knowledge_epochs": "/".join(str(m["epochs"]) for m in mods) + " (T/V/A in turn)",
           "knowledge_cpu_seconds": sum(m["cpu_seconds"] for m in mods), "knowledge_runs": "once, shared by the seeds",
           "fusion_epochs": fusion_epochs / len(ok),
           "sec_per_epoch": sum(r["fusion"]["seconds"] for r in ok) / fusion_epochs,
           "cpu_sec_per_epoch": sum(r["fusion"]["cpu_seconds"] for r in ok) / fusion_epochs}
    return row, details


def kuda_ours(ours_dir: Path) -> dict | None:
    """Our kuda's row: its finished seeds (selected on valid by our trainer), with the stage timings."""
    groups = group_runs(find_runs([ours_dir]))
    if not groups:
        return None
    g = groups[0]
    timings = [json.loads((Path(r) / "timing.json").read_text()) for r in sorted(ours_dir.glob("kuda-s*"))
               if (Path(r) / "timing.json").exists()]
    run_info = json.loads(next(ours_dir.glob("kuda-s*/run.json")).read_text())
    stage = lambda name, key: sum(t["stages"].get(name, {}).get(key, 0) for t in timings)  # noqa: E731
    return {"model": "kuda", "framework": "dynafuse", "seeds": g["n_seeds"], "agg": g["agg"], "params": g["params"],
            "trainable_params": run_info.get("trainable_params"),
            "knowledge_epochs": f"{stage('unimodal', 'epochs') / len(timings):.0f} (T, A, V jointly)",
            "knowledge_cpu_seconds": stage("unimodal", "cpu_seconds") / len(timings), "knowledge_runs": "per seed",
            "fusion_epochs": stage("fusion", "epochs") / len(timings),
            "sec_per_epoch": stage("fusion", "seconds") / stage("fusion", "epochs"),
            "cpu_sec_per_epoch": stage("fusion", "cpu_seconds") / stage("fusion", "epochs"), "dataset": g["dataset"]}


def kuda_table(rows: list[dict]) -> str:
    base = rows[0]["cpu_sec_per_epoch"]
    head = ("| implementation | seeds | " + " | ".join(c[1] for c in COLUMNS) + " | params (trainable) | "
            "knowledge stage: epochs, CPU s | fusion epochs | fusion s/epoch (wall) | fusion CPU s/epoch | "
            "fusion CPU ratio to the reference |")
    lines = [head, "|---|---|" + "---|" * (len(COLUMNS) + 6)]
    for r in rows:
        cells = " | ".join(cell(r, k, d) for k, _, d in COLUMNS)
        lines.append(f"| {r['model']} ({r['framework']}) | {r['seeds']} | {cells} | {r['params']:,} "
                     f"({r['trainable_params']:,}) | {r['knowledge_epochs']}, {r['knowledge_cpu_seconds']:.0f} "
                     f"({r['knowledge_runs']}) | {r['fusion_epochs']:.1f} | {r['sec_per_epoch']:.1f} | "
                     f"{r['cpu_sec_per_epoch']:.1f} | {r['cpu_sec_per_epoch'] / base:.2f}× |")
    return "\n".join(lines) + "\n"


def within_std(ours: dict, ref: dict) -> list[str]:
    """Generated verdicts: is our mean within one standard deviation (over the reference's seeds) of its mean?"""
    out = []
    for key, name in (("mae", "MAE"), ("corr", "Corr")):
        o, r = ours["agg"][key]["mean"], ref["agg"][key]
        gap = o - r["mean"]
        verdict = ("within one standard deviation of the reference" if abs(gap) <= r["std"]
                   else f"outside one standard deviation ({abs(gap) / r['std']:.1f} std)" if r["std"]
                   else "the reference has no spread")
        out.append(f"- {name}: ours {o:.3f}, reference {r['mean']:.3f} ± {r['std']:.3f}: gap {gap:+.3f}, {verdict}.")
    return out


def report_kuda(work: Path, out_stem: Path, dataset: str) -> None:
    """The side-by-side table (both sides scored with our metric code), the reference's other selection rules,
    its knowledge stage and valid curve, and the data notes; writes OUT_STEM.md / .json atomically."""
    info = json.loads((work / "data" / f"{dataset}.json").read_text())
    ref_row, ref = kuda_reference(work / "ref" / dataset, info["value_range"])
    ours_row = kuda_ours(work / "ours" / dataset)
    rows = [r for r in (ref_row, ours_row) if r]
    code = ref.get("code") or {}
    md = ["# KuDA side by side: the reference code and ours (generated by benchmarks/kuda_peer.py)\n",
          f"`python3 benchmarks/kuda_peer.py --kuda-repo PATH` on **{dataset}** (test split, n = {info['n']['test']}). "
          f"Reference: {KUDA_REPO_URL}, commit {code.get('commit') or 'unknown (not a git checkout)'}, "
          f"Python files sha1 {code.get('py_sha1', '?')}. Both sides on CPU, 1 thread. Both sides' test "
          "predictions are scored with our metric code; each seed is taken at its epoch of lowest valid MAE.\n"]
    if rows:
        md.append(kuda_table(rows))
    if ref_row and ours_row:
        md += ["Our kuda against the reference:", *within_std(ours_row, ref_row), ""]
    if ref_row:
        k = ref["knowledge"]
        md.append(f"**Budget.** Reference knowledge stage: {'/'.join(map(str, k['epochs']))} epochs (T/V/A; its "
                  f"default 100/100/50), seed {k['seed']}, run once; fusion stage: {ref['options']['n_epochs']} epochs "
                  f"per seed (its default 50), lr {ref['options']['lr']}, batch {ref['options']['batch_size']}. "
                  "Ours: its preset, early stopping on valid MAE. The machine's 2 cores were shared with other jobs, "
                  "so wall seconds swing with the load; the CPU seconds of a 1-thread process hardly do, and the "
                  "ratio uses them.\n")
        md.append("**The reference under other selection rules** (MAE / Corr, mean ± std over its seeds; the epochs "
                  "are per seed):\n")
        md += ["| rule | MAE | Corr | epochs |", "|---|---|---|---|"]
        names = {"selected": "lowest valid MAE (the table above)", "last": "last epoch (its loop selects nothing)",
                 "best_on_test": "best test MAE (selected on test: not a fair number)",
                 "trainpath": "lowest valid MAE, evaluated through its training-time fusion path (diagnostic)"}
        for rule, name in names.items():
            agg = ref["rules"][rule]["agg"]
            md.append(f"| {name} | {format_mean_std(agg, 'mae', 3)} | {format_mean_std(agg, 'corr', 3)} | "
                      f"{', '.join(map(str, ref['rules'][rule]['epochs']))} |")
        md.append(f"\nThe two fusion paths' test predictions differ by at most {max(ref['trainpath_gap']):.4f} "
                  "(largest absolute difference at the selected epochs, over seeds).")
        curve = ", ".join(f"{v:.3f}" for v in ref["valid_mae_curve"])
        md.append(f"\nReference valid MAE by fusion epoch (mean over seeds): {curve}.\n")
        md.append("**The reference's knowledge stage** (its own metric code, which clips to [-1, 1]; the last "
                  "epoch, which is the checkpoint it keeps):\n")
        md += ["| modality | epochs | valid MAE | valid Corr | test MAE | test Corr | lowest valid MAE (epoch) | CPU s |",
               "|---|---|---|---|---|---|---|---|"]
        for m, s in k["modalities"].items():
            v, t = s["last"]["evaluate"], s["last"]["test"]
            best = int(np.argmin([e["MAE"] for e in s["valid_curve"]]))
            md.append(f"| {m} | {s['epochs']} | {v['MAE']:.3f} | {v['Corr']:.3f} | {t['MAE']:.3f} | {t['Corr']:.3f} | "
                      f"{s['valid_curve'][best]['MAE']:.3f} ({best + 1}) | {s['cpu_seconds']:.0f} |")
    if ref.get("failed"):
        md.append("\nFailed reference seeds: " + "; ".join(f"seed {s}: {e}" for s, e in ref["failed"].items()))
    md.append("\nData given to both sides: " + "; ".join(info["notes"]) + f"; vision missing (no face) in "
              f"{sum(info['absent']['vision'].values())} clips. Our side read it as `{info['ours_dataset']}`.\n")
    text = "\n".join(md)
    atomic_write_text(out_stem.with_suffix(".md"), text)
    atomic_write_json(out_stem.with_suffix(".json"), {"dataset": dataset, "data": info, "rows": rows,
                                                      "reference": ref})
    print(text)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "convert":
        convert(args[0], Path(args[1]))
    elif cmd == "export-kuda":
        export_kuda(args[0], Path(args[1]))
    elif cmd == "time":
        time_ours(args[0], args[1], Path(args[2]))
    elif cmd == "train":
        train_timed(args[0], args[1], Path(args[2]), args[3:])
    elif cmd == "report":
        report(Path(args[0]), Path(args[1]), args[2:])
    elif cmd == "report-kuda":
        report_kuda(Path(args[0]), Path(args[1]), args[2])
    else:
        sys.exit(f"unknown command {cmd!r}")
