"""Training from an MMSA pickle vs from its `dynafuse convert` folder, at MOSEI's unaligned size (issue 17).

    .venv/bin/python benchmarks/convert_scale.py [--scale 1.0] [--keep]

1. makes a SYNTHETIC MMSA-format pickle (`unaligned_50.pkl`: the keys, dtypes and shapes MMSA writes; random
   features, lengths and labels) with MOSEI's unaligned shapes and sizes: 16,326 / 1,871 / 4,659 clips
   (MMSA's MOSEI split), text 50 x 768 (BERT), audio 500 x 74 (COVAREP), vision 375 x 35 (Facet), float32:
   8.1 GB. `--scale` shrinks the clip counts (the shapes stay);
2. `dynafuse convert mmsa:PKL --out FOLDER --allow-pickle`, in a fresh process: time and peak memory;
3. `dynafuse train --model early_fusion` (seed 0, batch 32) from the pickle and from the folder, each in a fresh
   process with one torch thread, as a real run starts: every split read and checked, the train-split statistics,
   then training. A measurement hook ends each run after its first 20 training steps (a full epoch of the 16k
   clips takes ~30 min per run on this busy 2-core machine); it notes the time to the first batch and to the 20th
   (process start to the loader handing it over: imports and data loading included), and a sha256 of the 20
   batches' tensors, which must be the same from both sources. Peak resident memory is the process's ru_maxrss
   (wait4). That training from the folder gives the same metrics.json as from the pickle is tested on small
   pickles (tests/test_convert.py).

Every process is started from a small launcher (measure.py), so its ru_maxrss is its own (not the benchmark's). The pickle and
the folder are deleted at the end (`--keep` keeps them). Writes benchmarks/results/convert_scale.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import run_measured

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "convert_scale"
RESULTS = ROOT / "benchmarks" / "results"
SPLIT_SIZES = {"train": 16326, "valid": 1871, "test": 4659}  # MMSA's MOSEI unaligned_50.pkl
SHAPES = {"text": (50, 768), "audio": (500, 74), "vision": (375, 35)}
TRAIN = ["--model", "early_fusion", "--seed", "0", "train.max_epochs=1", "train.progress=false"]
STEPS = 20  # training steps measured

# The CLI with a measurement hook that changes nothing computed: it notes the wall time (time.time()) at which the
# loader hands over the first batch and the STOP_AFTER-th, and a sha256 of those batches' tensors (the same data in
# the same order from both sources), into $MEASURE_FILE; then the process ends (a short run: the data is loaded and
# checked in full, the train-split statistics computed, then STOP_AFTER training steps run).
CLI = """import hashlib, json, os, sys, time
from dynafuse.data.core import SplitDataset
collate, digest, seen = SplitDataset.collate, hashlib.sha256(), {}
def measured(self, rows):
    batch = collate(self, rows)
    seen.setdefault("first", time.time())
    for t in [*(batch.x[m] for m in sorted(batch.x)), *(batch.mask[m] for m in sorted(batch.mask)), batch.y]:
        digest.update(t.numpy().tobytes())
    seen["batches"] = seen.get("batches", 0) + 1
    if seen["batches"] == int(os.environ["STOP_AFTER"]):
        seen.update(stop=time.time(), sha256=digest.hexdigest())
        open(os.environ["MEASURE_FILE"], "w").write(json.dumps(seen))
        os._exit(0)
    return batch
SplitDataset.collate = measured
from dynafuse.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ---- the synthetic pickle ----------------------------------------------------------------------------------

class Lazy:
    """An array made only when the pickler reaches it, so the whole dataset is never in memory at once."""

    def __init__(self, make):
        self.make = make


class LazyPickler(pickle.Pickler):
    def reducer_override(self, obj):
        return obj.make().__reduce_ex__(4) if isinstance(obj, Lazy) else NotImplemented


def synthetic_split(name: str, n: int, seed: int) -> dict:
    """One split of an MMSA unaligned_50.pkl (MOSEI): SYNTHETIC features, zero past each sample's length."""
    rng = np.random.default_rng(seed)
    lengths = {"text": rng.integers(5, 51, n), "audio": rng.integers(50, 501, n), "vision": rng.integers(30, 376, n)}
    labels = np.round(rng.uniform(-3, 3, n), 1).astype(np.float32)

    def features(m: str):
        def make():
            t, d = SHAPES[m]
            x = np.empty((n, t, d), np.float32)
            for s in range(0, n, 1024):  # made in blocks, with each block's own seed: the same on every run
                x[s:s + 1024] = np.random.default_rng([seed, s]).standard_normal((len(x[s:s + 1024]), t, d),
                                                                                  dtype=np.float32)
            x *= (np.arange(t)[None, :] < lengths[m][:, None])[..., None]
            return x
        return Lazy(make)

    mask = (np.arange(50)[None, :] < lengths["text"][:, None]).astype(np.float32)
    ids = rng.integers(1000, 30000, (n, 50)).astype(np.float32) * mask
    return {
        "raw_text": np.array([f"synthetic review {name} {i}" for i in range(n)], dtype=object),
        "id": np.array([f"{name}{i // 10:05d}$_${i % 10}" for i in range(n)], dtype=object),
        "text": features("text"), "text_bert": np.stack([ids, mask, np.zeros_like(mask)], axis=1),
        "audio": features("audio"), "vision": features("vision"),
        "audio_lengths": lengths["audio"].tolist(), "vision_lengths": lengths["vision"].tolist(),
        "regression_labels": labels, "classification_labels": (labels > 0).astype(np.float32),
        "annotations": np.array(["Positive" if y > 0 else "Negative" for y in labels], dtype=object),
    }


def make_pickle(path: Path, sizes: dict[str, int]) -> float:
    """Write the synthetic pickle (protocol 4, as MMSA's files); seconds taken."""
    started = time.perf_counter()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        LazyPickler(f, protocol=4).dump({s: synthetic_split(s, n, i) for i, (s, n) in enumerate(sizes.items())})
    tmp.rename(path)
    return time.perf_counter() - started


# ---- measured processes ------------------------------------------------------------------------------------

def measured(args: list[str], stop_after: int = 0) -> dict:
    """`dynafuse ARGS` in a fresh process with one torch thread: wall time, peak resident memory (GiB), the load
    average around it and, for training, the times to the first and the `stop_after`-th batch (then it ends)."""
    with tempfile.TemporaryDirectory() as tmp:
        measure = Path(tmp) / "measure"
        env = {**os.environ, "DYNAFUSE_THREADS": "1", "MEASURE_FILE": str(measure), "STOP_AFTER": str(stop_after)}
        load, started = os.getloadavg()[0], time.time()
        got = run_measured([sys.executable, "-c", CLI, *args], env)
        out = {"command": "dynafuse " + " ".join(args).replace(str(ROOT) + "/", ""),
               "seconds": round(got["seconds"], 1), "peak_gib": round(got["peak_mib"] / 1024, 2),
               "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}
        if stop_after:
            m = json.loads(measure.read_text())
            out.update(first_batch_s=round(m["first"] - started, 1), last_batch_s=round(m["stop"] - started, 1),
                       batches=m["batches"], sha256=m["sha256"])
        return out


def markdown(res: dict) -> str:
    p, f, c = res["from_pickle"], res["from_folder"], res["convert"]
    ratio = p["first_batch_s"] / f["first_batch_s"]
    sizes = "/".join(f"{n:,}" for n in res["sizes"].values())
    scale = "full size" if res["scale"] == 1 else f"scaled down to {res['scale']:g} of the clips"
    option = "" if res["scale"] == 1 else f" --scale {res['scale']:g}"
    lines = [
        "# Training from an MMSA pickle vs from its converted folder, at MOSEI's unaligned size",
        "",
        f"Generated by `python benchmarks/convert_scale.py{option}` on {res['machine']}, shared with other work "
        f"(1-minute load average {res['load_start']:.1f} at the start; every process below used one torch thread). "
        f"The data is **SYNTHETIC**: an MMSA-format `unaligned_50.pkl` ({scale}: {sizes} train/valid/test clips; "
        "text 50 x 768, audio 500 x 74, vision 375 x 35, float32; random values, zero past each clip's random "
        f"length), {res['pickle_gib']:.2f} GiB on disk, written in {res['pickle_seconds']:.0f} s. Each row is one "
        f"fresh process, measured once. Training rows: `early_fusion`, batch 32, ended after {res['steps']} training "
        "steps by the benchmark's hook (loading, checks and statistics are those of a full run). Peak memory: the "
        "process's peak resident set (ru_maxrss).",
        "",
        f"| | command | first batch (s) | batch {res['steps']} (s) | wall (s) | peak memory (GiB) | "
        "load avg before / after |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("convert (once)", c), ("train from the pickle", p), ("train from the folder", f)):
        batches = ("- | -" if "first_batch_s" not in r else f"{r['first_batch_s']:.0f} | {r['last_batch_s']:.0f}")
        lines.append(f"| {name} | `{r['command']}` | {batches} | {r['seconds']:.0f} | {r['peak_gib']:.2f} | "
                     f"{r['load_before']:.1f} / {r['load_after']:.1f} |")
    lines += [
        "",
        f"- **Peak memory: {p['peak_gib'] / f['peak_gib']:.1f}x lower from the folder** ({f['peak_gib']:.2f} GiB "
        f"against {p['peak_gib']:.2f} GiB; target: at least 4x). The pickle run unpickles and holds every split; "
        "the folder run reads the rows it uses from disk (`DiskArray`), one batch at a time. What remains is the "
        "process itself and the training step's activations.",
        f"- **Time to first batch: {ratio:.1f}x {'shorter' if ratio >= 1 else 'longer'} from the folder** "
        f"({f['first_batch_s']:.0f} s against {p['first_batch_s']:.0f} s). The pickle run unpickles everything, "
        "checks every feature value for NaN/Inf and computes the train-split statistics; the folder run skips "
        "those passes: `dynafuse convert` did them once and recorded the results (meta.json `checked`, "
        "`train_stats`, the same float32 values).",
        f"- **The same data:** the {res['steps']} training batches from both sources have "
        f"{'the same' if res['same_batches'] else 'DIFFERENT'} sha256 ({f['sha256'][:16]}...).",
        f"- The conversion is paid once: {c['seconds']:.0f} s (sha256 of the pickle, unpickling and checking it, "
        f"the train-split statistics, writing {res['folder_gib']:.2f} GiB), at the pickle's peak memory.",
        "- The pickle was written just before, so every process read warm files (the OS page cache); from a cold "
        "disk all take longer, the pickle run the most (it reads every byte before its first batch).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="share of MOSEI's clip counts (the shapes stay)")
    ap.add_argument("--keep", action="store_true", help="keep the pickle and the folder in benchmarks/work/")
    a = ap.parse_args()
    sizes = {s: max(8, round(n * a.scale)) for s, n in SPLIT_SIZES.items()}
    per_clip = sum(t * d for t, d in SHAPES.values()) * 4
    need = 2.1 * per_clip * sum(sizes.values())
    free = shutil.disk_usage(ROOT).free
    if free < need:
        sys.exit(f"needs {need / 2**30:.1f} GiB free for the pickle and the folder, has {free / 2**30:.1f} GiB: "
                 f"use --scale {free / need * a.scale:.2f}")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    pkl, folder = WORK / "unaligned_50.pkl", WORK / "folder"
    import torch

    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                      f"torch {torch.__version__}", "scale": a.scale, "sizes": sizes,
           "load_start": round(os.getloadavg()[0], 2)}
    try:
        res["pickle_seconds"] = round(make_pickle(pkl, sizes), 1)
        res["pickle_gib"] = round(pkl.stat().st_size / 2**30, 2)
        print(f"wrote {pkl} ({res['pickle_gib']} GiB) in {res['pickle_seconds']} s", flush=True)
        res["convert"] = measured(["convert", f"mmsa:{pkl}", "--out", str(folder), "--allow-pickle"])
        res["folder_gib"] = round(sum(p.stat().st_size for p in folder.iterdir()) / 2**30, 2)
        print(res["convert"], flush=True)
        res["steps"] = STEPS
        res["from_pickle"] = measured(["train", *TRAIN, "--dataset", f"mmsa:{pkl}", "--allow-pickle",
                                       "--out", str(WORK / "run-pickle")], STEPS)
        print(res["from_pickle"], flush=True)
        res["from_folder"] = measured(["train", *TRAIN, "--dataset", f"path:{folder}", "--out",
                                       str(WORK / "run-folder")], STEPS)
        print(res["from_folder"], flush=True)
        res["same_batches"] = res["from_pickle"]["sha256"] == res["from_folder"]["sha256"]
    finally:
        if not a.keep:
            for p in (pkl, folder):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    from dynafuse.files import atomic_write_json, atomic_write_text

    md = markdown(res)
    atomic_write_json(RESULTS / "convert_scale.json", res)
    atomic_write_text(RESULTS / "convert_scale.md", md)
    print(md)


if __name__ == "__main__":
    main()
