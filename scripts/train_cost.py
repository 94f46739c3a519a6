"""Parameters and training seconds per epoch of every model on MOSI, measured side by side in one process.

Usage: .venv/bin/python scripts/train_cost.py [DATASET]   (writes reports/train_cost.md)
"""

import sys
from pathlib import Path

import torch

from dynafuse.analysis.cost import cost_table, train_cost

MODELS = ["unimodal_text", "early_fusion", "late_fusion", "attention_fusion", "daf", "kuda", "dpdf_lq", "crosssent"]
dataset = sys.argv[1] if len(sys.argv) > 1 else "mosi"
torch.manual_seed(0)
table = cost_table(train_cost(MODELS, dataset))
text = (f"Training cost on {dataset} ({torch.get_num_threads()} CPU threads, median of 10 steps, one process):\n\n"
        + table)
print(text)
Path("reports").mkdir(exist_ok=True)
Path("reports/train_cost.md").write_text(text)
