"""The raw path on REAL clips (issue 14): ../shared/media/real holds CMU-MOSI (English) and CH-SIMS (Mandarin)
clips with their official labels and transcripts, and MMSA-FET's own features for one of them.

We have no Chinese text backbone offline, so the Mandarin clips go through the English MiniLM: `extract` with
their given Mandarin transcripts (MiniLM splits the characters, some to [UNK]; the path is what is tested, with
the backbone given on the command line as a user with bert-base-chinese would), and `predict` with the
dataset's English translation (`text_en` of CH-SIMS) as the transcript.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynafuse.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("DYNAFUSE_DATA") or ROOT.parent / "shared" / "datasets").parent / "media" / "real"
TEXT_EN = {"sims_video_0001_0035.mp4": "I don't want to marry you at all."}  # CH-SIMS label.csv's text_en
SPLITS = {"mosi_Sqr0AcuoNnk_12.mp4": "train", "mosi_0h-zjBukYpk_1.mp4": "test", "sims_video_0001_0001.mp4": "train",
          "sims_video_0001_0008.mp4": "valid", "sims_video_0001_0035.mp4": "test"}  # for a tiny run; all are train


@pytest.fixture(scope="module")
def manifest() -> list[dict]:
    if not (REAL / "manifest.csv").is_file():
        pytest.skip(f"the real clips are not at {REAL}")
    for module in ("av", "faster_whisper", "opensmile"):
        pytest.importorskip(module, reason="the media extra is not installed")
    with open(REAL / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def clips(manifest, dataset: str) -> list[dict]:
    return [r for r in manifest if r["dataset"] == dataset]


@pytest.fixture(scope="module")
def real_source(manifest, tmp_path_factory) -> Path:
    """label.csv + Raw/<video_id>/<clip_id>.mp4 (symlinks to the shared clips) with the given transcripts."""
    src = tmp_path_factory.mktemp("real-src")
    rows = [["video_id", "clip_id", "text", "label", "mode"]]
    for r in manifest:
        vid = f"{r['dataset']}_{r['video_id']}"
        (src / "Raw" / vid).mkdir(parents=True, exist_ok=True)
        (src / "Raw" / vid / f"{r['clip_id']}.mp4").symlink_to(REAL / r["file"])
        rows.append([vid, r["clip_id"], r["transcript"], r["label"], SPLITS[r["file"]]])
    with open(src / "label.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return src


@pytest.fixture(scope="module")
def real_extracted(real_source, tmp_path_factory) -> Path:
    from dynafuse.cli import main

    out = tmp_path_factory.mktemp("real-out") / "dataset"
    assert main(["extract", str(real_source), "--out", str(out), "--backbone", "minilm"]) == 0
    return out


@pytest.fixture(scope="module")
def real_run(real_extracted, tmp_path_factory) -> Path:
    """early_fusion (text + audio + vision) trained one epoch on the five real clips: a path test, not accuracy."""
    from dynafuse.training import build_config, train

    run = tmp_path_factory.mktemp("real-run")
    train(build_config("early_fusion", f"path:{real_extracted}", ["train.max_epochs=1", "train.progress=false"]),
          run)
    return run


def test_asr_word_error_rate_on_the_english_clips(manifest):
    from dynafuse.media.asr import confident, transcribe, word_error_rate
    from dynafuse.media.decode import decode

    for r in clips(manifest, "mosi"):
        heard = transcribe(decode(REAL / r["file"], video=False).audio)
        assert word_error_rate(r["transcript"], heard.text) <= 0.15, (r["transcript"], heard.text)
        assert confident(heard) and heard.logprob > -0.45


def test_english_only_asr_refuses_mandarin_speech(manifest):
    """tiny.en writes English for Mandarin speech; its low confidence stops the transcript with one line."""
    from dynafuse.media.pipeline import FeaturePipeline

    pipe = FeaturePipeline({"vision": None})
    for r in clips(manifest, "sims"):
        with pytest.raises(DataError, match="not confident in what it heard") as e:
            pipe(REAL / r["file"])
        line = str(e.value)
        assert r["file"] in line and "give the transcript" in line and "\n" not in line
        given = pipe(REAL / r["file"], transcript=r["transcript"])  # a given transcript works
        assert given.transcript.text == r["transcript"] and given.transcript.source == "given+even-timing"
        assert len(given.transcript.words) == len(r["transcript"]) and given.present["audio"]


def test_extract_real_clips_with_given_transcripts(manifest, real_extracted):
    from dynafuse.data.text import tokenize

    meta = json.loads((real_extracted / "meta.json").read_text())
    assert meta["counts"]["clips"] == 5 and meta["counts"]["present"]["audio"] == 5
    assert meta["counts"]["present"]["vision"] >= 4  # faces in the reviews and the film clips
    assert meta["feature_spec"]["text"]["backbone"] == "minilm" and meta["feature_spec"]["audio"]["dim"] == 25
    with open(real_extracted / "label.csv", newline="", encoding="utf-8") as f:
        rows = {f"{r['video_id']}/{r['clip_id']}": r for r in csv.DictReader(f)}
    lengths = np.load(real_extracted / "audio_lengths.npy")
    order = list(rows)
    for r in manifest:
        row = rows[f"{r['dataset']}_{r['video_id']}/{r['clip_id']}"]
        assert row["text"] == r["transcript"]  # the Mandarin characters kept as given
        assert row["transcript_source"] == ("given+asr-timing" if r["dataset"] == "mosi" else "given+even-timing")
        _, n = tokenize([r["transcript"]], "minilm", 50)
        assert lengths[order.index(f"{r['dataset']}_{r['video_id']}/{r['clip_id']}")] == n[0]  # one per token


def test_predict_real_clips(manifest, real_run):
    """English by ASR; Mandarin refused without a transcript, scored with the translated one."""
    from dynafuse.media.asr import word_error_rate
    from dynafuse.media.predict import Predictor

    predictor = Predictor(real_run)
    for r in clips(manifest, "mosi"):
        got = predictor(REAL / r["file"])
        assert word_error_rate(r["transcript"], got["transcript"]) <= 0.15
        assert {m: s["used"] for m, s in got["modalities"].items()} == {"text": True, "audio": True, "vision": True}
        assert got["coverage"]["text"]["fraction"] == 1.0 and len(got["windows"]) == 1
    sims = REAL / "sims_video_0001_0035.mp4"
    with pytest.raises(DataError, match="give the transcript"):
        predictor(sims)
    got = predictor(sims, transcript=TEXT_EN[sims.name])
    assert got["transcript_source"] == "given+even-timing" and got["modalities"]["text"]["used"]
    assert got["modalities"]["audio"]["used"] and -3 <= got["score"] <= 3


def test_cli_says_a_transcript_is_needed_for_mandarin(manifest, real_run):
    p = subprocess.run([sys.executable, "-m", "dynafuse.cli", "predict", str(REAL / "sims_video_0001_0008.mp4"),
                        "--run", str(real_run)], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("dynafuse: error:")]
    assert len(errors) == 1 and "sims_video_0001_0008.mp4" in errors[0] and "give the transcript" in errors[0]


def test_audio_feature_is_mmsa_fet_default_and_agrees_with_its_values(manifest):
    """Same 25 eGeMAPS LLDs in the same order as MMSA-FET's default; with word spans recovered from its
    vectors (each feature leaving itself out), our values follow MMSA-FET's across the 8 words."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import media_e2e

    parity = media_e2e.mmsa_fet_parity(REAL)
    assert parity["dims_match"] and parity["feature_names"][:3] == ["Loudness_sma3", "alphaRatio_sma3",
                                                                    "hammarbergIndex_sma3"]
    assert parity["feature_names"][-1] == "F3amplitudeLogRelF0_sma3nz" and len(parity["feature_names"]) == 25
    assert parity["mmsa_fet_words"] == "he is one of my firt factors ever" and parity["tokens"] == 11
    r = parity["table"]["word spans recovered from MMSA-FET's vectors"]["r"]
    assert min(r) > 0.7 and np.median(r) > 0.97
