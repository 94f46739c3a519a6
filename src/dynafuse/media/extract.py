"""`dynafuse extract`: a folder of labelled raw clips (MMSA-FET layout) -> a dataset `--dataset path:OUT` reads.

Input:  SRC/label.csv (video_id, clip_id, text, label, [label_T, label_A, label_V], mode) and
        SRC/Raw/<video_id>/<clip_id>.mp4 (any other media extension is found too).
Output: OUT/clips/<video_id>/<clip_id>.npz  one per clip, written atomically as soon as it is done: a rerun skips
                                            them, so a killed run loses at most the clips in flight (the names
                                            are the ids, escaped where a file system cannot hold them: see
                                            `path_part`);
        OUT/errors.csv                      clips that failed (video_id, clip_id, path, reason); the run goes on;
        OUT/label.csv                       the clips that worked, grouped by split, with the transcript used;
        OUT/{audio,vision}.npy + *_lengths.npy   (N, T, D) float32, zero-padded, read back memory-mapped;
        OUT/meta.json                       format, feature spec, value range, counts; written last, so its
                                            presence means the arrays beside it are complete.
"""

from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing
import os
import re
import signal
import threading
import time
import unicodedata
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..data.tables import SPLITS, UNI_COLUMNS, label_range, read_label_csv
from ..errors import ConfigError, DataError, DynafuseError
from ..files import atomic_save_npy, atomic_write, atomic_write_csv, atomic_write_json
from ..progress import progress as show_progress
from .asr import check_asr
from .pipeline import MEDIA_MODALITIES, ClipFeatures, FeaturePipeline

FORMAT, VERSION = "dynafuse-features", 1
MEDIA_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".m4v", ".mpg", ".mpeg", ".wav", ".mp3",
                    ".flac", ".m4a", ".aac", ".ogg", ".opus")
ERROR_COLUMNS = ("video_id", "clip_id", "path", "reason")
EMPTY_TEXT_NOTE = "empty label text: transcribed by ASR"
CACHE_LAYOUT = 2  # 2: clip names escaped by path_part, each cached clip holds its ids


@dataclass
class Job:
    """One clip to extract (plain data: it crosses into worker processes)."""

    video_id: str
    clip_id: str
    media: str | None    # None: no media file found for the clip
    text: str | None     # the transcript to use; None -> ASR
    cache: str           # OUT/clips/<video_id>/<clip_id>.npz
    note: str = ""       # recorded with the clip (e.g. why ASR replaced its label text)


# ---- reading the source folder -----------------------------------------------------------------

def read_source(src: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """SRC/label.csv as columns (blank texts allowed: ASR fills them in), plus `clip_id`."""
    if not src.is_dir():
        raise DataError("no such folder (expected label.csv and Raw/<video_id>/<clip_id>.mp4)", src)
    table = read_label_csv(src / "label.csv", allow_empty_text=True)
    table["clip_id"] = np.array([i[len(v) + 1:] for i, v in zip(table["ids"], table["video_id"])])
    if limit:
        table = {k: v[:limit] for k, v in table.items()}
    return table


def find_media(src: Path, video_id: str, clip_id: str) -> Path | None:
    """Raw/<video_id>/<clip_id>.mp4, else the same name with another media extension."""
    folder = src / "Raw" / video_id
    first = folder / f"{clip_id}.mp4"
    if first.is_file():
        return first
    found = [p for p in folder.glob(f"{glob.escape(clip_id)}.*") if p.suffix.lower() in MEDIA_EXTENSIONS
             and p.is_file()]
    return sorted(found)[0] if found else None


# ---- ids -> cache paths, one to one -------------------------------------------------------------

# What Linux, macOS or Windows cannot hold in a name (control characters, separators, Windows' reserved
# characters), plus our own escape characters % and ~.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|%~]')
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
_MAX_BYTES = 200  # below the usual 255-byte limit of a name, leaving room for ".npz" and a temporary suffix


def _escape(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8"))


def _digest(name: str, n: int) -> str:
    return hashlib.sha1(name.encode("utf-8")).hexdigest()[:n]


def path_part(name: str) -> str:
    """One id as one file-name component, one to one: Unicode is kept; what a file system cannot hold is
    %-escaped (%XX per UTF-8 byte, and % itself), as are a leading or trailing dot or space (Windows drops
    them; "." and ".." are not names) and the first letter of a Windows device name (CON, NUL, COM1...).
    A name still longer than 200 bytes keeps its start and ends in ~ and a hash of the whole id. "" -> "%"."""
    if name == "":
        return "%"
    out = _UNSAFE.sub(lambda m: _escape(m.group()), name)
    if out.split(".")[0].upper() in _RESERVED or out[0] in ". ":
        out = _escape(out[0]) + out[1:]
    if out[-1] in ". ":
        out = out[:-1] + _escape(out[-1])
    if len(out.encode("utf-8")) > _MAX_BYTES:
        head = out.encode("utf-8")[:_MAX_BYTES - 20].decode("utf-8", "ignore")
        out = f"{head}~{_digest(name, 16)}"
    return out


def _fold(name: str) -> str:
    """What a case-insensitive, Unicode-normalising file system (macOS, Windows) sees of a name."""
    return unicodedata.normalize("NFC", name).casefold()


def _distinct(names: list[str]) -> dict[str, str]:
    """Each name's `path_part`; names whose parts differ only in case or Unicode normalisation (one file on
    macOS or Windows) each get ~ and a hash of the name, so they stay apart there too."""
    groups: dict[str, set[str]] = {}
    for n in names:
        groups.setdefault(_fold(path_part(n)), set()).add(n)
    return {n: path_part(n) + (f"~{_digest(n, 8)}" if len(groups[_fold(path_part(n))]) > 1 else "")
            for n in names}


def clip_caches(out: Path, video_ids, clip_ids) -> list[Path]:
    """OUT/clips/<video_id>/<clip_id>.npz for each row, one to one: a DataError when two rows would still
    share a file (on this file system or a case-insensitive one)."""
    video_ids, clip_ids = list(map(str, video_ids)), list(map(str, clip_ids))
    folders = _distinct(sorted(set(video_ids)))
    by_video: dict[str, set[str]] = {}
    for v, c in zip(video_ids, clip_ids):
        by_video.setdefault(v, set()).add(c)
    names = {v: _distinct(sorted(clips)) for v, clips in by_video.items()}
    paths = [out / "clips" / folders[v] / f"{names[v][c]}.npz" for v, c in zip(video_ids, clip_ids)]
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        j = seen.setdefault(_fold(str(p)), i)
        if j != i:
            raise DataError(f"clips {video_ids[j]}/{clip_ids[j]} and {video_ids[i]}/{clip_ids[i]} would be cached "
                            f"in the same file {p.relative_to(out)}", out)
    return paths


def make_jobs(src: Path, out: Path, table: dict[str, np.ndarray], transcripts: str) -> list[Job]:
    jobs = []
    caches = clip_caches(out, table["video_id"], table["clip_id"])
    for vid, cid, text, cache in zip(table["video_id"], table["clip_id"], table["text"], caches):
        media = find_media(src, vid, cid)
        given = str(text).strip() if transcripts == "label" else None
        jobs.append(Job(str(vid), str(cid), None if media is None else str(media), given or None, str(cache),
                        EMPTY_TEXT_NOTE if given == "" else ""))
    return jobs


# ---- one clip (runs in a worker) ---------------------------------------------------------------

_PIPELINE: FeaturePipeline | None = None


def _init_worker(cfg: dict, threads: int, parent: int) -> None:
    """Build the pipeline once per worker process (models load lazily on its first clip)."""
    global _PIPELINE
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the workers
    if hasattr(signal, "pthread_sigmask"):  # started with SIGINT blocked (run_jobs): a pending one is dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    os.environ["DYNAFUSE_THREADS"] = str(threads)
    _PIPELINE = FeaturePipeline(cfg)


def die_with_parent(parent: int) -> None:
    """End this worker when its parent process `parent` dies, however it dies (SIGKILL included): Linux's
    PR_SET_PDEATHSIG, or elsewhere a thread that checks the parent every second. Without it a killed
    `dynafuse extract` leaves its workers blocked on the task pipe, each holding its models."""
    try:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) != 0:  # 1: PR_SET_PDEATHSIG
            raise OSError("prctl failed")
    except (OSError, AttributeError):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def save_clip(path: str | Path, feats: ClipFeatures, note: str = "", ids: tuple[str, str] = ("", "")) -> None:
    """One clip's features as an .npz (no pickled objects), atomically, with its (video_id, clip_id)."""
    t = feats.transcript
    info = {"source": t.source, "present": feats.present, "timings": feats.timings, "note": note,
            "lengths": {"audio": len(feats.audio), "vision": len(feats.vision)},
            "video_id": ids[0], "clip_id": ids[1]}
    arrays = {"audio": feats.audio.astype(np.float32), "vision": feats.vision.astype(np.float32),
              "text": np.array(t.text), "words": np.array([w.text for w in t.words], dtype=str),
              "starts": np.array([w.start for w in t.words], np.float32),
              "ends": np.array([w.end for w in t.words], np.float32), "info": np.array(json.dumps(info))}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def extract_clip(job: Job, pipeline: FeaturePipeline | None = None) -> dict:
    """Extract and cache one clip; a failure is returned as a reason, never raised (the run goes on)."""
    started = time.perf_counter()
    result = {"video_id": job.video_id, "clip_id": job.clip_id, "path": job.media or "", "reason": ""}
    try:
        if job.media is None:
            raise DataError(f"no media file Raw/{job.video_id}/{job.clip_id}.* (tried {', '.join(MEDIA_EXTENSIONS)})")
        save_clip(job.cache, (pipeline or _PIPELINE)(job.media, transcript=job.text), job.note,
                  (job.video_id, job.clip_id))
    except DynafuseError as e:
        result["reason"] = e.problem
    except Exception as e:  # noqa: BLE001 - one odd clip (a decoder or model crash) must not end a long run
        result["reason"] = f"{type(e).__name__}: {e}"
    result["seconds"] = time.perf_counter() - started
    return result


# ---- running many clips ------------------------------------------------------------------------

def run_jobs(jobs: list[Job], cfg: dict, workers: int, pipeline: FeaturePipeline) -> Iterator[dict]:
    """Results as clips finish: in this process for one worker, else in a pool of spawned processes."""
    if workers <= 1:
        for job in jobs:
            yield extract_clip(job, pipeline)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    before = {p.pid for p in multiprocessing.active_children()}
    # spawn, not fork: the parent has torch/onnx thread pools that a forked child would inherit broken
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(cfg, threads, os.getpid()))
    try:
        with _sigint_blocked():  # the workers start here; a Ctrl-C while they import must not reach them
            futures = [pool.submit(extract_clip, job) for job in jobs]
        for f in as_completed(futures):
            yield f.result()
    except BrokenProcessPool:
        pool.shutdown(wait=False, cancel_futures=True)
        raise DynafuseError("a worker process died (out of memory, or a crash inside a media library); the "
                            "finished clips are cached: rerun the command, perhaps with fewer --workers") from None
    except BaseException:  # Ctrl-C or an error here: drop the queue and the clips in flight, keep what is cached
        pool.shutdown(wait=False, cancel_futures=True)
        for p in multiprocessing.active_children():
            if p.pid not in before:  # this pool's workers: do not wait for their clips to finish
                p.terminate()
        raise
    pool.shutdown()


@contextmanager
def _sigint_blocked():
    """SIGINT blocked in this thread (and so in processes started meanwhile) until the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _check_cache(out: Path, settings: dict) -> None:
    """Cached clips are reused only for the same feature spec and transcript source."""
    path = out / "clips" / "settings.json"
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            before = None
        if before != json.loads(json.dumps(settings)):
            raise ConfigError("this folder holds clips extracted with other settings (feature spec or "
                              "transcripts); use another --out, or delete its clips/ folder to start over", out)
    else:
        atomic_write_json(path, settings)


# ---- assembling the dataset --------------------------------------------------------------------

def _split_order(table: dict[str, np.ndarray], keep: np.ndarray) -> np.ndarray:
    """The kept rows grouped by split (train, valid, test), each in label.csv order: contiguous per split."""
    return np.concatenate([np.nonzero(keep & (table["mode"] == s))[0] for s in SPLITS]).astype(np.int64)


def _fill_modality(out: Path, m: str, caches: list[Path], width: int, dim: int) -> np.ndarray:
    """OUT/{m}.npy (N, width, dim) float32 zero-padded, filled clip by clip; returns the lengths."""
    lengths = np.zeros(len(caches), np.int64)

    def write(tmp: Path) -> None:
        a = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(caches), max(width, 1), dim))
        for i, cache in enumerate(caches):
            with np.load(cache, allow_pickle=False) as z:
                x = z[m]
            if len(x) and x.shape[1] != dim:
                raise DataError(f"cached {m} features are {x.shape[1]}-d, the spec says {dim}", cache)
            lengths[i] = min(len(x), width)
            a[i, :lengths[i]] = x[:lengths[i]]
        a.flush()
        del a

    atomic_write(out / f"{m}.npy", write)
    atomic_save_npy(out / f"{m}_lengths.npy", lengths)
    return lengths


def _width(spec: dict, m: str, infos: list[dict]) -> int:
    """The padded length: the longest clip, at most one vector per token (aligned), max_frames (unaligned) or
    1 (utterance)."""
    layout = spec["layout"]
    cap = int(spec["text"]["max_len"]) if layout == "aligned" else (
        int(spec["max_frames"][m]) if layout == "unaligned" else 1)
    return max(1, min(cap, max(i["lengths"][m] for i in infos)))


def _clip_info(cache: Path, video_id: str, clip_id: str) -> dict:
    """A cached clip's transcript and info (the feature arrays are not read); it must hold this clip's ids."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            info = {**json.loads(str(z["info"])), "text": str(z["text"])}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise DataError(f"unreadable cached clip ({e}); delete it and rerun to extract it again", cache) from None
    held = (info.get("video_id"), info.get("clip_id"))
    if held != (video_id, clip_id):
        raise DataError(f"holds the features of clip {held[0]}/{held[1]}, not {video_id}/{clip_id}: their "
                        "ids collide in this file system's names", cache)
    return info


def _label_csv(path: Path, table: dict[str, np.ndarray], rows: np.ndarray, infos: list[dict]) -> list[str]:
    """Write the kept rows with the transcript each clip used to `path`; return the clips' notes, one line per kind."""
    uni = [c for c in UNI_COLUMNS.values() if c in table]
    notes: dict[str, list[str]] = {}
    out = []
    for r, info in zip(rows, infos):
        if info.get("note"):
            notes.setdefault(info["note"], []).append(f"{table['video_id'][r]}/{table['clip_id'][r]}")
        out.append([table["video_id"][r], table["clip_id"][r], info["text"], f"{table['label'][r]:g}",
                    *["" if np.isnan(table[c][r]) else f"{table[c][r]:g}" for c in uni], table["mode"][r],
                    info["source"]])
    atomic_write_csv(path, out, ["video_id", "clip_id", "text", "label", *uni, "mode", "transcript_source"],
                     lineterminator="\n")
    return [f"{len(ids)} clip(s): {note} (first: {ids[0]})" for note, ids in notes.items()]


def assemble(out: Path, table: dict[str, np.ndarray], spec: dict, meta: dict) -> dict:
    """Every cached clip of the table -> OUT/label.csv, OUT/{audio,vision}.npy (+ lengths), then OUT/meta.json."""
    (out / "meta.json").unlink(missing_ok=True)  # no meta.json: the arrays are being rewritten
    caches = clip_caches(out, table["video_id"], table["clip_id"])
    rows = _split_order(table, np.array([c.exists() for c in caches], dtype=bool))
    if not len(rows):
        raise DataError("no clip could be extracted (see errors.csv)", out / "errors.csv")
    kept = [caches[r] for r in rows]
    infos = [_clip_info(caches[r], str(table["video_id"][r]), str(table["clip_id"][r])) for r in rows]
    present = {}
    for m in MEDIA_MODALITIES:
        if spec.get(m):
            lengths = _fill_modality(out, m, kept, _width(spec, m, infos), int(spec[m]["dim"]))
            present[m] = int((lengths > 0).sum())
    notes = _label_csv(out / "label.csv", table, rows, infos)
    counts = {"clips": len(rows), **{s: int((table["mode"][rows] == s).sum()) for s in SPLITS},
              "present": present}
    atomic_write_json(out / "meta.json", {"format": FORMAT, "version": VERSION, **meta, "feature_spec": spec,
                                          "counts": counts, "notes": notes})
    return {**counts, "notes": notes}


# ---- the command -------------------------------------------------------------------------------

def _write_errors(out: Path, failures: list[dict]) -> None:
    atomic_write_csv(out / "errors.csv", failures, ERROR_COLUMNS, lineterminator="\n")


def extract_dataset(src: str | Path, out: str | Path, workers: int = 1, layout: str | None = None,
                    transcripts: str = "label", limit: int | None = None, value_range: float | None = None,
                    media: dict | None = None, progress: bool = True) -> dict:
    """Extract every clip of SRC into OUT (resumably), then assemble the dataset. Returns a summary."""
    started = time.perf_counter()
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if transcripts not in ("label", "asr"):
        raise ConfigError(f"--transcripts must be label or asr, not {transcripts!r}")
    table = read_source(src, limit)
    cfg = dict(media or {}, **({"layout": layout} if layout else {}))
    pipeline = FeaturePipeline(cfg)
    spec = pipeline.spec()
    vr = label_range([table["label"], *[table[c] for c in UNI_COLUMNS.values() if c in table]], value_range,
                     src / "label.csv", "--value-range")
    if transcripts == "asr" or (table["text"] == "").any():  # fail now, not once per clip
        if not pipeline.asr_model:
            raise ConfigError("some clips need ASR transcripts, but the media config switches ASR off",
                              src / "label.csv")
        check_asr(pipeline.asr_model)
    _check_cache(out, {"feature_spec": spec, "transcripts": transcripts, "asr": pipeline.asr_model,
                       "min_logprob": pipeline.min_logprob, "clip_cache": CACHE_LAYOUT})
    jobs = make_jobs(src, out, table, transcripts)
    todo = [j for j in jobs if not Path(j.cache).exists()]
    failures = []
    with show_progress("extracting", len(jobs), "clips", done=len(jobs) - len(todo), enabled=progress) as bar:
        for r in run_jobs(todo, pipeline.cfg, workers, pipeline):
            if r["reason"]:
                failures.append(r)
                _write_errors(out, failures)  # kept up to date: a long run can be watched
            bar.advance(1, f"{r['video_id']}/{r['clip_id']}" + (" failed" if r["reason"] else ""))
    _write_errors(out, failures)
    meta = {"name": src.name, "source": str(src), "value_range": vr, "transcripts": transcripts,
            "asr_model": pipeline.asr_model}
    counts = assemble(out, table, spec, meta)
    return {"out": str(out), "clips": len(jobs), "ok": counts["clips"], "failed": len(failures),
            "cached": len(jobs) - len(todo), "extracted": len(todo) - len(failures), "counts": counts,
            "seconds": time.perf_counter() - started, "notes": counts["notes"], "failures": failures}


def print_summary(summary: dict) -> None:
    from rich.console import Console

    c = Console()
    counts = summary["counts"]
    c.print(f"clips ok {summary['ok']} / failed {summary['failed']} of {summary['clips']} "
            f"({summary['cached']} cached, {summary['extracted']} extracted now) in {summary['seconds']:.1f} s")
    c.print(f"splits: train {counts['train']}, valid {counts['valid']}, test {counts['test']}; "
            + ", ".join(f"{m} present in {n}" for m, n in counts["present"].items()))
    for note in summary["notes"]:
        c.print(f"note: {note}")
    if summary["failed"]:
        c.print(f"failures are listed in {Path(summary['out']) / 'errors.csv'}; rerun the command to retry them")
    c.print(f"wrote {summary['out']} (train on it with --dataset path:{summary['out']})")
