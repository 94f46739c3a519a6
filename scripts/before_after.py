"""Before / after a change that retrained some models: the same groups (dataset, task, model, variant) in two
report JSONs, side by side (test split, mean ± std over seeds).

    .venv/bin/python scripts/before_after.py reports/before/main-before-issue13.json reports/main.json \
        --models kuda late_fusion attention_fusion crosssent --out reports/issue13_before_after
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dynafuse.analysis.summary import cell, label
from dynafuse.errors import run_script
from dynafuse.files import atomic_write_text

KEYS = {"regression": ("mae", "corr", "acc2_non0", "acc7"), "3class": ("acc3", "f1_3")}


def groups(path: Path) -> dict[tuple, dict]:
    return {(g["dataset"], g["task"], g["model"], g["variant"]): g for g in json.loads(path.read_text())["groups"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    before, after = groups(Path(a.before)), groups(Path(a.after))
    lines = [f"Before: `{a.before}`; after: `{a.after}` (test split, mean ± std over seeds, seeds in brackets). "
             f"From `python scripts/before_after.py`.", "",
             "| dataset | model | metric | before | after |", "|---|---|---|---|---|"]
    waiting = []  # groups of these models not retrained yet: one line, not rows of blanks
    for key in sorted(set(before) | set(after)):
        dataset, task, model, _ = key
        if model not in a.models:
            continue
        b, n = before.get(key), after.get(key)
        if n is None:
            waiting.append(f"{dataset}{'' if task == 'regression' else f' ({task})'} {label(b)}")
            continue
        for k in KEYS[task]:
            show = [f"{cell(g['agg'], k)} ({g['n_seeds']})" if g and k in g["agg"] else "" for g in (b, n)]
            lines.append(f"| {dataset}{'' if task == 'regression' else f' ({task})'} | {label((b or n))} | {k} | "
                         f"{show[0]} | {show[1]} |")
    if waiting:
        lines += ["", f"Not rerun (only in `{a.before}`): {', '.join(waiting)}."]
    md = "\n".join(lines) + "\n"
    atomic_write_text(Path(a.out).with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    run_script(main)
