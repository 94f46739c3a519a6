"""`dynafuse predict`: a raw clip through a trained run, using only the modalities its feature spec allows."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from dynafuse.errors import DataError
from dynafuse.media.asr import word_error_rate
from media_clips import SENTENCE

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def predictor(media_run):
    from dynafuse.media.predict import Predictor

    return Predictor(media_run)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "dynafuse.cli", *map(str, args)], capture_output=True, text=True)


def test_text_run_scores_the_clip_from_its_asr_transcript(text_run, media_clips):
    """The demo-like run uses text only and says why the audio it was trained on cannot be made from a clip."""
    from dynafuse.media.predict import Predictor

    r = Predictor(text_run)(media_clips["speech_face"])
    assert math.isfinite(r["score"]) and -3 <= r["score"] <= 3
    assert r["polarity"] in ("positive", "negative", "neutral")
    assert word_error_rate(SENTENCE, r["transcript"]) <= 0.2 and r["transcript_source"] == "asr"
    mods = r["modalities"]
    assert mods["text"] == {"present": True, "used": True}
    assert not mods["audio"]["used"] and "came with the dataset 'mosi'" in mods["audio"]["note"]
    assert mods["vision"]["note"] == "the model takes no vision input"


def test_media_run_uses_every_modality_and_reports_gates(predictor, media_clips):
    r = predictor(media_clips["speech_face"])
    assert {m: s["used"] for m, s in r["modalities"].items()} == {"text": True, "audio": True, "vision": True}
    (gate,) = r["gates"].values()
    assert set(gate) == {"text", "audio", "vision"} and abs(sum(gate.values()) - 1) < 1e-3
    assert set(r["timings"]) >= {"decode", "audio", "vision", "asr", "align", "model"}


@pytest.mark.parametrize("clip, missing, note", [("no_face", "vision", "no face found"),
                                                 ("silent", "audio", "silent"),
                                                 ("no_audio", "audio", "no audio stream")])
def test_absent_modality_is_masked_not_an_error(predictor, media_clips, clip, missing, note):
    r = predictor(media_clips[clip], transcript=SENTENCE)  # silent clips have no words to recognise
    assert math.isfinite(r["score"])
    assert r["modalities"][missing] == {"present": False, "used": False, "note": note}
    assert r["modalities"]["text"]["used"]


def test_a_spec_the_checkpoint_does_not_fit_ignores_that_modality(media_run, media_clips, tmp_path):
    """run.json says vision came from the face extractor without expressions (1434-d) but the checkpoint
    expects 1441-d: vision is ignored with the reason; the others still score the clip."""
    from dynafuse.media.predict import Predictor

    run = tmp_path / "run"
    shutil.copytree(media_run, run)
    info = json.loads((run / "run.json").read_text())
    info["feature_spec"]["vision"].update(expressions=False, dim=1434)
    (run / "run.json").write_text(json.dumps(info))
    r = Predictor(run)(media_clips["speech_face"])
    assert r["modalities"]["vision"]["used"] is False
    assert "1434-d" in r["modalities"]["vision"]["note"] and "1441-d" in r["modalities"]["vision"]["note"]
    assert r["modalities"]["audio"]["used"] and math.isfinite(r["score"])


def test_bad_clips_are_one_line_errors(predictor, media_clips, tmp_path):
    for clip in ("corrupt", "empty"):
        with pytest.raises(DataError, match=str(media_clips[clip].name)):
            predictor(media_clips[clip])
    with pytest.raises(DataError, match="empty transcript"):
        predictor(media_clips["speech_face"], transcript="   ")
    with pytest.raises(DataError, match="nope.mp4: media file not found"):
        predictor(tmp_path / "nope.mp4")


def test_cli_json_and_errors(text_run, media_clips):
    p = cli("predict", media_clips["speech_face"], media_clips["corrupt"], "--run", text_run, "--json",
            "--transcript", SENTENCE)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "corrupt.mp4" in p.stderr and "1 of 2 clips could not be scored" in p.stderr
    r = json.loads(p.stdout.strip().splitlines()[0])  # the good clip was still scored
    assert r["transcript"] == SENTENCE and r["transcript_source"].startswith("given")
    p = cli("predict", media_clips["speech_face"], "--run", text_run.parent / "no-such-run")
    assert p.returncode == 2 and "no such run folder" in p.stderr and "Traceback" not in p.stderr


def test_text_extractor_matches_training_features(media_clips):
    """The registered text extractor gives the ids / frozen states data/text.py gives at train time."""
    import numpy as np

    from dynafuse.data.text import load_backbone, token_states, tokenize
    from dynafuse.media.extractors import create_extractor

    ids, lengths = tokenize([SENTENCE], "minilm", 50)
    frozen, tuned = create_extractor("backbone"), create_extractor("backbone", finetune=True)
    assert (frozen.modality, frozen.dim, tuned.dim) == ("text", 384, 0)
    got_ids, n = tuned.encode(SENTENCE)
    assert n == lengths[0] and (got_ids == ids).all()
    states, n = frozen.encode(SENTENCE)
    want = token_states(load_backbone("minilm").eval(), ids, lengths)
    assert states.shape == (1, 50, 384) and np.allclose(states, want, atol=1e-3)


def test_long_clip_is_scored_in_windows_over_the_whole_clip(predictor, media_clips, tmp_path):
    """The synthetic test clip looped to 20 s: ~90 tokens of transcript, so more than one 50-token window; every
    word is scored, the score is the token-weighted mean of the window scores, coverage is reported."""
    from media_clips import loop_clip

    clip = loop_clip(media_clips["speech_face"], 20, tmp_path / "long.mp4")
    r = predictor(clip)
    windows = r["windows"]
    assert len(windows) >= 2 and windows[0]["start"] == 0 and windows[-1]["end"] == pytest.approx(r["duration"])
    assert all(a["end"] == b["start"] for a, b in zip(windows, windows[1:]))
    assert all(0 < w["tokens"] <= 48 for w in windows)
    total = sum(w["tokens"] for w in windows)
    assert r["score"] == pytest.approx(sum(w["score"] * w["tokens"] / total for w in windows), abs=1e-3)
    assert [w["weight"] for w in windows] == pytest.approx([w["tokens"] / total for w in windows], abs=1e-3)
    words = len(r["transcript"].split())
    assert words >= 40 and r["coverage"]["text"] == {"seconds": pytest.approx(r["duration"], abs=0.01),
                                                     "fraction": pytest.approx(1.0, abs=1e-3),
                                                     "windows": len(windows), "words": f"{words}/{words}"}
    for m in ("audio", "vision"):
        assert r["coverage"][m]["windows"] == len(windows) and r["coverage"][m]["fraction"] == pytest.approx(1.0)
    short = predictor(media_clips["speech_face"])
    assert len(short["windows"]) == 1 and short["windows"][0]["score"] == pytest.approx(short["score"], abs=1e-4)
