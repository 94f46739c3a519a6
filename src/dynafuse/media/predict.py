"""`dynafuse predict`: a trained run scores a raw clip.

A run records its feature spec (run.json `feature_spec`: extractor names, dims, layout). A modality is used only
when this machine can make the same features from a clip; otherwise it is reported as ignored, with the reason,
and the model sees it as missing (an all-false mask), which every model handles. Nothing crashes on a dimension
mismatch: a feature whose dim differs from the checkpoint's is ignored the same way.

A long clip is scored in windows (pipeline.py: at most the text model's max_len tokens each, tiling the clip),
all in one batch. The clip's score is the token-weighted mean of the window scores: each window weighs as many
as its real text tokens, so every word counts once, whichever window it falls in. A window without words (a
pause cut off in the unaligned layout) then weighs 0; when the model reads no text or nothing was said, windows
weigh by their seconds instead. Gate weights (and, in the 3-class task, class probabilities) are averaged the
same way. The output says how much of the clip each modality covered: the seconds (and fraction) of the weighed
windows in which the model used it.
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

    def _batch(self, windows: list) -> tuple[Batch, dict[str, np.ndarray]]:
        """One row per window (a list of ClipFeatures); an ignored or absent modality gets an all-false mask.
        Also (N,) bool per modality: used in that window."""
        x, mask, used = {}, {}, {}
        n = len(windows)
        for m in self.model.modalities:
            if m == "text":
                have = np.array([m not in self.ignored and bool(f.transcript.text.strip()) for f in windows])
                value, lengths = self._text(windows, have)
            else:
                have = np.array([m not in self.ignored and f.present.get(m, False) for f in windows])
                width = next((getattr(f, m).shape[1] for f, h in zip(windows, have) if h), self.dims[m])
                if have.any() and width != self.dims[m]:
                    self.ignored[m] = (f"the clip's {m} features are {width}-d but the checkpoint "
                                       f"expects {self.dims[m]}-d")
                    have[:] = False
                lengths = np.array([len(getattr(f, m)) if h else 0 for f, h in zip(windows, have)])
                value = np.zeros((n, max(int(lengths.max()), 1), self.dims[m] or 1), np.float32)
                for i in np.nonzero(lengths)[0]:
                    value[i, :lengths[i]] = getattr(windows[i], m)[:lengths[i]]
            x[m] = torch.from_numpy(value)
            mask[m] = torch.arange(value.shape[1])[None] < torch.from_numpy(lengths)[:, None]
            used[m] = have
        return Batch(x=x, mask=mask, y=torch.zeros(n), index=torch.arange(n)), used

    def _text(self, windows: list, have: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (N, L) or frozen states (N, L, H) of the windows' transcripts; zero rows where not `have`
        (a placeholder the model must not read: its mask is all false)."""
        texts = [f.transcript.text for f, h in zip(windows, have) if h]
        if not texts:
            return (np.zeros((len(windows), 1), np.int64) if self.finetune else
                    np.zeros((len(windows), 1, self.dims["text"] or 1), np.float32)), np.zeros(len(windows), int)
        values, lengths = self.text.encode_batch(texts)
        out = np.zeros((len(windows), *values.shape[1:]), values.dtype)
        out[have], full = values, np.zeros(len(windows), int)
        full[have] = lengths
        return out, full

    @torch.inference_mode()
    def __call__(self, clip: str | Path, transcript: str | None = None) -> dict:
        import time

        frames = self.pipeline.clip_frames(clip, transcript)
        windows = self.pipeline.windows(frames)
        feats = [self.pipeline.features(frames, w) for w in windows]
        start = time.perf_counter()
        batch, used = self._batch(feats)
        report = self._report(frames, feats, used)
        if not any(u.any() for u in used.values()):
            raise DataError("nothing this run can use in the clip: " + "; ".join(
                f"{m}: {report[m].get('note', '?')}" for m in self.model.modalities), clip)
        out = predict_batches(self.model, [batch])
        frames.timings["model"] = time.perf_counter() - start
        weights = window_weights(windows, used.get("text"))
        share = weights / weights.sum()
        if self.model.task == "3class":  # the weighted mean of the class probabilities, then its likeliest class
            probs = np.exp(out.logits - out.logits.max(-1, keepdims=True))
            probs = probs / probs.sum(-1, keepdims=True)
            score = float((probs * share[:, None]).sum(0).argmax() - 1)
        else:
            score = float((out.pred.astype(np.float64) * share).sum())
        vr = float(self.info["value_range"])
        sign, level = polarity(score, vr, self.model.task)
        gates = {}
        for name, g in out.gates.items():
            parts = self.model.gate_components(name, g.shape[1])
            mean = (g.astype(np.float64) * share[:, None]).sum(0)
            gates[name] = {p: round(float(v), 4) for p, v in zip(parts, mean)}
        return {
            "clip": str(clip), "run": str(self.run_dir), "model": self.info.get("model"),
            "score": round(score, 4), "range": [-vr, vr], "polarity": sign, "level": level,
            "transcript": frames.transcript.text, "transcript_source": frames.transcript.source,
            "modalities": report, "gates": gates,
            "duration": round(frames.duration, 3),
            "coverage": coverage(windows, weights, used, frames.duration, len(frames.transcript.words)),
            "windows": [{"start": round(w.start, 3), "end": round(w.end, 3), "tokens": w.tokens,
                         "score": round(float(p), 4), "weight": round(float(s), 4)}
                        for w, p, s in zip(windows, out.pred, share)],
            "timings": {k: round(v, 4) for k, v in frames.timings.items()},
        }

    def _report(self, frames, feats: list, used: dict[str, np.ndarray]) -> dict[str, dict]:
        """Per modality: in the clip, used by the model, and why not."""
        out = {}
        for m in ("text", "audio", "vision"):
            extracted = m in self.pipeline.extractors
            if m == "text":
                present = bool(frames.transcript.text.strip())
            elif extracted:
                present = any(f.present.get(m, False) for f in feats)
            else:  # a modality not extracted is judged by its stream alone
                present = frames.streams.get(m, False)
            if m not in self.model.modalities:
                note = f"the model takes no {m} input"
            elif m in self.ignored:
                note = self.ignored[m]
            elif not present:
                note = {"text": "no words (no speech recognised)",
                        "audio": "no audio stream" if not frames.streams.get("audio") else "silent",
                        "vision": "no video stream" if not frames.streams.get("vision") else "no face found"}[m]
            else:
                note = ""
            out[m] = {"present": present, "used": bool(used[m].any()) if m in used else False,
                      **({"note": note} if note else {})}
        return out


def window_weights(windows: list, text_used: np.ndarray | None) -> np.ndarray:
    """(N,) weight of each window's score: its real text tokens when the model read text in any window, else
    its seconds (module docstring)."""
    if text_used is not None and text_used.any():
        return np.array([w.tokens if u else 0 for w, u in zip(windows, text_used)], np.float64)
    return np.array([max(w.end - w.start, 1e-9) for w in windows], np.float64)


def coverage(windows: list, weights: np.ndarray, used: dict[str, np.ndarray], duration: float,
             words: int) -> dict[str, dict]:
    """Per modality the model read: seconds and fraction of the clip in weighed windows that used it, and how
    many windows; for text also the words scored of the transcript's."""
    out = {}
    for m, u in used.items():
        on = u & (weights > 0)
        seconds = float(sum(w.end - w.start for w, k in zip(windows, on) if k))
        out[m] = {"seconds": round(seconds, 2), "fraction": round(seconds / duration, 4) if duration > 0 else 0.0,
                  "windows": int(on.sum())}
        if m == "text":
            out[m]["words"] = f"{sum(len(w.transcript.words) for w, k in zip(windows, on) if k)}/{words}"
    return out


def print_prediction(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    lo, hi = r["range"]
    console.print(f"[bold]{r['clip']}[/]  ->  score [bold]{r['score']:+.3f}[/] in [{lo:g}, {hi:g}]  "
                  + r["polarity"] + (f" (7-level: {r['level']})" if r["level"] else ""))
    console.print(f"transcript ({r['transcript_source']}): {r['transcript']!r}")
    n = len(r["windows"])
    covered = ", ".join(f"{m} {c['seconds']:g} s ({100 * c['fraction']:.0f}%)" for m, c in r["coverage"].items())
    console.print(f"{r['duration']:g} s scored in {n} window{'s' * (n != 1)}"
                  + (" (token-weighted mean of the window scores)" if n > 1 else "") + f"; covered: {covered}")
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
