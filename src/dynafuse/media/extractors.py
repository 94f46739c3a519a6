"""Frame-level feature extractors: a clip's audio and frames in, a `Frames` sequence out.

Each extractor is registered by name, so configs and feature specs refer to it as a string:
"backbone" (text: the backbone's token ids, or its frozen token states), "egemaps" and "compare" (openSMILE
low-level descriptors, 100 Hz) and "face" (mediapipe FaceMesh landmarks and facex expression probabilities at
`fps`). Models load lazily, once per extractor instance.

Extractors stream: `extractor.stream()` takes a clip's audio chunks and frames in time order as the decoder
gives them and keeps only the per-frame features, so a long clip costs memory for its features, not for its
samples or images. `extractor(clip)` runs the same stream over a decoded `Clip`.
"""

from __future__ import annotations

import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, DynafuseError
from .decode import INSTALL_HINT, Clip, TimeSampler, require

EXTRACTORS: dict[str, type[Extractor]] = {}


@dataclass
class Frames:
    """A feature sequence: one row per frame, `valid` False where there is no face or only silence."""

    times: np.ndarray   # (T,) float32 seconds, frame centres
    values: np.ndarray  # (T, D) float32, finite
    valid: np.ndarray   # (T,) bool

    @classmethod
    def empty(cls, dim: int) -> Frames:
        return cls(np.zeros(0, np.float32), np.zeros((0, dim), np.float32), np.zeros(0, bool))


class FrameStream:
    """Incremental extraction for one clip: feed `audio` chunks / `frame`s in time order, then `finish()`."""

    def audio(self, t0: float, samples: np.ndarray, sample_rate: int) -> None:
        """`samples` (n,) float32 mono starting at `t0` seconds (chunks follow each other without gaps)."""

    def frame(self, t: float, image: np.ndarray) -> None:
        """`image` (H, W, 3) uint8 RGB shown at `t` seconds."""

    def finish(self) -> Frames:
        raise NotImplementedError


class Extractor:
    """Base class. Subclasses set `modality`, `defaults` (their options) and implement `dim`, `rate`, `stream`."""

    name: str = ""
    modality: str = ""
    defaults: dict = {}

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ConfigError(f"extractor {self.name!r} has no option(s) {unknown}; "
                              f"its options are {sorted(self.defaults)}")
        self.options = {**self.defaults, **options}

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def rate(self) -> float:
        """Frames per second of the output."""
        raise NotImplementedError

    def stream(self) -> FrameStream:
        """A fresh `FrameStream` for one clip."""
        raise NotImplementedError

    def __call__(self, clip: Clip) -> Frames:
        """The features of a decoded clip: its audio or frames through `stream()`."""
        s = self.stream()
        if self.modality == "audio" and clip.audio.size:
            s.audio(0.0, clip.audio, clip.sample_rate)
        for t, image in zip(clip.frame_times, clip.frames) if self.modality == "vision" else ():
            s.frame(float(t), image)
        return s.finish()

    def spec(self) -> dict:
        return {"extractor": self.name, "modality": self.modality, "dim": self.dim, "rate": self.rate,
                **self.options}


def register_extractor(name: str) -> Callable[[type[Extractor]], type[Extractor]]:
    def add(cls: type[Extractor]) -> type[Extractor]:
        cls.name = name
        EXTRACTORS[name] = cls
        return cls
    return add


def create_extractor(name: str, **options) -> Extractor:
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](**options)


# ---------------------------------------------------------------- text: the backbone's tokens

@register_extractor("backbone")
class BackboneText(Extractor):
    """Text features as training makes them (data/text.py): token ids for a backbone the model fine-tunes, else
    the frozen backbone's token states. It reads a transcript, not a clip: `encode(text)`."""

    modality = "text"
    defaults = {"backbone": "minilm", "max_len": 50, "finetune": False}

    def __init__(self, **options):
        super().__init__(**options)
        self._model = None

    @property
    def dim(self) -> int:
        """0 for token ids (the model's backbone decides), else the backbone's hidden size."""
        if self.options["finetune"]:
            return 0
        from transformers import AutoConfig

        from ..data.text import backbone_path

        return int(AutoConfig.from_pretrained(backbone_path(self.options["backbone"])).hidden_size)

    @property
    def rate(self) -> float:
        return 0.0  # one row per token, not per unit of time

    def encode(self, text: str) -> tuple[np.ndarray, int]:
        """(1, L) int64 token ids or (1, L, H) float32 states, and the number of real tokens."""
        values, lengths = self.encode_batch([text])
        return values, int(lengths[0])

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(N, L) int64 token ids or (N, L, H) float32 states of N texts (L = max_len, zero padded), and the
        real tokens of each (N,)."""
        from ..data.text import load_backbone, token_states, tokenize

        ids, lengths = tokenize(list(texts), self.options["backbone"], int(self.options["max_len"]))
        if self.options["finetune"]:
            return ids, lengths
        if self._model is None:
            self._model = load_backbone(self.options["backbone"]).eval()
        return token_states(self._model, ids, lengths).astype(np.float32), lengths

    def stream(self) -> FrameStream:
        raise ConfigError("the text extractor reads a transcript: call encode(text)")


# ---------------------------------------------------------------- audio: openSMILE low-level descriptors

class _OpenSmile(Extractor):
    """openSMILE LLDs at 100 Hz. A frame is valid when its RMS level is above `silence_db` dBFS.

    Long audio is processed in chunks of `CHUNK_S` seconds, each with `CONTEXT_S` seconds of audio on both sides
    that is analysed but not kept, so windows, smoothing and the pitch tracker see what they would see on the
    whole signal (tests/test_media_decode.py checks chunked against whole-signal LLDs)."""

    modality = "audio"
    defaults = {"silence_db": -50.0}
    feature_set = ""
    n_features = 0
    CHUNK_S, CONTEXT_S = 30.0, 2.0

    def __init__(self, **options):
        super().__init__(**options)
        self._smile = None

    @property
    def dim(self) -> int:
        return self.n_features

    @property
    def rate(self) -> float:
        return 100.0

    def _model(self):
        if self._smile is None:
            opensmile = require("opensmile")
            self._smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, self.feature_set),
                                          feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
        return self._smile

    def stream(self) -> FrameStream:
        return _SmileStream(self)

    def lld(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LLDs of a signal: frame start and end (seconds from its first sample), values (T, D) with NaN kept."""
        with warnings.catch_warnings():  # a clip shorter than one window: one NaN row and a warning
            warnings.simplefilter("ignore", UserWarning)
            table = self._model().process_signal(audio, sample_rate)
        start = table.index.get_level_values("start").total_seconds().to_numpy()
        end = table.index.get_level_values("end").total_seconds().to_numpy()
        if len(start):
            end = start + (end[0] - start[0])  # the last window is cut at the end of the signal: the full width
        return start, end, table.to_numpy(np.float32)


class _SmileStream(FrameStream):
    """Buffers audio; every CHUNK_S seconds analyses [chunk - context, chunk + context] and keeps the chunk's
    frames (those whose window starts inside it). Buffer starts stay on the 10 ms frame grid, so the frames
    are the whole signal's frames."""

    def __init__(self, ext: _OpenSmile):
        self.ext = ext
        self.parts: list[np.ndarray] = []
        self.offset = 0   # sample index of the buffer's first sample
        self.done = 0     # frames starting before this sample index are emitted
        self.size = 0     # samples buffered
        self.sample_rate = 0
        self.out: list[tuple[np.ndarray, ...]] = []

    def audio(self, t0: float, samples: np.ndarray, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.parts.append(np.asarray(samples, np.float32))
        self.size += len(samples)
        hop, chunk, context = self._grid()
        while hop and self.offset + self.size >= self.done + chunk + context:
            self._analyse(self.done + chunk, hop, context)

    def _grid(self) -> tuple[int, int, int]:
        """Hop, chunk and context in samples, on the frame grid (hop 0: no chunking, for odd rates)."""
        sr = self.sample_rate
        if sr % 100:
            return 0, 0, 0
        hop = sr // 100
        return hop, round(self.ext.CHUNK_S * 100) * hop, round(self.ext.CONTEXT_S * 100) * hop

    def _analyse(self, end: int | None, hop: int, context: int) -> None:
        """Frames starting in [done, end) (end None: to the end of the signal), then drop spent samples."""
        x = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        start, stop, values = self.ext.lld(x, self.sample_rate)
        first = self.offset / self.sample_rate
        global_start = start + first
        keep = global_start >= self.done / self.sample_rate - 1e-6
        if end is not None:
            keep &= global_start < end / self.sample_rate - 1e-6
        level = _rms_db(x, self.sample_rate, start[keep], stop[keep])
        self.out.append((global_start[keep], stop[keep] + first, values[keep], level))
        if end is not None:
            cut = max(end - context - self.offset, 0)  # keep the left context of the next chunk
            self.parts, self.offset, self.size, self.done = [x[cut:]], self.offset + cut, len(x) - cut, end

    def finish(self) -> Frames:
        if self.size:
            hop, _, context = self._grid()
            self._analyse(None, hop, context)
        if not self.out:
            return Frames.empty(self.ext.dim)
        start, end, values, level = (np.concatenate(parts) for parts in zip(*self.out))
        if values.size == 0 or np.isnan(values).all():
            return Frames.empty(self.ext.dim)
        return Frames(times=((start + end) / 2).astype(np.float32),
                      values=np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0),
                      valid=level > self.ext.options["silence_db"])


def _rms_db(audio: np.ndarray, sample_rate: int, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of audio[start:end] for each window (seconds); -inf for digital silence."""
    power = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    a = np.clip(np.round(start * sample_rate).astype(int), 0, len(audio))
    b = np.clip(np.round(end * sample_rate).astype(int), 0, len(audio))
    mean = (power[b] - power[a]) / np.maximum(b - a, 1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(np.maximum(mean, 0.0))


@register_extractor("egemaps")
class EGeMAPS(_OpenSmile):
    """eGeMAPSv02 low-level descriptors (25: loudness, spectral slopes, MFCC 1-4, F0, jitter, formants...)."""

    feature_set = "eGeMAPSv02"
    n_features = 25


@register_extractor("compare")
class ComParE(_OpenSmile):
    """ComParE_2016 low-level descriptors (65: energy, spectral bands, MFCC 1-14, voicing...)."""

    feature_set = "ComParE_2016"
    n_features = 65


# ---------------------------------------------------------------- vision: face landmarks + expressions

N_LANDMARKS = 478  # FaceMesh with refine_landmarks=True (468 + 10 iris points)
EXPRESSIONS = ["anger", "disgust", "fear", "happy", "neutral", "sadness", "surprised"]  # facex's output order
EXPRESSION_SIZE = 200  # facex model input: (1, 200, 200, 3) float32 in [0, 1], grey in all 3 channels


@register_extractor("face")
class Face(Extractor):
    """mediapipe FaceMesh landmarks and facex expression probabilities, one row per sampled frame.

    Landmarks (478 x 3, in pixels with z on the x scale) are normalised for position and scale: the centroid
    is subtracted and the result divided by the RMS distance of the points to it (robust to head turns, unlike
    the inter-ocular distance). Expressions: facex's 7-class softmax on a square grey crop around the mesh.
    A frame without a face is invalid and all zero.
    """

    modality = "vision"
    defaults = {"fps": 5.0, "landmarks": True, "expressions": True}

    def __init__(self, **options):
        super().__init__(**options)
        if not (self.options["landmarks"] or self.options["expressions"]):
            raise ConfigError("the face extractor needs landmarks or expressions (or both) switched on")
        self._mesh = None
        self._classifier = None

    @property
    def dim(self) -> int:
        return N_LANDMARKS * 3 * bool(self.options["landmarks"]) + len(EXPRESSIONS) * bool(self.options["expressions"])

    @property
    def rate(self) -> float:
        return float(self.options["fps"])

    def stream(self) -> FrameStream:
        return _FaceStream(self)

    def _features(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        parts = []
        if self.options["landmarks"]:
            parts.append(normalise_landmarks(points).reshape(-1))
        if self.options["expressions"]:
            parts.append(self._expressions(face_crop(image, points)))
        return np.concatenate(parts)

    def _face_mesh(self):
        if self._mesh is None:
            mp = _import_mediapipe()
            self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                                         refine_landmarks=True)
        return self._mesh

    def _expressions(self, grey: np.ndarray) -> np.ndarray:
        if self._classifier is None:
            litert = require("ai_edge_litert.interpreter")
            self._classifier = litert.Interpreter(model_path=str(facex_model_path()), num_threads=1)
            self._classifier.allocate_tensors()
        net = self._classifier
        x = np.repeat((grey.astype(np.float32) / 255.0)[None, :, :, None], 3, axis=3)
        net.set_tensor(net.get_input_details()[0]["index"], x)
        net.invoke()
        return net.get_tensor(net.get_output_details()[0]["index"])[0].astype(np.float32)


class _FaceStream(FrameStream):
    """Landmarks and expressions of each frame at the extractor's rate, as the frames arrive."""

    def __init__(self, ext: Face):
        self.ext = ext
        self.sampler = TimeSampler(ext.rate)
        self.mesh = None  # loaded at the first frame: an audio-only file never needs it
        self.times: list[float] = []
        self.rows: list[np.ndarray] = []
        self.valid: list[bool] = []

    def frame(self, t: float, image: np.ndarray) -> None:
        if not self.sampler.take(t):
            return
        if self.mesh is None:
            self.mesh = self.ext._face_mesh()
            self.mesh.reset()  # tracking must not carry a face over from the previous clip
        points = _landmarks(self.mesh, image)
        row = self.ext._features(image, points) if points is not None else None
        ok = row is not None and bool(np.isfinite(row).all())
        self.times.append(t)
        self.rows.append(row.astype(np.float32) if ok else np.zeros(self.ext.dim, np.float32))
        self.valid.append(ok)

    def finish(self) -> Frames:
        if not self.times:
            return Frames.empty(self.ext.dim)
        return Frames(times=np.asarray(self.times, np.float32), values=np.stack(self.rows),
                      valid=np.asarray(self.valid, bool))


def subsample(times: np.ndarray, fps: float) -> np.ndarray:
    """Indices of the first frame at or after each target time k/fps (all frames when they are sparser)."""
    sampler = TimeSampler(fps)
    return np.asarray([i for i, t in enumerate(times) if sampler.take(float(t))], dtype=int)


def _landmarks(mesh, image: np.ndarray) -> np.ndarray | None:
    """(478, 3) landmarks in pixels (z on the same scale as x), or None when no face is found."""
    with warnings.catch_warnings():  # mediapipe 0.10.14 calls a protobuf API that protobuf 4.25 deprecates
        warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)
        found = mesh.process(np.ascontiguousarray(image)).multi_face_landmarks
    if not found:
        return None
    h, w = image.shape[:2]
    points = np.array([(p.x, p.y, p.z) for p in found[0].landmark], np.float32)
    return points * np.array([w, h, w], np.float32)


def normalise_landmarks(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and divide by the RMS radius: invariant to where the face is and how big."""
    centred = points - points.mean(axis=0)
    radius = np.sqrt((centred ** 2).sum(axis=1).mean())
    return centred / max(radius, 1e-6)


def face_crop(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A square grey crop around the mesh, resized to facex's input size (it was trained on grey face boxes)."""
    av = require("av")
    h, w = image.shape[:2]
    (x0, y0), (x1, y1) = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2
    left, top = int(max(cx - half, 0)), int(max(cy - half, 0))
    right, bottom = int(min(cx + half, w)), int(min(cy + half, h))
    crop = image[top:max(bottom, top + 1), left:max(right, left + 1)]
    # OpenCV's BGR->grey weights (BT.601), as facex computes them.
    grey = np.round(crop @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(grey), format="gray")
    return frame.reformat(width=EXPRESSION_SIZE, height=EXPRESSION_SIZE, interpolation="AREA").to_ndarray()


def facex_model_path() -> Path:
    """The expression model that ships inside the facex package (facex itself is not imported: it needs
    TensorFlow and OpenCV)."""
    from importlib.util import find_spec

    spec = find_spec("facex")
    if spec is None or not spec.submodule_search_locations:
        raise DynafuseError(f"the face expressions need the `facex` package; install it with: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "assets" / "model_optimized.tflite"
    if not path.is_file():
        raise ConfigError("the facex package has no assets/model_optimized.tflite; reinstall it with "
                          "`pip install --no-deps facex`", path)
    return path


def _import_mediapipe():
    """Import mediapipe 0.10.14 without OpenCV.

    `import mediapipe` loads its drawing helpers, which import cv2 but only use it to draw. FaceMesh never
    does, so when cv2 is absent a placeholder module stands in during the import (and is removed after).
    """
    if "mediapipe" in sys.modules or _has_module("cv2"):
        return require("mediapipe")
    sys.modules["cv2"] = types.ModuleType("cv2")
    try:
        return require("mediapipe")
    finally:
        del sys.modules["cv2"]


def _has_module(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None
