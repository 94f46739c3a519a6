"""ASR, word timing, token alignment and the feature pipeline on small real clips (tests/media_clips.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dynafuse.data.text import PACKAGED_BACKBONES, tokenize
from dynafuse.errors import DataError
from dynafuse.media.align import pool_frames, token_spans, token_words
from dynafuse.media.asr import (
    Transcript,
    Word,
    even_words,
    timed_words,
    word_error_rate,
)
from media_clips import SENTENCE

TEXTS = [SENTENCE, "Unbelievably GOOD!!  the café's soundtrack... 10/10", "", "  spaced   out  ",
         " ".join(["word"] * 80)]


# ---- pure functions (no media stack) -----------------------------------------------------------

def test_word_error_rate_counts_edits_on_normalised_words():
    assert word_error_rate("I really love it.", "i really LOVE it") == 0.0
    assert word_error_rate("a b c", "a x c") == pytest.approx(1 / 3)  # substitution
    assert word_error_rate("a b c", "a c") == pytest.approx(1 / 3)  # deletion
    assert word_error_rate("a b", "a b c d") == pytest.approx(1.0)  # two insertions
    assert word_error_rate("", "") == 0.0 and word_error_rate("", "x") == 1.0


BACKBONES = ["minilm", pytest.param("mpnet", marks=pytest.mark.skipif(
    not PACKAGED_BACKBONES["mpnet"].installed(), reason="the mpnet extra is not installed"))]


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("text", TEXTS)
def test_token_words_tokenizes_like_training(text, backbone):
    """`dynafuse extract --backbone B` aligns to the sub-tokens training makes with B."""
    ids, word_of = token_words(text, backbone, 50)
    ref_ids, ref_len = tokenize([text], backbone, 50)
    assert len(ids) == ref_len[0]
    np.testing.assert_array_equal(ids, ref_ids[0, :ref_len[0]])
    words = text.split()
    assert word_of[0] == -1 and word_of[-1] == -1  # [CLS] ... [SEP] (MiniLM), <s> ... </s> (MPNet)
    inner = word_of[1:-1]
    assert (inner >= 0).all() and (inner < max(len(words), 1)).all() and (np.diff(inner) >= 0).all()


def test_sub_tokens_share_their_word_span_and_special_tokens_span_the_clip():
    t = Transcript("I loved unbelievably", [Word("I", 0.0, 0.2), Word("loved", 0.2, 0.6),
                                           Word("unbelievably", 0.6, 1.5)], "given+asr-timing")
    _, word_of = token_words(t.text, "minilm", 50)
    spans = token_spans(t, "minilm", 50, span=(0.0, 2.0))
    assert len(spans) == len(word_of) and (word_of == 2).sum() > 1  # "unbelievably" is split into sub-tokens
    np.testing.assert_allclose(spans[word_of == 2], [[0.6, 1.5]] * int((word_of == 2).sum()))
    np.testing.assert_allclose(spans[word_of == 1], [[0.2, 0.6]])
    np.testing.assert_allclose(spans[[0, -1]], [[0.0, 2.0], [0.0, 2.0]])


def test_pool_frames_averages_valid_frames_per_span():
    times = np.arange(10) * 0.1  # 0.0 .. 0.9
    values = np.arange(10, dtype=np.float32)[:, None] * [1.0, 2.0]
    valid = np.ones(10, bool)
    valid[5] = False
    spans = np.array([[0.0, 0.25], [0.35, 0.65], [0.72, 0.78], [0.0, 1.0]])
    out, ok = pool_frames(times, values, valid, spans)
    assert out.shape == (4, 2) and out.dtype == np.float32 and ok.all()
    np.testing.assert_allclose(out[0], [1.0, 2.0])  # frames 0, 1, 2
    np.testing.assert_allclose(out[1], [5.0, 10.0])  # frames 4 and 6 (5 is invalid)
    np.testing.assert_allclose(out[2], [7.0, 14.0])  # no frame inside: the nearest valid one (0.7)
    np.testing.assert_allclose(out[3], values[valid].mean(0))
    none, ok = pool_frames(times, values, np.zeros(10, bool), spans)
    assert not ok.any() and not none.any()


def test_timed_words_takes_matched_asr_times_and_fills_the_rest():
    heard = [Word("i", 0.5, 0.7), Word("really", 0.7, 1.0), Word("loved", 1.0, 1.3), Word("this", 1.3, 1.5),
             Word("movie.", 1.5, 2.0)]
    words = timed_words("I really LOVED that movie, honestly", heard, span=(0.4, 3.0))
    assert [w.text for w in words] == ["I", "really", "LOVED", "that", "movie,", "honestly"]
    assert [(w.start, w.end) for w in words[:3]] == [(0.5, 0.7), (0.7, 1.0), (1.0, 1.3)]  # matched
    assert (words[3].start, words[3].end) == (1.3, 1.5)  # "that" replaces "this": its time
    assert (words[4].start, words[4].end) == (1.5, 2.0)
    assert words[5].start == pytest.approx(2.0) and words[5].end == pytest.approx(3.0)  # not heard: the gap after
    even = timed_words("a b c d", [], span=(1.0, 3.0))
    assert [(w.start, w.end) for w in even] == [(1.0, 1.5), (1.5, 2.0), (2.0, 2.5), (2.5, 3.0)]
    assert even_words([], (0.0, 1.0)) == []


# ---- the media stack ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def media():
    pytest.importorskip("av", reason="the media extra is not installed")
    pytest.importorskip("faster_whisper", reason="the media extra is not installed")
    pytest.importorskip("opensmile", reason="the media extra is not installed")
    from dynafuse.media import asr, pipeline
    from dynafuse.media.decode import decode

    return SimpleNamespace(asr=asr, decode=decode, pipeline=pipeline)


@pytest.fixture(scope="module")
def speech(media, media_clips):
    """The espeak sentence, decoded to 16 kHz mono."""
    return media.decode(media_clips["speech_only"])


@pytest.fixture(scope="module")
def heard(media, speech):
    return media.asr.transcribe(speech.audio, speech.sample_rate)


@pytest.fixture(scope="module")
def full_pipeline(media):
    return media.pipeline.FeaturePipeline()


def test_asr_transcribes_the_espeak_sentence(heard, speech):
    wer = word_error_rate(SENTENCE, heard.text)
    print(f"ASR: {heard.text!r}, WER {wer:.3f}")
    assert wer <= 0.25
    assert heard.source == "asr" and heard.text == " ".join(w.text for w in heard.words)
    starts = np.array([w.start for w in heard.words])
    assert (np.diff(starts) >= 0).all() and all(w.end >= w.start for w in heard.words)
    assert 0 <= starts[0] and heard.words[-1].end <= speech.duration + 0.5


def test_asr_of_silence_or_nothing_is_an_empty_transcript(media):
    asr = media.asr
    for audio in (np.zeros(0, np.float32), np.zeros(16000, np.float32)):
        t = asr.transcribe(audio)
        assert t.text == "" and t.words == [] and t.source == "asr"


def test_given_transcript_is_timed_by_asr_or_evenly(media, speech, heard):
    asr = media.asr
    given = asr.given_transcript(SENTENCE, speech.audio, speech.sample_rate, span=(0.0, speech.duration))
    assert given.source == "given+asr-timing" and given.text == SENTENCE
    by_word = {asr.normalise(w.text): w for w in heard.words}
    for w in given.words:  # every word was heard, so each takes the ASR word's time
        assert (w.start, w.end) == (by_word[asr.normalise(w.text)].start, by_word[asr.normalise(w.text)].end)
    even = asr.given_transcript(SENTENCE, None, span=(0.5, 2.1))
    assert even.source == "given+even-timing"
    assert even.words[0].start == 0.5 and even.words[-1].end == pytest.approx(2.1)
    assert np.allclose(np.diff([w.start for w in even.words]), 1.6 / len(even.words))
    with pytest.raises(DataError, match="empty transcript") as e:
        asr.given_transcript("  ", speech.audio, name="v1/3.mp4")
    assert "v1/3.mp4" in str(e.value)


def test_pipeline_aligns_audio_and_vision_to_text_tokens(full_pipeline, media_clips):
    f = full_pipeline(media_clips["speech_face"])
    _, length = tokenize([f.transcript.text], "minilm", 50)
    assert word_error_rate(SENTENCE, f.transcript.text) <= 0.25
    assert f.audio.shape == (length[0], 25) and f.vision.shape == (length[0], 1441)
    assert f.audio.dtype == np.float32 and np.isfinite(f.audio).all() and np.isfinite(f.vision).all()
    assert f.present == {"audio": True, "vision": True}
    assert set(f.timings) == {"decode", "audio", "vision", "asr", "align"}
    spec = full_pipeline.spec()
    assert spec["layout"] == "aligned" and spec["audio"]["dim"] == 25 and spec["vision"]["dim"] == 1441
    assert spec["text"] == {"extractor": "backbone", "backbone": "minilm", "max_len": 50}
    given = full_pipeline(media_clips["speech_face"], transcript="What a film")
    assert given.transcript.source == "given+asr-timing" and given.audio.shape == (5, 25)


def test_missing_face_or_voice_means_not_present(full_pipeline, media_clips):
    no_face = full_pipeline(media_clips["no_face"])
    assert no_face.present == {"audio": True, "vision": False} and no_face.vision.shape == (0, 1441)
    silent = full_pipeline(media_clips["silent"])
    assert silent.present == {"audio": False, "vision": True} and silent.audio.shape == (0, 25)
    assert silent.transcript.text == "" and silent.vision.shape == (2, 1441)  # [CLS] [SEP] only
    no_audio = full_pipeline(media_clips["no_audio"], transcript=SENTENCE)
    assert no_audio.transcript.source == "given+even-timing" and not no_audio.present["audio"]


def test_unaligned_and_utterance_layouts(media, media_clips, speech):
    pipeline = media.pipeline
    cfg = {"vision": None, "asr": {"model": None}, "max_frames": {"audio": 120}}
    unaligned = pipeline.FeaturePipeline({**cfg, "layout": "unaligned"})
    f = unaligned(media_clips["speech_only"], transcript=SENTENCE)
    assert f.transcript.source == "given+even-timing" and f.audio.shape == (120, 25) and f.vision.size == 0
    assert unaligned.spec()["max_frames"] == {"audio": 120} and "vision" not in unaligned.spec()
    utterance = pipeline.FeaturePipeline({**cfg, "layout": "utterance"})
    assert utterance(media_clips["speech_only"], transcript=SENTENCE).audio.shape == (1, 25)
    rebuilt = pipeline.FeaturePipeline.from_spec(unaligned.spec(), asr_model=None)
    assert rebuilt.spec() == unaligned.spec()
