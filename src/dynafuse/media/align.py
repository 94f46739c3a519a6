"""Word alignment: one audio/vision vector per text token.

The transcript is tokenized exactly as data/text.py `tokenize` does at train time (same tokenizer, max_len and
truncation), so the aligned sequences have the text's token length. Each sub-token maps (through the fast
tokenizer's character offsets) to its word and so to the word's time span; special tokens ([CLS], [SEP]) span the
whole clip (or the whole window, when a long clip is scored in windows). An extractor's valid frames are averaged
over each span.

MMSA-FET, where most published word-aligned features come from, differs in three ways (benchmarks/media_e2e.py
measures the effect): it averages every frame, silent or not, whose centre lies in [start, end) of a word; its
special tokens are zero vectors; and its word times come from CTC segmentation, ours from whisper.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import ConfigError
from .asr import WORD_RE, Transcript


@lru_cache(maxsize=4)
def tokenizer(backbone: str | None):
    """The backbone's tokenizer, loaded once per process; offsets need a fast (Rust) tokenizer."""
    from ..data.text import load_tokenizer

    tok = load_tokenizer(backbone)
    if not tok.is_fast:
        raise ConfigError("word alignment needs a fast tokenizer (tokenizer.json) in the text backbone folder",
                          backbone)
    return tok


def token_words(text: str, backbone: str | None, max_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (L,) as `tokenize` makes them (without padding) and each token's word index (-1: special token).

    Words are the pieces `asr.split_words` finds in `text`, as in `Transcript.words`. `max_len` None: no
    truncation (to count the tokens of a long transcript)."""
    tok = tokenizer(backbone)
    enc = tok(str(text), truncation=max_len is not None, max_length=max_len, return_offsets_mapping=True,
              return_special_tokens_mask=True)
    word_starts = np.array([m.start() for m in WORD_RE.finditer(str(text))], dtype=np.int64)
    word_of = np.full(len(enc["input_ids"]), -1, dtype=np.int64)
    for i, ((start, end), special) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"])):
        if not special and end > start:  # its last character: inside the word even if the offset took a space
            word_of[i] = np.searchsorted(word_starts, end - 1, side="right") - 1
    return np.asarray(enc["input_ids"], dtype=np.int64), word_of


def word_tokens(text: str, backbone: str | None) -> np.ndarray:
    """How many sub-tokens each word of `text` has (W,), special tokens not counted, nothing truncated."""
    _, word_of = token_words(text, backbone, None)
    return np.bincount(word_of[word_of >= 0], minlength=len(WORD_RE.findall(str(text))))


def token_spans(transcript: Transcript, backbone: str | None, max_len: int,
                span: tuple[float, float]) -> np.ndarray:
    """(L, 2) start/end seconds per token: its word's span; special tokens get `span` (the clip or window)."""
    _, word_of = token_words(transcript.text, backbone, max_len)
    spans = np.tile(np.array([span[0], max(span[1], span[0])]), (len(word_of), 1))
    for i, w in enumerate(word_of):
        if 0 <= w < len(transcript.words):
            spans[i] = transcript.words[w].start, transcript.words[w].end
    return spans


def pool_frames(times: np.ndarray, values: np.ndarray, valid: np.ndarray,
                spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average the valid frames whose time falls in each span -> (L, D) float32 and a (L,) valid flag.

    A span with no valid frame takes the valid frame nearest its centre; with no valid frame at all, every token
    is zero and invalid."""
    values = np.asarray(values, dtype=np.float32)
    out = np.zeros((len(spans), values.shape[1] if values.ndim == 2 else 0), dtype=np.float32)
    keep = np.asarray(valid, dtype=bool)
    if not keep.any() or not len(spans):
        return out, np.zeros(len(spans), dtype=bool)
    t, v = np.asarray(times, dtype=np.float64)[keep], values[keep]
    inside = (t[None, :] >= spans[:, :1]) & (t[None, :] <= spans[:, 1:])  # (L, T)
    counts = inside.sum(1)
    out[:] = (inside.astype(np.float32) @ v) / np.maximum(counts, 1)[:, None]
    empty = np.nonzero(counts == 0)[0]
    if len(empty):
        centres = spans[empty].mean(1)
        out[empty] = v[np.abs(t[None, :] - centres[:, None]).argmin(1)]
    return out, np.ones(len(spans), dtype=bool)


def align(transcript: Transcript, frames, backbone: str | None, max_len: int,
          span: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """An extractor's `Frames` pooled per token of `transcript` -> (L, D) float32 and (L,) valid flags;
    special tokens pool over `span` (seconds: the clip, or the window being scored)."""
    spans = token_spans(transcript, backbone, max_len, span)
    return pool_frames(frames.times, frames.values, frames.valid, spans)
