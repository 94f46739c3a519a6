"""One clip in, model-ready features out: decode -> audio/vision extractors -> transcript (ASR or given) -> layout.

Layouts (recorded in the feature spec, so training and `dynafuse predict` make the same features):
- "aligned": one audio and one vision vector per text token (align.py), length = the text's token length;
- "unaligned": the extractor's valid frames in time order, cut to `max_frames` (default audio 500, vision 375:
  the lengths of MMSA's MOSI/MOSEI unaligned features; the first frames are kept);
- "utterance": one vector per clip, the mean of the valid frames.

A modality is *present* when the clip has that stream and at least one valid frame (a face, a voiced frame);
otherwise its array has length 0. A clip without a face, or a silent clip, is not an error.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .align import align, pool_frames
from .asr import DEFAULT_ASR, Transcript, given_transcript, transcribe

DEFAULT_MEDIA = {
    "layout": "aligned",
    "audio": {"extractor": "egemaps"},
    "vision": {"extractor": "face", "fps": 5},
    "asr": {"model": DEFAULT_ASR},          # null: no ASR (transcripts must be given; their words timed evenly)
    "text": {"backbone": "minilm", "max_len": 50},
    "max_frames": {"audio": 500, "vision": 375},  # unaligned layout only
}
LAYOUTS = ("aligned", "unaligned", "utterance")
MEDIA_MODALITIES = ("audio", "vision")
SPEC_KEYS = ("extractor", "modality", "dim", "rate")  # what an extractor's spec adds to its options


@dataclass
class ClipFeatures:
    transcript: Transcript
    audio: np.ndarray  # (T, D) float32; length 0 when not present
    vision: np.ndarray
    present: dict[str, bool] = field(default_factory=dict)
    streams: dict[str, bool] = field(default_factory=dict)  # the file has an audio / a video stream at all
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


def merge(base: dict, over: dict | None) -> dict:
    """`over` merged into a copy of `base`, nested dicts key by key (a None modality switches it off)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


class FeaturePipeline:
    """Builds its extractors once; call it on many clips (one pipeline per worker process)."""

    def __init__(self, cfg: dict | None = None):
        from .extractors import create_extractor

        self.cfg = merge(DEFAULT_MEDIA, cfg)
        self.layout = self.cfg["layout"]
        if self.layout not in LAYOUTS:
            raise ConfigError(f"media layout must be one of {list(LAYOUTS)}, not {self.layout!r}")
        self.extractors = {}
        for m in MEDIA_MODALITIES:
            options = dict(self.cfg.get(m) or {})
            name = options.pop("extractor", None)
            if name:
                self.extractors[m] = create_extractor(name, **options)
                if self.extractors[m].modality != m:
                    raise ConfigError(f"extractor {name!r} makes {self.extractors[m].modality} features, "
                                      f"not {m} features")
        text = self.cfg["text"]
        self.backbone, self.max_len = text.get("backbone") or "minilm", int(text.get("max_len", 50))
        self.asr_model = (self.cfg.get("asr") or {}).get("model")
        self.fps = self.extractors["vision"].rate if "vision" in self.extractors else 5.0  # frames to decode

    @classmethod
    def from_spec(cls, spec: dict, asr_model: str | None = DEFAULT_ASR) -> "FeaturePipeline":
        """The pipeline that made features with this spec (a dataset's meta.json or a run's feature_spec)."""
        cfg = {"layout": spec.get("layout", "aligned"), "asr": {"model": asr_model}}
        if spec.get("text"):
            cfg["text"] = {k: spec["text"][k] for k in ("backbone", "max_len") if k in spec["text"]}
        if spec.get("max_frames"):
            cfg["max_frames"] = spec["max_frames"]
        for m in MEDIA_MODALITIES:
            s = spec.get(m)
            cfg[m] = {"extractor": s["extractor"], **{k: v for k, v in s.items() if k not in SPEC_KEYS}} if s else None
        pipe = cls(cfg)
        for m, ext in pipe.extractors.items():
            if ext.dim != spec[m].get("dim", ext.dim):
                raise ConfigError(f"the {m} extractor {ext.name!r} now makes {ext.dim}-d features, "
                                  f"the spec says {spec[m]['dim']}")
        return pipe

    def spec(self) -> dict:
        """How this pipeline's features are made: recorded in meta.json and every run's run.json."""
        out = {"layout": self.layout,
               "text": {"extractor": "backbone", "backbone": self.backbone, "max_len": self.max_len}}
        out.update({m: ext.spec() for m, ext in self.extractors.items()})
        if self.layout == "unaligned":
            out["max_frames"] = {m: int(self.cfg["max_frames"][m]) for m in self.extractors}
        return out

    def __call__(self, path: str | Path, transcript: str | None = None) -> ClipFeatures:
        """Features of one clip; `transcript` (if given) replaces ASR text, and ASR only times its words."""
        from .decode import decode

        timings: dict[str, float] = {}
        with _timed(timings, "decode"):
            clip = decode(path, fps=self.fps, video="vision" in self.extractors,
                          audio="audio" in self.extractors or bool(self.asr_model))
        frames = {}
        for m, ext in self.extractors.items():
            with _timed(timings, m):
                frames[m] = ext(clip)
        with _timed(timings, "asr"):
            text = self._transcript(clip, transcript, frames.get("audio"))
        feats, present = {}, {}
        with _timed(timings, "align"):
            for m in MEDIA_MODALITIES:
                feats[m] = self._layout(text, frames[m], clip.duration, m) if m in frames else np.zeros((0, 0),
                                                                                                         np.float32)
                present[m] = len(feats[m]) > 0
        return ClipFeatures(transcript=text, audio=feats["audio"], vision=feats["vision"], present=present,
                            streams={"audio": clip.has_audio, "vision": clip.has_video},
                            timings=timings)

    def _transcript(self, clip, given: str | None, audio_frames) -> Transcript:
        if given is None:
            if not self.asr_model:
                raise ConfigError("no transcript given and ASR is off (media asr.model is null)", clip.path)
            return transcribe(clip.audio, clip.sample_rate, self.asr_model)
        return given_transcript(given, clip.audio, clip.sample_rate, voiced_span(audio_frames, clip.duration),
                                self.asr_model, name=clip.path)

    def _layout(self, transcript: Transcript, frames, duration: float, modality: str) -> np.ndarray:
        """Frames -> this layout's sequence; (0, D) when the modality has no valid frame."""
        dim = frames.values.shape[1] if frames.values.ndim == 2 else self.extractors[modality].dim
        valid = np.asarray(frames.valid, dtype=bool)
        if not valid.any():
            return np.zeros((0, dim), np.float32)
        if self.layout == "aligned":
            return align(transcript, frames, self.backbone, self.max_len, duration)[0]
        if self.layout == "utterance":
            return pool_frames(frames.times, frames.values, valid, np.array([[0.0, max(duration, 0.0)]]))[0]
        return np.asarray(frames.values[valid][: int(self.cfg["max_frames"][modality])], dtype=np.float32)


def voiced_span(audio_frames, duration: float) -> tuple[float, float]:
    """From the first to the last voiced audio frame; the whole clip without audio frames or voice."""
    if audio_frames is None or not np.asarray(audio_frames.valid).any():
        return 0.0, max(duration, 0.0)
    t = np.asarray(audio_frames.times)[np.asarray(audio_frames.valid, dtype=bool)]
    return float(t[0]), float(max(t[-1], t[0]))
