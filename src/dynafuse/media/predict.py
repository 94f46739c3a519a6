"""`dynafuse predict`: a trained run scores a raw clip.

A run records its feature spec (run.json `feature_spec`: extractor names, dims, layout). A modality is used only
when this machine can make the same features from a clip; otherwise it is reported as ignored, with the reason,
and the model sees it as missing (an all-false mask), which every model handles. Nothing crashes on a dimension
mismatch: a feature whose dim differs from the checkpoint's is ignored the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.core import Batch
from ..errors import DataError, DynafuseError
from ..training import predict_batches

LEVELS = ["strongly negative", "negative", "weakly negative", "neutral", "weakly positive", "positive",
          "strongly positive"]  # the Acc-7 levels of MOSI/MOSEI, rounded score -3..3


def polarity(score: float, value_range: float, task: str = "regression") -> tuple[str, str]:
    """(positive | negative | neutral, the 7-level label): SIMS's [-1, 1] is scaled to [-3, 3] first."""
    if task == "3class":
        return ["negative", "neutral", "positive"][int(score) + 1], ""
    level = int(np.clip(np.round(score * 3.0 / value_range), -3, 3))
    return ("positive" if score > 0 else "negative" if score < 0 else "neutral"), LEVELS[level + 3]


def unusable(modality: str, spec: dict, dims: dict[str, int], dataset: str) -> str | None:
    """Why this run's `modality` features cannot be made from a clip, or None when they can."""
    from .extractors import EXTRACTORS
    from .pipeline import LAYOUTS

    s = spec.get(modality)
    if not s:
        return (f"the run's {modality} features ({dims[modality]}-d) came with the dataset {dataset!r}, "
                "not from an extractor dynafuse runs on a clip")
    if modality == "text":
        return None if s.get("extractor") == "backbone" else f"unknown text extractor {s.get('extractor')!r}"
    if s.get("extractor") not in EXTRACTORS:
        return f"the run used the {s.get('extractor')!r} extractor, which is not registered here"
    if spec.get("layout") not in LAYOUTS:
        return f"the run's feature layout {spec.get('layout')!r} is unknown"
    if int(s.get("dim", -1)) != dims[modality]:
        return f"the spec's {s.get('dim')}-d {modality} features do not match the checkpoint's {dims[modality]}-d"
    return None


class Predictor:
    """A run's model plus the feature pipeline its spec asks for, loaded once and kept warm for many clips."""

    def __init__(self, run_dir: str | Path, asr_model: str | None = "tiny.en"):
        from ..training import load_model
        from .extractors import create_extractor
        from .pipeline import FeaturePipeline

        self.run_dir = Path(run_dir)
        self.cfg, self.info, self.lit = load_model(run_dir)
        self.lit.eval()
        self.model = self.lit.model
        self.dims = self.info["input_dims"]
        self.spec = dict(self.info.get("feature_spec") or {})
        self.ignored = {m: why for m in self.model.modalities
                        if (why := unusable(m, self.spec, self.dims, self.info.get("dataset", "?")))}
        text = self.spec.get("text") or {}
        self.finetune = bool(text.get("finetune")) or self.dims.get("text") == 0
        self.text = create_extractor("backbone", backbone=text.get("backbone") or "minilm",
                                     max_len=int(text.get("max_len", 50)), finetune=self.finetune)
        # the media extractors this run can use; text settings drive ASR timing and word alignment
        media = {"layout": self.spec.get("layout", "aligned"), "text": text,
                 **{m: self.spec[m] for m in ("audio", "vision")
                    if m in self.model.modalities and m not in self.ignored}}
        if "max_frames" in self.spec:
            media["max_frames"] = self.spec["max_frames"]
        self.pipeline = FeaturePipeline.from_spec(media, asr_model)

    def _batch(self, feats) -> tuple[Batch, dict[str, bool]]:
        """One-sample batch; an ignored or absent modality gets an all-false mask."""
        x, mask, used = {}, {}, {}
        for m in self.model.modalities:
            if m == "text":
                have = m not in self.ignored and bool(feats.transcript.text.strip())
                value, n = self.text.encode(feats.transcript.text) if have else (None, 0)
            else:
                value = getattr(feats, m)
                have = m not in self.ignored and feats.present.get(m, False)
                if have and value.shape[1] != self.dims[m]:
                    self.ignored[m] = (f"the clip's {m} features are {value.shape[1]}-d but the checkpoint "
                                       f"expects {self.dims[m]}-d")
                    have = False
                value, n = (value[None].astype(np.float32), len(value)) if have else (None, 0)
            if value is None:  # missing: a placeholder the model must not read (mask all false)
                value = np.zeros((1, 1), np.int64) if m == "text" and self.finetune else \
                    np.zeros((1, 1, self.dims[m] or 1), np.float32)
            t = value.shape[1]
            x[m] = torch.from_numpy(value)
            mask[m] = torch.arange(t)[None] < n
            used[m] = have
        return Batch(x=x, mask=mask, y=torch.zeros(1), index=torch.zeros(1, dtype=torch.long)), used

    @torch.inference_mode()
    def __call__(self, clip: str | Path, transcript: str | None = None) -> dict:
        import time

        feats = self.pipeline(clip, transcript)
        start = time.perf_counter()
        batch, used = self._batch(feats)
        report = self._report(feats, used)
        if not any(used.values()):
            raise DataError("nothing this run can use in the clip: " + "; ".join(
                f"{m}: {report[m].get('note', '?')}" for m in self.model.modalities), clip)
        out = predict_batches(self.model, [batch])
        feats.timings["model"] = time.perf_counter() - start
        score = float(out.pred[0])
        vr = float(self.info["value_range"])
        sign, level = polarity(score, vr, self.model.task)
        gates = {}
        for name, g in out.gates.items():
            parts = self.model.gate_components(name, g.shape[1])
            gates[name] = {p: round(float(v), 4) for p, v in zip(parts, g[0])}
        return {
            "clip": str(clip), "run": str(self.run_dir), "model": self.info.get("model"),
            "score": round(score, 4), "range": [-vr, vr], "polarity": sign, "level": level,
            "transcript": feats.transcript.text, "transcript_source": feats.transcript.source,
            "modalities": report, "gates": gates,
            "timings": {k: round(v, 4) for k, v in feats.timings.items()},
        }

    def _report(self, feats, used: dict[str, bool]) -> dict[str, dict]:
        """Per modality: in the clip, used by the model, and why not."""
        out = {}
        for m in ("text", "audio", "vision"):
            extracted = m in self.pipeline.extractors
            if m == "text":
                present = bool(feats.transcript.text.strip())
            else:  # a modality not extracted is judged by its stream alone
                present = feats.present.get(m, False) if extracted else feats.streams.get(m, False)
            if m not in self.model.modalities:
                note = f"the model takes no {m} input"
            elif m in self.ignored:
                note = self.ignored[m]
            elif not present:
                note = {"text": "no words (no speech recognised)",
                        "audio": "no audio stream" if not feats.streams.get("audio") else "silent",
                        "vision": "no video stream" if not feats.streams.get("vision") else "no face found"}[m]
            else:
                note = ""
            out[m] = {"present": present, "used": used.get(m, False), **({"note": note} if note else {})}
        return out


def print_prediction(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    lo, hi = r["range"]
    console.print(f"[bold]{r['clip']}[/]  ->  score [bold]{r['score']:+.3f}[/] in [{lo:g}, {hi:g}]  "
                  + r["polarity"] + (f" (7-level: {r['level']})" if r["level"] else ""))
    console.print(f"transcript ({r['transcript_source']}): {r['transcript']!r}")
    t = Table("modality", "in the clip", "used by the model", "note", title=f"{r['model']} from {r['run']}")
    for m, s in r["modalities"].items():
        t.add_row(m, "yes" if s["present"] else "no", "yes" if s["used"] else "no", s.get("note", ""))
    console.print(t)
    for name, g in r["gates"].items():
        console.print(f"gate {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in g.items()))


def clip_paths(items: list[str | Path]) -> list[Path]:
    """The clips to score: a folder gives its media files (any depth, sorted, hidden ones skipped), a file itself.

    Raises DataError for a folder without media files."""
    from .extract import MEDIA_EXTENSIONS

    out = []
    for item in map(Path, items):
        if not item.is_dir():
            out.append(item)  # a missing or bad file is that clip's error, not the batch's
            continue
        found = sorted(p for p in item.rglob("*") if p.suffix.lower() in MEDIA_EXTENSIONS and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(item).parts))
        if not found:
            raise DataError(f"no media files ({' '.join(MEDIA_EXTENSIONS)}) in this folder", item)
        out += found
    return out


def predict_lines(predictor: Predictor, clips: list[Path], transcript: str | None = None,
                  progress: bool = True) -> int:
    """Score `clips` with one warm predictor, printing one JSON line per clip on stdout (`{"clip", "error"}` for a
    clip that cannot be scored; the batch goes on) under a rich progress bar on stderr. Returns the failures."""
    import json
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    failed = 0
    console = Console(stderr=True)
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.description}"))
    # stdout into a file or pipe stays pure JSON; on a terminal rich prints the lines above the bar
    with Progress(*columns, console=console, disable=not progress, redirect_stdout=sys.stdout.isatty()) as bar:
        task = bar.add_task("", total=len(clips))
        for clip in clips:
            bar.update(task, description=clip.name)
            try:
                line = predictor(clip, transcript)
            except DynafuseError as e:
                failed += 1
                bar.console.print(f"dynafuse: error: {e}", markup=False, highlight=False, soft_wrap=True)
                line = {"clip": str(clip), "error": str(e)}
            print(json.dumps(line, ensure_ascii=False), flush=True, file=sys.stdout)
            bar.advance(task)
    return failed
