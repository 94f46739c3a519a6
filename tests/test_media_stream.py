"""Streaming media (issue 17): chunked openSMILE, ASR in segments, windows over a long transcript, CJK words.

Speech here is espeak-ng's (synthetic) or the real clips' (test_media_real.py); each test says which.
"""

from __future__ import annotations

import numpy as np
import pytest

from dynafuse.media.asr import Transcript, Word, even_words, quietest_cut, split_words, word_error_rate
from dynafuse.media.pipeline import ClipFrames, FeaturePipeline
from media_clips import SENTENCE

SR = 16000


@pytest.fixture(scope="module")
def speech(media_clips):
    pytest.importorskip("av", reason="the media extra is not installed")
    from dynafuse.media.decode import decode

    return decode(media_clips["speech_only"]).audio  # espeak-ng: synthetic speech, 2.6 s


# ---- pure functions ------------------------------------------------------------------------------

def test_cjk_characters_are_words_and_the_rest_splits_on_spaces():
    assert split_words("我根本就不想嫁给你。 OK, fine") == ["我", "根", "本", "就", "不", "想", "嫁", "给", "你", "。",
                                                         "OK,", "fine"]
    assert split_words("  spaced   out ") == ["spaced", "out"] and split_words("") == []
    assert split_words("日本語のテキスト") == list("日本語のテキスト")  # kana too


def test_quietest_cut_finds_the_pause():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, 10 * SR).astype(np.float32)  # synthetic noise
    x[int(7.3 * SR):int(7.6 * SR)] = 0  # a pause at 7.3-7.6 s
    cut = quietest_cut(x, SR, 5 * SR)
    assert 7.3 * SR <= cut <= 7.6 * SR
    assert quietest_cut(x[:100], SR, 5 * SR) == 100  # shorter than one 100 ms frame: no cut inside


def test_windows_tile_the_clip_with_at_most_max_len_tokens():
    """A synthetic 130-word transcript over 100 s: consecutive windows of <= 48 real tokens, every word once."""
    text = " ".join(f"word{i % 7} unbelievably" if i % 5 == 0 else f"w{i}" for i in range(130))
    words = even_words(split_words(text), (1.0, 99.0))
    clip = ClipFrames("synthetic.mp4", Transcript(text, words, "given+even-timing"), {}, 100.0, {})
    pipe = FeaturePipeline({"audio": None, "vision": None, "asr": {"model": None}})
    windows = pipe.windows(clip)
    assert len(windows) > 2 and windows[0].start == 0.0 and windows[-1].end == 100.0
    assert all(a.end == b.start for a, b in zip(windows, windows[1:]))  # they tile the clip
    assert [w.text for win in windows for w in win.transcript.words] == split_words(text)  # every word, once
    from dynafuse.data.text import tokenize

    _, lengths = tokenize([w.transcript.text for w in windows], "minilm", 10_000)
    assert (lengths <= 50).all() and [w.tokens for w in windows] == list(lengths - 2)  # nothing truncated
    for w in windows:
        assert w.transcript.text in text and split_words(w.transcript.text) == [x.text for x in w.transcript.words]
        assert all(w.start <= x.start for x in w.transcript.words)
    short = ClipFrames("s.mp4", Transcript("a b", even_words(["a", "b"], (0, 1))), {}, 2.0, {})
    assert [(w.start, w.end, w.tokens) for w in pipe.windows(short)] == [(0.0, 2.0, 2)]
    empty = ClipFrames("e.mp4", Transcript(""), {}, 3.0, {})
    assert [(w.start, w.end, w.tokens) for w in pipe.windows(empty)] == [(0.0, 3.0, 0)]


def test_no_window_is_shorter_than_a_vision_frame():
    """An ASR may time the last words at the clip's very end (synthetic timing here): the last window is pulled
    back to at least one 5 fps frame (0.2 s), so it still reads audio and vision; its words stay in it."""
    text = " ".join(f"w{i} unbelievably" for i in range(40))
    words = even_words(split_words(text), (0.0, 10.0))
    words[-4:] = [Word(w.text, 10.0, 10.0) for w in words[-4:]]
    clip = ClipFrames("synthetic.mp4", Transcript(text, words), {}, 10.0, {})
    pipe = FeaturePipeline({"asr": {"model": None}})
    windows = pipe.windows(clip)
    assert len(windows) >= 2 and all(a.end == b.start for a, b in zip(windows, windows[1:]))
    assert all(w.end - w.start >= 0.2 - 1e-9 for w in windows)
    assert [x.text for w in windows for x in w.transcript.words] == split_words(text)
    assert all(w.start <= x.start for w in windows for x in w.transcript.words)


@pytest.mark.parametrize("late", [0.5, 3.0])
def test_words_timed_past_the_clip_end_or_out_of_order_keep_windows_inside(late):
    """Synthetic timing: the last 60 words start up to `late` s past the clip's 10 s end (as whisper timed words
    on the CI machine), and two are out of order. Windows still tile [0, 10] in order, each at least one 5 fps
    frame (0.2 s) long, and every word is scored once."""
    text = " ".join(f"w{i} unbelievably" for i in range(80))
    words = even_words(split_words(text), (0.0, 10.0))
    words[-60:] = [Word(w.text, 10.0 + late * k / 60, 10.0 + late * (k + 1) / 60) for k, w in enumerate(words[-60:])]
    words[30], words[31] = Word(words[30].text, 6.0, 6.1), Word(words[31].text, 2.0, 2.1)
    clip = ClipFrames("synthetic.mp4", Transcript(text, words), {}, 10.0, {})
    windows = FeaturePipeline({"asr": {"model": None}}).windows(clip)
    assert len(windows) >= 4 and windows[0].start == 0.0 and windows[-1].end == 10.0
    assert all(a.end == b.start for a, b in zip(windows, windows[1:]))
    assert all(w.end - w.start >= 0.2 - 1e-9 for w in windows)
    assert [x.text for w in windows for x in w.transcript.words] == split_words(text)


def test_unaligned_windows_also_fit_max_frames():
    """Unaligned layout, audio max_frames 200 at 100 Hz: no window longer than 2 s, even across a pause."""
    words = [Word("hello", 0.5, 0.9), Word("there", 1.0, 1.4), Word("again", 9.0, 9.5)]
    clip = ClipFrames("synthetic.wav", Transcript("hello there again", words), {}, 10.0, {})
    pipe = FeaturePipeline({"layout": "unaligned", "vision": None, "asr": {"model": None},
                            "max_frames": {"audio": 200}})
    windows = pipe.windows(clip)
    assert pipe.window_seconds() == 2.0 and all(w.end - w.start <= 2.0 + 1e-9 for w in windows)
    assert windows[0].start == 0.0 and windows[-1].end == 10.0
    assert [x.text for w in windows for x in w.transcript.words] == ["hello", "there", "again"]
    assert sum(w.tokens > 0 for w in windows) == 2  # the pause's windows have no words


# ---- on speech -----------------------------------------------------------------------------------

def test_chunked_llds_equal_the_whole_signal(speech):
    """openSMILE in 2 s chunks with 1 s context, fed in decoder-sized pieces, gives the whole signal's LLDs."""
    pytest.importorskip("opensmile")
    from dynafuse.media.extractors import create_extractor

    signal = np.concatenate([speech, np.zeros(SR // 3, np.float32)] * 4)  # 4 synthetic sentences, ~11.7 s
    whole_ext, chunked_ext = create_extractor("egemaps"), create_extractor("egemaps")
    whole_ext.CHUNK_S = 1e6
    chunked_ext.CHUNK_S, chunked_ext.CONTEXT_S = 2.0, 1.0
    whole = whole_ext.stream()
    whole.audio(0.0, signal, SR)
    want = whole.finish()
    stream = chunked_ext.stream()
    for i in range(0, len(signal), 1024):  # AAC-frame-sized pieces, as the decoder gives them
        stream.audio(i / SR, signal[i:i + 1024], SR)
    got = stream.finish()
    assert len(want.times) > 1100
    np.testing.assert_allclose(got.times, want.times, atol=1e-5)
    np.testing.assert_allclose(got.values, want.values, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.valid, want.valid)


def test_asr_in_segments_keeps_every_word_in_order(speech, monkeypatch):
    """Four synthetic sentences (~11.7 s) transcribed in segments of at most 4 s, cut at the pauses."""
    pytest.importorskip("faster_whisper")
    from dynafuse.media import asr

    signal = np.concatenate([speech, np.zeros(SR // 3, np.float32)] * 4)
    monkeypatch.setattr(asr, "SEGMENT_S", 4.0)
    monkeypatch.setattr(asr, "CUT_SEARCH_S", 2.0)
    stream = asr.AsrStream()
    for i in range(0, len(signal), 4096):
        stream.audio(signal[i:i + 4096])
    assert stream.offset >= 6 * SR  # two or more segments were transcribed before the end (of three or more)
    heard = stream.finish()
    assert word_error_rate(" ".join([SENTENCE] * 4), heard.text) <= 0.25
    starts = [w.start for w in heard.words]
    assert starts == sorted(starts) and heard.words[-1].end > 9.0  # times run over the whole signal
    assert heard.logprob > asr.MIN_LOGPROB and 0 < heard.word_probability <= 1


def test_asr_words_timed_past_the_audio_are_kept_inside_it(monkeypatch):
    """Whisper pads a segment to 30 s and may time a word past the audio it was given; a stand-in model (no
    whisper run) times two words at 0.8-1.6 s and 1.7-1.9 s of a 1 s segment: both end up inside [0, 1] s."""
    from types import SimpleNamespace

    from dynafuse.media import asr

    words = [SimpleNamespace(word=" late", start=0.8, end=1.6, probability=0.9),
             SimpleNamespace(word=" later", start=1.7, end=1.9, probability=0.9)]
    segment = SimpleNamespace(tokens=[1, 2], avg_logprob=-0.2, words=words)
    model = SimpleNamespace(transcribe=lambda *a, **k: ([segment], None))
    monkeypatch.setattr(asr, "load_model", lambda name: model)
    stream = asr.AsrStream()
    stream.audio(np.full(SR, 0.1, np.float32))
    heard = stream.finish()
    assert [(w.text, w.start, w.end) for w in heard.words] == [("late", 0.8, 1.0), ("later", 1.0, 1.0)]


def test_mandarin_transcript_is_timed_per_character(media_clips):
    """A given Mandarin transcript: one word per character, timed evenly when the English ASR hears nothing
    it is sure of; tokens of MiniLM (which splits CJK characters) map to their characters' times."""
    from dynafuse.media.align import token_spans, token_words
    from dynafuse.media.asr import given_transcript

    t = given_transcript("我根本就不想嫁给你。", span=(0.2, 2.2), model=None)
    assert t.text == "我根本就不想嫁给你。" and t.source == "given+even-timing" and len(t.words) == 10
    ids, word_of = token_words(t.text, "minilm", 50)
    assert len(ids) == 12 and list(word_of) == [-1, *range(10), -1]
    spans = token_spans(t, "minilm", 50, span=(0.0, 2.5))
    np.testing.assert_allclose(spans[1:-1], [(w.start, w.end) for w in t.words])
