"""The scoring service behind `dynafuse serve`: runs loaded once, one worker, a bounded queue, private uploads.

- Warm: each run's `Predictor` (model + the feature extractors its spec asks for) is built at start-up and run
  once on synthetic input, so no request pays for loading a model.
- Bounded: one worker thread scores clips one at a time (decoding, openSMILE, FaceMesh, whisper and torch
  already use the cores), and at most `queue` more requests wait for it. A request beyond that is refused at
  once with 503 and a Retry-After of about one scoring time, before its upload is read. A request that waits and
  scores for longer than `timeout` seconds gets 504; a clip still waiting is then dropped, a clip already being
  scored finishes, and its slot stays taken until it does, so the bound holds.
- Private uploads: every request gets a fresh folder inside one temporary folder owned by the service. The clip
  is written there under a name the server makes (`clip` + a checked media suffix); the client's file name is
  only echoed back (its last path component). The folder is removed when the request's work ends: scored,
  failed, timed out, refused, or never started.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import ConfigError, DynafuseError

MB = 1024 * 1024
# declared part types that can be a clip; anything else (text/plain, image/png, application/pdf...) is 415
MEDIA_TYPES = ("video/", "audio/", "application/octet-stream", "application/mp4", "application/ogg")
COPY_CHUNK = MB


class ServeError(DynafuseError):
    """A request the service refuses: an HTTP `status`, one clear message naming the clip (or the setting), and
    extra response `headers` (Retry-After on 503)."""

    def __init__(self, status: int, problem: str, path: object | None = None, headers: dict | None = None):
        super().__init__(problem, path)
        self.status = status
        self.headers = headers or {}


def client_name(filename: str | None) -> str:
    """The last component of the client's file name (either slash), without control characters; `clip` if none.
    Only echoed back: no upload is ever written under it."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()[:200]
    return name if name not in ("", ".", "..") else "clip"


def parse_runs(items: list[str]) -> dict[str, Path]:
    """`--run` values, each `PATH` (named after its folder) or `NAME=PATH`, as {name: path}.

    Raises ConfigError on a repeated name."""
    runs: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or "/" in name:
            name, path = Path(item.rstrip("/")).name or item, item
        if name in runs:
            raise ConfigError(f"two runs are named {name!r}: give one another name with --run NAME=PATH", path)
        runs[name] = Path(path)
    if not runs:
        raise ConfigError("give at least one --run RUN folder")
    return runs


def warm_up(predictor) -> float:
    """Load what a `Predictor` loads lazily (text backbone, whisper, openSMILE, FaceMesh) by running each part once
    on 1 s of synthetic noise and one blank frame; nothing is scored. Returns the seconds it took."""
    import numpy as np

    from ..media.asr import transcribe
    from ..media.decode import Clip

    start = time.perf_counter()
    noise = (0.05 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    clip = Clip(path="warm-up", audio=noise, sample_rate=16000, frames=np.zeros((1, 64, 64, 3), np.uint8),
                frame_times=np.zeros(1), duration=1.0, has_audio=True, has_video=True)
    predictor.text.encode("warm up")
    for extractor in predictor.pipeline.extractors.values():
        extractor(clip)
    if predictor.pipeline.asr_model:
        transcribe(noise, 16000, predictor.pipeline.asr_model)
    return time.perf_counter() - start


class Ticket:
    """One admitted request: a queue slot and a private upload folder, both given back when its work ends.

    Used as a context manager: leaving the block frees both, unless `submit` handed the work to the worker, whose
    completion (or cancellation) frees them instead."""

    def __init__(self, service: Service):
        self.service = service
        self.folder = Path(tempfile.mkdtemp(dir=service.upload_root))
        self._handed_off = False

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        if not self._handed_off:
            self.release()

    def release(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.service.free_slot()

    def save(self, src: BinaryIO, filename: str | None, content_type: str | None) -> tuple[Path, str]:
        """Copy an uploaded clip into this ticket's folder as `clip<suffix>`: (its path, the client's name).

        Raises ServeError 415 (not a media type or suffix), 400 (0 bytes) or 413 (over the upload limit)."""
        from ..media.extract import MEDIA_EXTENSIONS

        name = client_name(filename)
        suffix = PurePosixPath(name).suffix.lower()
        kind = (content_type or "").split(";")[0].strip().lower()
        if suffix not in MEDIA_EXTENSIONS or (kind and not kind.startswith(MEDIA_TYPES)):
            raise ServeError(415, f"unsupported type ({kind or 'no type'}, suffix {suffix or 'none'!r}): send a "
                                  f"video or audio file, one of {' '.join(MEDIA_EXTENSIONS)}", name)
        path = self.folder / f"clip{suffix}"
        size = 0
        with open(path, "xb") as out:  # a fresh name in a fresh folder: nothing else can be there
            while chunk := src.read(COPY_CHUNK):
                size += len(chunk)
                if size > self.service.max_upload:
                    raise self.service.too_large(name)
                out.write(chunk)
        if size == 0:
            raise ServeError(400, "the clip is empty (0 bytes)", name)
        return path, name

    def submit(self, fn: Callable, *args) -> Future:
        """Queue `fn(*args)` on the service's worker; its end (or cancellation) frees this ticket."""
        future = self.service.pool.submit(fn, *args)
        self._handed_off = True
        future.add_done_callback(lambda _: self.release())
        return future


class Service:
    """Loaded runs plus the bounded worker that scores clips with them.

    `runs`: {name: run folder}; the first is the default. `queue`: requests that may wait while one is scored
    (capacity = queue + 1). `timeout`: seconds a request may wait and score. `max_upload_mb`: the largest request
    body accepted (MB). `asr_model`: whisper model for clips without a transcript (None: a transcript is
    required). `threads`: torch CPU threads (default: torch's). Raises DynafuseError for a run that cannot load.
    """

    def __init__(self, runs: dict[str, str | Path], queue: int = 4, timeout: float = 60.0,
                 max_upload_mb: float = 50.0, asr_model: str | None = "tiny.en", threads: int | None = None,
                 warm: bool = True, log: Callable[[str], None] | None = None):
        import torch

        from ..media.predict import Predictor

        if queue < 0 or timeout <= 0 or max_upload_mb <= 0:
            raise ConfigError(f"--queue must be >= 0 and --timeout, --max-upload-mb > 0 (got {queue}, {timeout}, "
                              f"{max_upload_mb})")
        if threads:
            torch.set_num_threads(int(threads))
        self.capacity, self.timeout = queue + 1, float(timeout)
        self.max_upload_mb, self.max_upload = max_upload_mb, int(max_upload_mb * MB)  # the setting, in bytes
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynafuse-score")
        self.upload_root = Path(tempfile.mkdtemp(prefix="dynafuse-serve-"))
        self._busy, self._lock = 0, threading.Lock()
        self._recent = deque(maxlen=20)  # seconds of the last scorings: the Retry-After estimate
        self.predictors, self.warm_seconds = {}, {}
        try:
            for name, path in runs.items():
                # built and warmed on the worker thread, which is the only one that ever uses them
                self.predictors[name] = self.pool.submit(Predictor, path, asr_model).result()
                if warm:
                    self.warm_seconds[name] = round(self.pool.submit(warm_up, self.predictors[name]).result(), 2)
                if log:
                    log(f"loaded run {name!r} ({self.predictors[name].info.get('model')}) from {path}")
        except BaseException:
            self.close()
            raise
        self.default = next(iter(self.predictors))

    # ---- admission -------------------------------------------------------------------------------------------
    def admit(self) -> Ticket:
        """A ticket for one request, or ServeError 503 (with Retry-After) when `capacity` requests are in."""
        with self._lock:
            if self._busy >= self.capacity:
                raise ServeError(503, f"busy: {self._busy} clips are being scored or waiting (the limit); retry "
                                      "later", headers={"Retry-After": str(self.retry_after())})
            self._busy += 1
        try:
            return Ticket(self)
        except BaseException:
            self.free_slot()
            raise

    def free_slot(self) -> None:
        with self._lock:
            self._busy -= 1

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: one recent mean scoring time (a slot frees when a clip is done)."""
        recent = list(self._recent)
        return max(1, math.ceil(sum(recent) / len(recent))) if recent else 1

    def too_large(self, name: str | None = None) -> ServeError:
        return ServeError(413, f"the upload is larger than the {self.max_upload_mb:g} MB limit (--max-upload-mb)",
                          name)

    # ---- scoring ---------------------------------------------------------------------------------------------
    def predictor(self, name: str | None):
        """(run name, its Predictor); the default run when `name` is empty. ServeError 404 for an unknown run."""
        name = name or self.default
        if name not in self.predictors:
            raise ServeError(404, f"unknown run {name!r}; loaded: {', '.join(self.predictors)} (GET /runs)")
        return name, self.predictors[name]

    def score(self, predictor, path: Path, transcript: str | None, name: str) -> dict:
        """Runs on the worker thread: `dynafuse predict --json`'s object for one clip, `clip` = the client's name."""
        start = time.perf_counter()
        try:
            return {**predictor(path, transcript), "clip": name}
        finally:
            self._recent.append(time.perf_counter() - start)

    async def result(self, future: Future, path: Path, name: str) -> dict:
        """Await a submitted scoring within the time limit: ServeError 504 past it, 422 for a clip that cannot be
        scored (its message names the client's file, never the server's path)."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except asyncio.TimeoutError:
            raise ServeError(504, f"scoring took longer than the {self.timeout:g} s limit (--timeout)", name) from None
        except ServeError:
            raise
        except DynafuseError as e:
            raise ServeError(422, e.problem.replace(str(path), name), name) from None

    # ---- what is loaded --------------------------------------------------------------------------------------
    def runs(self) -> list[dict]:
        """Per loaded run: name, folder, model, dataset, task, score range, modalities, feature spec and the
        modalities a clip cannot feed (with the reason)."""
        out = []
        for name, p in self.predictors.items():
            out.append({"name": name, "default": name == self.default, "path": str(p.run_dir),
                        "model": p.info.get("model"), "dataset": p.info.get("dataset"), "task": p.model.task,
                        "range": [-float(p.info["value_range"]), float(p.info["value_range"])],
                        "modalities": list(p.model.modalities), "feature_spec": p.spec, "ignored": dict(p.ignored),
                        "warm_up_s": self.warm_seconds.get(name)})
        return out

    def health(self) -> dict:
        """Liveness plus the limits a client must respect (the page reads them)."""
        from ..media.extract import MEDIA_EXTENSIONS

        return {"status": "ok", "runs": list(self.predictors), "busy": self._busy, "capacity": self.capacity,
                "workers": 1, "timeout_s": self.timeout, "max_upload_bytes": self.max_upload,
                "suffixes": list(MEDIA_EXTENSIONS)}

    def close(self) -> None:
        """Stop the worker (dropping queued work) and remove the upload folder."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.upload_root, ignore_errors=True)
