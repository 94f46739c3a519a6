"""Decode a video or audio file into 16 kHz mono samples and RGB frames sampled at a fixed rate (PyAV).

`open_media` streams a file: audio chunks and sampled frames come out in time order as they are decoded and
nothing is kept, so memory does not grow with the clip's length. `decode` collects a whole (short) clip.

- Mono is the mean of the channels, as librosa (and so MMSA-FET) computes it; libswresample's own stereo->mono
  downmix is sqrt(2) louder, which shifts loudness-type LLDs.
- Frames are turned upright by the stream's display rotation (a phone's portrait video stored sideways), as
  ffmpeg's autorotate does: 90, 180 and 270 degrees (other angles are rounded to the nearest of these).

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
from typing import Iterator

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
    frames: np.ndarray       # (F, H, W, 3) uint8 RGB, upright; (0, 0, 0, 3) without a video stream
    frame_times: np.ndarray  # (F,) float seconds from the start of the file
    duration: float          # seconds, the longest stream
    has_audio: bool
    has_video: bool


class MediaStream:
    """One file's decoded audio chunks and sampled video frames, in time order, as `events()` yields them.

    Use as a context manager. `events()` yields `("audio", t0, samples)` with `samples` (n,) float32 mono at
    `sample_rate` starting at `t0` seconds, and `("video", t, image)` with `image` (H, W, 3) uint8 RGB upright,
    longer side <= `max_side`, the first frame at or after each target time k/`fps`. When it is exhausted,
    `duration` (seconds, the longest stream) is set and a truncated stream has raised `MediaError`.
    """

    def __init__(self, path: str | Path, fps: float = 5.0, sample_rate: int = 16000, video: bool = True,
                 audio: bool = True, max_side: int | None = 640):
        self.av = require("av")
        self.path = Path(path)
        if not self.path.is_file():
            raise MediaError("media file not found (or not a regular file)", self.path)
        if self.path.stat().st_size == 0:
            raise MediaError("media file is empty (0 bytes)", self.path)
        self.fps, self.sample_rate, self.max_side = fps, sample_rate, max_side
        self.container = self._guard(lambda: self.av.open(str(self.path)))
        streams = self.container.streams
        self.a_stream = streams.audio[0] if streams.audio else None
        self.v_stream = streams.video[0] if streams.video else None
        if self.a_stream is None and self.v_stream is None:
            self.close()
            raise MediaError("no audio or video stream in the file", self.path)
        self.has_audio, self.has_video = self.a_stream is not None, self.v_stream is not None
        self.decode_audio, self.decode_video = audio and self.has_audio, video and self.has_video
        self.duration = max(_header_seconds(self.a_stream), _header_seconds(self.v_stream))

    def __enter__(self) -> MediaStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def _guard(self, fn):
        try:
            return fn()
        except (self.av.error.FFmpegError, OSError, EOFError) as e:
            raise MediaError(f"cannot decode (corrupt, truncated or not a media file): {e}", self.path) from None

    def _check_packets(self) -> None:
        """Read every packet without decoding it: a file cut short (its packets stop well before the length its
        header states) raises MediaError, as a decoded one does."""
        streams = [s for s in (self.a_stream, self.v_stream) if s is not None]
        start = (self.container.start_time or 0) / 1e6
        end = {s.index: 0.0 for s in streams}
        for packet in self._guard(lambda: self.container.demux(*streams)):
            if packet.stream.index in end:
                end[packet.stream.index] = max(end[packet.stream.index], _packet_end(packet) - start)
        for s in streams:
            _check_complete(self.path, s, end[s.index])

    def events(self) -> Iterator[tuple[str, float, np.ndarray]]:
        wanted = [s for s, on in ((self.a_stream, self.decode_audio), (self.v_stream, self.decode_video)) if on]
        start = (self.container.start_time or 0) / 1e6  # AV_TIME_BASE is microseconds
        sampler = _FrameSampler(self.fps, self.max_side, start)
        mono = _MonoResampler(self.av, self.sample_rate)
        for s in wanted:
            s.thread_type = "AUTO"  # frame-threaded video decoding; harmless for audio
        if not wanted:  # nothing to decode (e.g. a text-only run with a given transcript): still refuse a cut file
            self._check_packets()
            return
        packets = self._guard(lambda: self.container.demux(*wanted))
        while True:
            packet = self._guard(lambda: next(packets, None))
            if packet is None:
                break
            for frame in self._guard(packet.decode):
                if packet.stream.type == "audio":
                    t0, samples = mono.add(frame)
                    if len(samples):
                        yield "audio", t0, samples
                elif (image := sampler.add(frame, packet.stream)) is not None:
                    yield "video", sampler.time, image
        if self.decode_audio:
            t0, samples = mono.add(None)  # flush the resampler
            if len(samples):
                yield "audio", t0, samples
        audio_end = mono.count / self.sample_rate if self.decode_audio else _header_seconds(self.a_stream)
        video_end = sampler.end if self.decode_video else _header_seconds(self.v_stream)
        if self.decode_audio:
            _check_complete(self.path, self.a_stream, audio_end)
        if self.decode_video:
            _check_complete(self.path, self.v_stream, video_end)
        self.duration = float(max(audio_end, video_end))


def open_media(path: str | Path, fps: float = 5.0, sample_rate: int = 16000, video: bool = True,
               audio: bool = True, max_side: int | None = 640) -> MediaStream:
    """A `MediaStream` over `path` (see there); `video=False` / `audio=False` skip decoding that stream (its
    presence is still reported). Raises `MediaError` for a missing, empty or unreadable file."""
    return MediaStream(path, fps, sample_rate, video, audio, max_side)


def decode(path: str | Path, fps: float = 5.0, sample_rate: int = 16000, video: bool = True,
           audio: bool = True, max_side: int | None = 640) -> Clip:
    """Decode all of `path` into memory: audio resampled to `sample_rate` mono float32, video frames sampled
    every 1/`fps` s (see `MediaStream`). For long clips use `open_media`, which keeps nothing."""
    chunks, frames, times = [], [], []
    with open_media(path, fps, sample_rate, video, audio, max_side) as stream:
        for kind, t, data in stream.events():
            if kind == "audio":
                chunks.append(data)
            else:
                frames.append(data)
                times.append(t)
    return Clip(path=str(stream.path),
                audio=np.concatenate(chunks) if chunks else np.zeros(0, np.float32), sample_rate=sample_rate,
                frames=np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8),
                frame_times=np.asarray(times, dtype=np.float64), duration=stream.duration,
                has_audio=stream.has_audio, has_video=stream.has_video)


class _MonoResampler:
    """Resamples audio frames to `rate` keeping the channels, then averages them (librosa's to_mono)."""

    def __init__(self, av, rate: int):
        self.resampler = av.AudioResampler(format="fltp", rate=rate)  # layout None: the input's channels
        self.count = 0  # samples out so far

    def add(self, frame) -> tuple[float, np.ndarray]:
        start = self.count
        parts = [r.to_ndarray().mean(axis=0) for r in self.resampler.resample(frame)]
        out = np.clip(np.concatenate(parts), -1, 1).astype(np.float32) if parts else np.zeros(0, np.float32)
        self.count += len(out)
        return start / self.resampler.rate, out


def _packet_end(packet) -> float:
    """Where a demuxed packet ends, in seconds (0 without timing)."""
    if packet.pts is None or packet.time_base is None:
        return 0.0
    return float((packet.pts + (packet.duration or 0)) * packet.time_base)


def _check_complete(path: Path, stream, decoded_seconds: float) -> None:
    """A stream that decodes cleanly but stops well short of the length its header states was cut off
    (a partial download or copy). Features from a fraction of the clip would be silently wrong, so refuse."""
    stated = _header_seconds(stream)
    if stated > 0 and decoded_seconds < 0.9 * stated - 0.25:
        raise MediaError(f"truncated: the {stream.type} stream should last {stated:.2f} s but only "
                         f"{decoded_seconds:.2f} s can be decoded", path)


class TimeSampler:
    """Takes the first frame at or after each target time k/fps (every frame when they are sparser)."""

    def __init__(self, fps: float):
        self.fps = fps
        self._next = 0.0

    def take(self, t: float) -> bool:
        if t + 1e-3 < self._next:  # tolerance: 6/30 s may round to just under 0.2
            return False
        self._next = (math.floor((t + 1e-3) * self.fps) + 1) / self.fps
        return True


class _FrameSampler:
    """Picks the first decoded frame at or after each target time k/fps, as downscaled upright RGB."""

    def __init__(self, fps: float, max_side: int | None, start: float):
        self.max_side, self.start = max_side, start
        self.sampler = TimeSampler(fps)
        self.time = 0.0  # time of the latest sampled frame
        self.end = 0.0  # end time of the latest decoded frame
        self._count = 0

    def add(self, frame, stream) -> np.ndarray | None:
        period = _frame_seconds(stream)
        # A frame without a timestamp is assumed to follow the previous one at the stream's rate.
        t = (float(frame.time) if frame.time is not None else self._count * period) - self.start
        self._count += 1
        self.end = max(self.end, t + period)
        if not self.sampler.take(t):
            return None
        self.time = max(t, 0.0)
        return _to_rgb(frame, self.max_side)


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
    """(H, W, 3) uint8, the longer side <= max_side, turned by the display rotation (counter-clockwise
    degrees, as PyAV reads the display matrix; ffmpeg's autorotate turns frames the same way)."""
    w, h = frame.width, frame.height
    scale = 1.0 if max_side is None else min(1.0, max_side / max(w, h))
    width, height = max(1, round(w * scale)), max(1, round(h * scale))
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    quarter_turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb
