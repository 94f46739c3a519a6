"""KuDA side by side: the public reference code (MKMaS-GUET/KuDA) and our `--model kuda`, same data and split.

    python3 benchmarks/kuda_peer.py --kuda-repo PATH [--dataset simsv2-scores] [--seeds 0 1 2] [--redo ours]

PATH (or $KUDA_REPO) is your own checkout of https://github.com/MKMaS-GUET/KuDA; its code is imported from
there at run time and never enters this repository. Run from the repository root (system python3 or
.venv/bin/python: this driver uses the standard library only). Each step runs in a child process and is
skipped when its output exists (--redo deletes a side's outputs first):
1. the reference's requirements go into their own venv, benchmarks/.venv-kuda (torch==2.13.0 first, pinned);
2. our data, read through dynafuse in our .venv, is written in the reference's pickle layout
   (benchmarks/work/kuda/data);
3. our kuda trains per seed on the same data (benchmarks/dynafuse_side.py train), CPU seconds recorded;
4. the reference runs through benchmarks/kuda_side.py, which applies the CPU shims at run time: its knowledge
   stage (pretrain.py) once, then its fusion stage (train.py) per seed; CPU, 1 thread;
5. benchmarks/dynafuse_side.py report-kuda scores both with our metric code and writes
   benchmarks/results/kuda_peer.md and .json.
See benchmarks/README.md for the shims, the budget and the caveats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from peer_common import BENCH, OUR_PY, WORK, ensure_venv, step

KUDA_VENV = BENCH / ".venv-kuda"
# The reference ships no requirements file; these are what its imports need (torch comes first, pinned).
KUDA_DEPS = ["einops", "numpy", "scipy", "scikit-learn", "tabulate", "tqdm", "transformers"]
REF_FILES = ("pretrain.py", "train.py", "opts.py", "core/dataset.py", "core/metric.py", "core/scheduler.py",
             "core/utils.py", "models/OverallModal.py", "models/Encoder_KIAdapter.py", "models/DyRoutFusion_CLS.py")
KWORK = WORK / "kuda"
# The reference's own budget (100 100 50 / 50 epochs) costs ~3.5 CPU hours per seed here; see README's "Budget".
KNOWLEDGE_EPOCHS, EPOCHS = [30, 100, 50], 10


def check_repo(path: str | None) -> Path:
    """The user's checkout of the reference; one clear line when it is missing or is not that repository."""
    if not path:
        sys.exit("kuda_peer: give your checkout of https://github.com/MKMaS-GUET/KuDA with --kuda-repo PATH "
                 "or KUDA_REPO=PATH")
    repo = Path(path).expanduser().resolve()
    missing = [f for f in REF_FILES if not (repo / f).is_file()]
    if missing:
        sys.exit(f"kuda_peer: {repo}: not a checkout of MKMaS-GUET/KuDA (missing {', '.join(missing)})")
    return repo


def export(dataset: str) -> dict:
    pkl = KWORK / "data" / f"{dataset}.pkl"
    if not pkl.with_suffix(".json").exists():
        if step(f"export {dataset} in the reference's layout", [OUR_PY, BENCH / "dynafuse_side.py", "export-kuda",
                                                                dataset, pkl], KWORK / "logs" / f"export-{dataset}.log"):
            sys.exit("export failed")
    return json.loads(pkl.with_suffix(".json").read_text())


def finished(out: Path, **expected) -> bool:
    """A result that ran to the end with the same settings (a failed or differently set one runs again)."""
    if not out.exists():
        return False
    r = json.loads(out.read_text())
    return r["status"] == "ok" and all(r.get(k) == v for k, v in expected.items())


def run_reference(repo: Path, dataset: str, a) -> None:
    """The reference: its knowledge stage once (as its README: pretrain, then train with each seed), then its
    fusion stage per seed."""
    data, ref = KWORK / "data" / f"{dataset}.pkl", KWORK / "ref" / dataset
    side = [KUDA_VENV / "bin" / "python", BENCH / "kuda_side.py"]
    knowledge = ref / "knowledge.json"
    if not finished(knowledge, seed=a.knowledge_seed, epochs=a.knowledge_epochs):
        step(f"reference KuDA knowledge stage on {dataset}",
             [*side, "knowledge", repo, data, knowledge, KWORK / "ref-files" / dataset / "knowledge",
              "--seed", a.knowledge_seed, "--epochs", *a.knowledge_epochs], KWORK / "logs" / f"ref-{dataset}-knowledge.log")
        if not finished(knowledge):
            sys.exit(f"the reference's knowledge stage failed: see {KWORK / 'logs'}")
    for seed in a.seeds:
        out = ref / f"seed-{seed}.json"
        if not finished(out, epochs=a.epochs, knowledge={"seed": a.knowledge_seed, "epochs": a.knowledge_epochs,
                                                         "out": str(knowledge.resolve())}):
            step(f"reference KuDA fusion stage on {dataset}, seed {seed}",
                 [*side, "fusion", repo, data, out, KWORK / "ref-files" / dataset / f"seed-{seed}", "--seed", seed,
                  "--epochs", a.epochs, "--knowledge", knowledge], KWORK / "logs" / f"ref-{dataset}-s{seed}.log")


def run_ours(info: dict, dataset: str, seed: int) -> None:
    """One seed of our kuda, with its preset, on the dataset the exporter names (the same tensors)."""
    out = KWORK / "ours" / dataset / f"kuda-s{seed}"
    if (out / "timing.json").exists():
        return
    step(f"our kuda on {dataset}, seed {seed}",
         [OUR_PY, BENCH / "dynafuse_side.py", "train", "kuda", info["ours_dataset"], out, f"train.seed={seed}",
          *info["ours_overrides"]], KWORK / "logs" / f"ours-{dataset}-s{seed}.log")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kuda-repo", default=os.environ.get("KUDA_REPO"),
                    help="your checkout of MKMaS-GUET/KuDA (default: $KUDA_REPO)")
    ap.add_argument("--dataset", default="simsv2-scores")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sides", nargs="+", choices=["ref", "ours"], default=["ref", "ours"])
    ap.add_argument("--redo", nargs="+", choices=["data", "ref", "ours"], default=[],
                    help="delete these outputs first (e.g. --redo ours after a change to our kuda)")
    ap.add_argument("--knowledge-seed", type=int, default=1111, help="reference stage-1 seed (pretrain.py's)")
    ap.add_argument("--knowledge-epochs", type=int, nargs=3, default=KNOWLEDGE_EPOCHS,
                    help="reference stage-1 epochs for T, V, A (pretrain.py's default: 100 100 50)")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="reference stage-2 epochs (opts.py's default: 50)")
    a = ap.parse_args()
    repo = check_repo(a.kuda_repo) if "ref" in a.sides else None
    for part in a.redo:
        for path in ([KWORK / "data" / f"{a.dataset}.pkl", KWORK / "data" / f"{a.dataset}.json"] if part == "data"
                     else [KWORK / part / a.dataset]):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    t0 = time.time()
    if repo:
        ensure_venv(KUDA_VENV, KUDA_DEPS, check_import="einops, tabulate, transformers, sklearn, scipy")
    info = export(a.dataset)
    if "ours" in a.sides:
        for seed in a.seeds:
            run_ours(info, a.dataset, seed)
    if repo:
        run_reference(repo, a.dataset, a)
    code = step("report", [OUR_PY, BENCH / "dynafuse_side.py", "report-kuda", KWORK, BENCH / "results" / "kuda_peer",
                           a.dataset], KWORK / "logs" / "report.log")
    print((KWORK / "logs" / "report.log").read_text())
    print(f"total {time.time() - t0:.0f} s")
    sys.exit(code)


if __name__ == "__main__":
    main()
