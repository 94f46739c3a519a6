"""One clip in, model-ready features out: decode -> audio/vision extractors -> transcript (ASR or given) -> layout.

The clip is streamed (decode.open_media): audio chunks go to the audio extractor and the ASR as they are decoded,
frames to the vision extractor, and only per-frame features are kept (`ClipFrames`), so memory does not grow
with the clip's length beyond those features. A layout then turns them into model inputs, for the whole clip
(`__call__`, what `dynafuse extract` stores) or for one window of a long clip (`windows`, what predict scores).

Layouts (recorded in the feature spec, so training and `dynafuse predict` make the same features):
- "aligned": one audio and one vision vector per text token (align.py), length = the text's token length;
- "unaligned": the extractor's valid frames in time order, cut to `max_frames` (default audio 500, vision 375:
  the lengths of MMSA's MOSI/MOSEI unaligned features; the first frames are kept);
- "utterance": one vector per clip (or window), the mean of the valid frames.

Windows: a transcript longer than the text model's `max_len` tokens is cut, between words, into consecutive
windows of at most `max_len` tokens (special tokens included); in the unaligned layout a window also lasts at
most max_frames / rate seconds for every modality, so no frame is cut off. The windows tile the clip: each runs
from its first word's start (the first from 0) to the next window's start (the last to the clip's end).

A modality is *present* when the clip has that stream and at least one valid frame (a face, a voiced frame);
otherwise its array has length 0. A clip without a face, or a silent clip, is not an error.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .align import align, pool_frames, tokenizer, word_tokens
from .asr import (
    DEFAULT_ASR,
    MIN_LOGPROB,
    WORD_RE,
    AsrStream,
    Transcript,
    asr_available,
    check_asr,
    check_confident,
    given_transcript,
)

DEFAULT_MEDIA = {
    "layout": "aligned",
    "audio": {"extractor": "egemaps"},
    "vision": {"extractor": "face", "fps": 5},
    "asr": {"model": DEFAULT_ASR, "min_logprob": MIN_LOGPROB},  # model null: no ASR (transcripts must be
    # given; their words are timed evenly); min_logprob: below it an ASR transcript is refused (asr.py)
    "text": {"backbone": "minilm", "max_len": 50},
    "max_frames": {"audio": 500, "vision": 375},  # unaligned layout only
}
LAYOUTS = ("aligned", "unaligned", "utterance")
MEDIA_MODALITIES = ("audio", "vision")
SPEC_KEYS = ("extractor", "modality", "dim", "rate")  # what an extractor's spec adds to its options


@dataclass
class ClipFrames:
    """A clip's per-frame features (`frames[m]`, for each extracted modality) and its transcript."""

    path: str
    transcript: Transcript
    frames: dict  # modality -> extractors.Frames
    duration: float  # seconds
    streams: dict[str, bool]  # the file has an audio / a video stream at all
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


@dataclass
class Window:
    """A stretch of a clip scored on its own: [start, end) seconds and the transcript spoken in it."""

    start: float
    end: float
    transcript: Transcript
    tokens: int  # real text tokens (special tokens not counted), after truncation to max_len


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
        self.min_logprob = float((self.cfg.get("asr") or {}).get("min_logprob", MIN_LOGPROB))
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
        return self.features(self.clip_frames(path, transcript))

    def clip_frames(self, path: str | Path, transcript: str | None = None) -> ClipFrames:
        """Stream the clip through the extractors (and ASR, when it is needed) -> its per-frame features.

        ASR runs when no transcript is given (and must then be confident: asr.check_confident), or to time a
        given transcript's words when audio/vision are aligned to them."""
        from .decode import open_media

        if transcript is None:
            if not self.asr_model:
                raise ConfigError("no transcript given and ASR is off (media asr.model is null)", path)
            check_asr(self.asr_model)
        use_asr = bool(self.asr_model) and (transcript is None or (bool(self.extractors)
                                                                   and asr_available(self.asr_model)))
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with open_media(path, fps=self.fps, video="vision" in self.extractors,
                        audio="audio" in self.extractors or use_asr) as media:
            streams = {m: ext.stream() for m, ext in self.extractors.items()}
            asr = AsrStream(self.asr_model, media.sample_rate) if use_asr and media.decode_audio else None
            for kind, t, data in media.events():
                if kind == "audio":
                    if "audio" in streams:
                        with _timed(timings, "audio"):
                            streams["audio"].audio(t, data, media.sample_rate)
                    if asr is not None:
                        with _timed(timings, "asr"):
                            asr.audio(data)
                elif "vision" in streams:
                    with _timed(timings, "vision"):
                        streams["vision"].frame(t, data)
        frames = {}
        for m, stream in streams.items():
            with _timed(timings, m):
                frames[m] = stream.finish()
        with _timed(timings, "asr"):
            heard = asr.finish() if asr is not None else None
            if transcript is None:
                text = check_confident(heard or Transcript(""), str(path), self.asr_model, self.min_logprob)
            else:
                text = given_transcript(transcript, span=voiced_span(frames.get("audio"), media.duration),
                                        model=None, name=str(path), heard=heard)
        spent = sum(timings.get(k, 0.0) for k in ("audio", "vision", "asr"))
        timings = {"decode": time.perf_counter() - started - spent, **timings}
        return ClipFrames(str(path), text, frames, media.duration,
                          {"audio": media.has_audio, "vision": media.has_video}, timings)

    def features(self, clip: ClipFrames, window: Window | None = None) -> ClipFeatures:
        """The layout of the whole clip (window None: the whole transcript, truncated at max_len as training
        tokenizes it) or of one window (only its transcript and the frames inside it)."""
        text, span = (clip.transcript, (0.0, clip.duration)) if window is None else (
            window.transcript, (window.start, window.end))
        feats, present = {}, {}
        with _timed(clip.timings, "align"):  # summed over a clip's windows
            for m in MEDIA_MODALITIES:
                if m not in clip.frames:
                    feats[m] = np.zeros((0, 0), np.float32)
                else:
                    frames = clip.frames[m] if window is None else _inside(clip.frames[m], span)
                    feats[m] = self._layout(text, frames, span, m)
                present[m] = len(feats[m]) > 0
        return ClipFeatures(transcript=text, audio=feats["audio"], vision=feats["vision"], present=present,
                            streams=clip.streams, timings=clip.timings)

    def window_seconds(self) -> float | None:
        """The longest window in the unaligned layout: every modality's max_frames fit (None: no limit)."""
        if self.layout != "unaligned" or not self.extractors:
            return None
        return min(int(self.cfg["max_frames"][m]) / ext.rate for m, ext in self.extractors.items())

    def windows(self, clip: ClipFrames) -> list[Window]:
        """Consecutive windows that tile the clip, each with at most max_len tokens of the transcript (module
        docstring); one window for a short clip."""
        t, duration = clip.transcript, max(clip.duration, 0.0)
        budget = max(self.max_len - tokenizer(self.backbone).num_special_tokens_to_add(), 1)
        counts = word_tokens(t.text, self.backbone) if t.words else np.zeros(0, int)
        groups, used = [[]], 0  # word indices per window
        limit = self.window_seconds()
        for i, (w, n) in enumerate(zip(t.words, counts)):
            first = t.words[groups[-1][0]] if groups[-1] else None
            if first is not None and (used + n > budget or (limit and w.end - first.start > limit)):
                groups.append([])
                used = 0
            groups[-1].append(i)
            used += int(n)
        starts = self._spread([0.0] + [t.words[g[0]].start for g in groups[1:]], duration)
        ends = starts[1:] + [duration]
        chars = [m.span() for m in WORD_RE.finditer(t.text)]
        out = []
        for g, a, b in zip(groups, starts, ends):
            pieces = max(1, math.ceil((b - a) / limit - 1e-9)) if limit else 1  # a long pause: cut in time too
            edges = np.linspace(a, b, pieces + 1)
            mids = [(t.words[i].start + t.words[i].end) / 2 for i in g]
            piece_of = np.searchsorted(edges[1:-1], mids, side="right")
            for k in range(pieces):
                inside = [i for i, p in zip(g, piece_of) if p == k]
                text = t.text[chars[inside[0]][0]:chars[inside[-1]][1]] if inside else ""
                out.append(Window(float(edges[k]), float(edges[k + 1]),
                                  Transcript(text, [t.words[i] for i in inside], t.source),
                                  min(int(counts[inside].sum()), budget)))
        return out

    def _spread(self, starts: list[float], duration: float) -> list[float]:
        """Window starts (seconds), non-decreasing inside [0, duration], each window lasting at least one frame
        period of the slowest extractor. An ASR may time the last words at the clip's very end, or past it, or
        out of order (a given transcript's times are not checked either); such a window would read no audio or
        vision frame. The words stay in their window; only the frames it reads move. When the clip is shorter
        than one frame period per window, the windows share its duration evenly."""
        n = len(starts)
        gap = min(max((1.0 / ext.rate for ext in self.extractors.values()), default=0.0), duration / max(n, 1))
        # room for the k windows before and the n - k from here on, then a forward pass for order
        out = [min(max(s, k * gap), duration - (n - k) * gap) for k, s in enumerate(starts)]
        for k in range(1, n):
            out[k] = max(out[k], out[k - 1] + gap)
        return out

    def _layout(self, transcript: Transcript, frames, span: tuple[float, float], modality: str) -> np.ndarray:
        """Frames -> this layout's sequence; (0, D) when the modality has no valid frame."""
        dim = frames.values.shape[1] if frames.values.ndim == 2 else self.extractors[modality].dim
        valid = np.asarray(frames.valid, dtype=bool)
        if not valid.any():
            return np.zeros((0, dim), np.float32)
        if self.layout == "aligned":
            return align(transcript, frames, self.backbone, self.max_len, span)[0]
        if self.layout == "utterance":
            return pool_frames(frames.times, frames.values, valid, np.array([span]))[0]
        return np.asarray(frames.values[valid][: int(self.cfg["max_frames"][modality])], dtype=np.float32)


def _inside(frames, span: tuple[float, float]):
    """The frames whose time lies in [start, end] of `span`."""
    keep = (frames.times >= span[0] - 1e-6) & (frames.times <= span[1] + 1e-6)
    return type(frames)(frames.times[keep], frames.values[keep], frames.valid[keep])


def voiced_span(audio_frames, duration: float) -> tuple[float, float]:
    """From the first to the last voiced audio frame; the whole clip without audio frames or voice."""
    if audio_frames is None or not np.asarray(audio_frames.valid).any():
        return 0.0, max(duration, 0.0)
    t = np.asarray(audio_frames.times)[np.asarray(audio_frames.valid, dtype=bool)]
    return float(t[0]), float(max(t[-1], t[0]))
