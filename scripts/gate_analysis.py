"""Gate analysis on the CH-SIMSv2 trimodal benchmark: do the gates move to the modality that is right for a clip?

    .venv/bin/python scripts/gate_analysis.py [runs/foundation] [--data-dir DIR]   # -> reports/simsv2_scores_gates.*

Needs the runs' predictions.csv (written by training; not committed), so it runs where the runs were trained.
See `dynafuse.analysis.gates` for what is measured.
"""

from __future__ import annotations

import argparse

from dynafuse.analysis.gates import gate_analysis
from dynafuse.data.registry import resolve_data_dir
from dynafuse.errors import run_script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="*", default=["runs/foundation"])
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default="reports/simsv2_scores_gates")
    a = ap.parse_args()
    print(gate_analysis(a.roots, resolve_data_dir(a.data_dir), a.out))


if __name__ == "__main__":
    run_script(main)
