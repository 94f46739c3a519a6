"""The one prediction path: run a model over batches and collect what it returns.

`evaluate` (metrics + predictions.csv), `explain` (gates, attention, fused vectors), `robust` and `transfer`
(predictions under corruptions / on another dataset), `predict` (a raw clip) and the tests all call
`predict_batches`; what it collects beyond the predictions is asked for by flag, so a plain evaluation does not pay
for attention maps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

MIN_SHARE = 0.1  # attention positions present in fewer samples than this share are not averaged (too few)


class AttentionMean:
    """Running mean of one attention map over samples, for maps whose size differs between batches.

    Maps are (B, Tq, Tk) or (B, heads, Tq, Tk) (heads are averaged). A cell counts for a sample only where the
    query row has weight (a real query) and the key column has weight from some query (a real, unpadded key), so
    padding never dilutes the mean. The sum grows to the longest sequence seen.
    """

    def __init__(self):
        self.sum = np.zeros((0, 0))
        self.count = np.zeros((0, 0))
        self.n = 0

    def add(self, w: torch.Tensor) -> None:
        w = w.float()
        if w.dim() == 4:
            w = w.mean(1)
        elif w.dim() == 2:
            w = w.unsqueeze(1)
        w = w.numpy()
        valid = (w.sum(2, keepdims=True) > 0) & (w.sum(1, keepdims=True) > 0)
        tq, tk = w.shape[1:]
        grow = (max(tq, self.sum.shape[0]), max(tk, self.sum.shape[1]))
        if grow != self.sum.shape:
            pad = [(0, grow[0] - self.sum.shape[0]), (0, grow[1] - self.sum.shape[1])]
            self.sum, self.count = np.pad(self.sum, pad), np.pad(self.count, pad)
        self.sum[:tq, :tk] += (w * valid).sum(0)
        self.count[:tq, :tk] += valid.sum(0)
        self.n += len(w)

    def mean(self) -> np.ndarray:
        """The mean map, cut to the rows and columns that at least MIN_SHARE of the samples have."""
        keep_q = np.flatnonzero(self.count.max(1) >= MIN_SHARE * self.n)
        keep_k = np.flatnonzero(self.count.max(0) >= MIN_SHARE * self.n)
        if not len(keep_q) or not len(keep_k):
            return np.zeros((0, 0))
        m = self.sum / np.maximum(self.count, 1)
        return m[: keep_q[-1] + 1, : keep_k[-1] + 1]


@dataclass
class Predictions:
    """What a pass over a split collected, in loader order: `index` (N,) rows of the split, `pred` (N,) scores
    (or classes in {-1, 0, 1}), `logits` (N, 1 or 3), `y` (N,) labels, `gates` name -> (N, K) for every 2-D gate
    (`other_gates` names the rest), `fused` (N, d) or None, `attention` name -> AttentionMean."""

    index: np.ndarray
    pred: np.ndarray
    logits: np.ndarray
    y: np.ndarray
    gates: dict[str, np.ndarray] = field(default_factory=dict)
    other_gates: list[str] = field(default_factory=list)
    fused: np.ndarray | None = None
    attention: dict[str, AttentionMean] = field(default_factory=dict)


@torch.inference_mode()
def predict_batches(model, batches: Iterable, fused: bool = False, attention: bool = False) -> Predictions:
    """Run `model` (an MSAModel, in eval mode) over `batches`; gates are always collected, fused vectors and
    averaged attention maps when asked."""
    model.eval()
    preds, logits, ys, index, gates, vecs, maps, other = [], [], [], [], {}, [], {}, set()
    for batch in batches:
        out = model(batch)
        preds.append(out.pred.float().cpu().numpy())
        logits.append(out.logits.float().cpu().numpy())
        ys.append(batch.y.float().cpu().numpy())
        index.append(batch.index.cpu().numpy())
        for name, g in out.gates.items():
            if g.dim() == 2:
                gates.setdefault(name, []).append(g.float().cpu().numpy())
            else:
                other.add(name)
        if fused and out.fused is not None:
            vecs.append(out.fused.float().cpu().numpy())
        if attention:
            for name, a in out.attention.items():
                if torch.is_tensor(a) and a.dim() in (2, 3, 4):
                    maps.setdefault(name, AttentionMean()).add(a.cpu())
    pred = np.concatenate(preds) if preds else np.zeros(0)
    return Predictions(index=np.concatenate(index) if index else np.zeros(0, np.int64), pred=pred,
                       logits=np.concatenate(logits) if logits else np.zeros((0, 1)),
                       y=np.concatenate(ys) if ys else np.zeros(0),
                       gates={k: np.concatenate(v) for k, v in gates.items()}, other_gates=sorted(other),
                       fused=np.concatenate(vecs) if vecs and sum(map(len, vecs)) == len(pred) else None,
                       attention=maps)
