"""Decode a video or audio file into 16 kHz mono samples and RGB frames sampled at a fixed rate (PyAV).

Damaged files are a `MediaError` naming the file: anything libav cannot open or reports as invalid (a corrupt
header, an mp4 cut before its index, garbage bytes), and a stream that decodes cleanly but ends well before the
duration its header states (a streamable mp4 cut short). Small shortfalls (encoder padding, rounding) pass.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from ..errors import DataError, DynafuseError

INSTALL_HINT = 'pip install "dynafuse[media]" && pip install --no-deps mediapipe==0.10.14 facex'


class MediaError(DataError):
    """A media file that cannot be decoded: missing, empty, corrupt, or without audio and video."""


def require(module: str) -> ModuleType:
    """Import an optional media dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DynafuseError(f"the media features need `{module}`, which is not installed ({e}); "
                            f"install them with: {INSTALL_HINT}") from None


@dataclass
class Clip:
    """A decoded clip. `has_audio` / `has_video` say whether the file has that stream, even if not decoded."""

    path: str
    audio: np.ndarray        # (S,) float32 mono in [-1, 1]; (0,) without an audio stream
    sample_rate: int
    frames: np.ndarray       # (F, H, W, 3) uint8 RGB; (0, 0, 0, 3) without a video stream
    frame_times: np.ndarray  # (F,) float seconds from the start of the file
    duration: float          # seconds, the longest stream
    has_audio: bool
    has_video: bool


def decode(path: str | Path, fps: float = 5.0, sample_rate: int = 16000, video: bool = True,
           audio: bool = True, max_side: int | None = 640) -> Clip:
    """Decode `path`: audio resampled to `sample_rate` mono float32, video frames sampled every 1/`fps` s.

    Each sampled frame is the first frame at or after its target time k/fps, so a 30 fps video gives 5 frames a
    second at fps=5 and never more frames than it has. Frames are downscaled so the longer side is <= `max_side`.
    `video=False` / `audio=False` skip decoding that stream (its presence is still reported).
    """
    av = require("av")
    path = Path(path)
    if not path.is_file():
        raise MediaError("media file not found (or not a regular file)", path)
    if path.stat().st_size == 0:
        raise MediaError("media file is empty (0 bytes)", path)
    try:
        with av.open(str(path)) as container:
            return _decode_container(av, container, path, fps, sample_rate, video, audio, max_side)
    except (av.error.FFmpegError, OSError, EOFError) as e:
        raise MediaError(f"cannot decode (corrupt, truncated or not a media file): {e}", path) from None


def _decode_container(av, container, path: Path, fps: float, sample_rate: int, video: bool, audio: bool,
                      max_side: int | None) -> Clip:
    a_stream = container.streams.audio[0] if container.streams.audio else None
    v_stream = container.streams.video[0] if container.streams.video else None
    if a_stream is None and v_stream is None:
        raise MediaError("no audio or video stream in the file", path)
    decode_audio, decode_video = audio and a_stream is not None, video and v_stream is not None
    wanted = [s for s, on in ((a_stream, decode_audio), (v_stream, decode_video)) if on]
    start = (container.start_time or 0) / 1e6  # AV_TIME_BASE is microseconds
    chunks, sampler = _demux(av, container, wanted, fps, sample_rate, max_side, start)

    samples = np.clip(np.concatenate(chunks), -1, 1).astype(np.float32) if chunks else np.zeros(0, np.float32)
    audio_end = len(samples) / sample_rate if decode_audio else _header_seconds(a_stream)
    video_end = sampler.end if decode_video else _header_seconds(v_stream)
    if decode_audio:
        _check_complete(path, a_stream, audio_end)
    if decode_video:
        _check_complete(path, v_stream, video_end)
    return Clip(path=str(path), audio=samples, sample_rate=sample_rate,
                frames=np.stack(sampler.frames) if sampler.frames else np.zeros((0, 0, 0, 3), np.uint8),
                frame_times=np.asarray(sampler.times, dtype=np.float64), duration=float(max(audio_end, video_end)),
                has_audio=a_stream is not None, has_video=v_stream is not None)


def _demux(av, container, streams: list, fps: float, sample_rate: int, max_side: int | None,
           start: float) -> tuple[list[np.ndarray], _FrameSampler]:
    """One pass over the wanted streams: resampled mono audio chunks, and the sampled video frames."""
    chunks: list[np.ndarray] = []
    sampler = _FrameSampler(fps, max_side, start)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    for s in streams:
        s.thread_type = "AUTO"  # frame-threaded video decoding; harmless for audio
    for packet in container.demux(*streams) if streams else ():
        for frame in packet.decode():
            if packet.stream.type == "audio":
                chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))
            else:
                sampler.add(frame, packet.stream)
    if any(s.type == "audio" for s in streams):
        chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(None))  # flush the resampler
    return chunks, sampler


def _check_complete(path: Path, stream, decoded_seconds: float) -> None:
    """A stream that decodes cleanly but stops well short of the length its header states was cut off
    (a partial download or copy). Features from a fraction of the clip would be silently wrong, so refuse."""
    stated = _header_seconds(stream)
    if stated > 0 and decoded_seconds < 0.9 * stated - 0.25:
        raise MediaError(f"truncated: the {stream.type} stream should last {stated:.2f} s but only "
                         f"{decoded_seconds:.2f} s can be decoded", path)


class _FrameSampler:
    """Keeps the first decoded frame at or after each target time k/fps, as downscaled RGB."""

    def __init__(self, fps: float, max_side: int | None, start: float):
        self.fps, self.max_side, self.start = fps, max_side, start
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.end = 0.0  # end time of the latest decoded frame
        self._next = 0.0
        self._count = 0

    def add(self, frame, stream) -> None:
        period = _frame_seconds(stream)
        # A frame without a timestamp is assumed to follow the previous one at the stream's rate.
        t = (float(frame.time) if frame.time is not None else self._count * period) - self.start
        self._count += 1
        self.end = max(self.end, t + period)
        if t + 1e-3 < self._next:  # tolerance: 6/30 s may round to just under 0.2
            return
        self.frames.append(_to_rgb(frame, self.max_side))
        self.times.append(max(t, 0.0))
        self._next = (math.floor((t + 1e-3) * self.fps) + 1) / self.fps


def _frame_seconds(stream) -> float:
    """How long one video frame is shown (1/30 s when the stream does not say)."""
    rate = stream.average_rate or stream.guessed_rate
    return 1.0 / float(rate) if rate else 1.0 / 30


def _header_seconds(stream) -> float:
    """A stream's duration as its header states it (0 when unknown or there is no stream)."""
    if stream is None or stream.duration is None or stream.time_base is None:
        return 0.0
    return float(stream.duration * stream.time_base)


def _to_rgb(frame, max_side: int | None) -> np.ndarray:
    w, h = frame.width, frame.height
    scale = 1.0 if max_side is None else min(1.0, max_side / max(w, h))
    width, height = max(1, round(w * scale)), max(1, round(h * scale))
    return frame.reformat(width=width, height=height, format="rgb24",
                          interpolation="AREA").to_ndarray()
