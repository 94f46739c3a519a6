"""`dynafuse extract` on a tiny MMSA-FET folder, the `path:` reader, resume, and training on the result."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dynafuse.cli import main
from dynafuse.data import load_dataset
from dynafuse.data.core import DiskArray
from dynafuse.data.text import tokenize
from dynafuse.errors import ConfigError, DataError
from media_clips import SENTENCE, make_source


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_extract_writes_a_dataset_and_records_failures(extracted):
    src, out, summary = extracted
    assert (summary["clips"], summary["ok"], summary["failed"], summary["cached"]) == (5, 4, 1, 0)
    errors = read_csv(out / "errors.csv")
    assert [(e["video_id"], e["clip_id"]) for e in errors] == [("v2", "2")]
    assert "cannot decode" in errors[0]["reason"] and errors[0]["path"].endswith("Raw/v2/2.mp4")
    rows = read_csv(out / "label.csv")
    assert [(r["video_id"], r["clip_id"], r["mode"]) for r in rows] == [
        ("v1", "1", "train"), ("v2", "3", "train"), ("v1", "2", "valid"), ("v2", "1", "test")]  # grouped by split
    assert rows[0]["text"] == SENTENCE and rows[0]["transcript_source"] == "given+asr-timing"
    assert rows[3]["transcript_source"] == "asr" and rows[3]["text"] == ""  # blank label text, silent clip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "dynafuse-features" and meta["value_range"] == 3.0
    assert meta["counts"] == {"clips": 4, "train": 2, "valid": 1, "test": 1, "present": {"audio": 3, "vision": 2}}
    assert any("empty label text" in n and "v2/1" in n for n in meta["notes"])
    assert meta["feature_spec"]["audio"]["extractor"] == "egemaps"
    # aligned: every present modality has exactly one vector per text token
    _, tokens = tokenize([r["text"] for r in rows], "minilm", 50)
    for m, present in (("audio", [1, 1, 1, 0]), ("vision", [1, 0, 0, 1])):
        lengths = np.load(out / f"{m}_lengths.npy")
        np.testing.assert_array_equal(lengths, tokens * present)
        feats = np.load(out / f"{m}.npy")
        assert feats.dtype == np.float32 and feats.shape[:2] == (4, tokens.max())
        assert not feats[np.arange(feats.shape[1])[None, :] >= lengths[:, None]].any()  # zero padding


def test_path_reader_leaves_the_arrays_on_disk(extracted):
    _, out, _ = extracted
    b = load_dataset(f"path:{out}")
    assert {s: len(x) for s, x in b.splits.items()} == {"train": 2, "valid": 1, "test": 1}
    train = b.splits["train"]
    assert isinstance(train.features["audio"], DiskArray) and train.features["vision"].shape[2] == 1441
    assert list(train.ids) == ["v1_1", "v2_3"] and list(train.raw_text) == [SENTENCE, SENTENCE]
    np.testing.assert_allclose(train.y, [2.4, -0.6])
    np.testing.assert_allclose(train.unimodal["text"], [2.0, 0.0])
    assert b.value_range == 3.0 and "text" not in train.features  # text is encoded at train time
    assert b.feature_spec["layout"] == "aligned" and b.feature_spec["text"]["max_len"] == 50


def test_rerun_resumes_from_the_cached_clips(extracted, tmp_path, capsys):
    src, out, _ = extracted
    resumed = tmp_path / "out"
    shutil.copytree(out, resumed)
    (resumed / "clips" / "v1" / "2.npz").unlink()  # as if the run was killed while this clip was in flight
    kept = resumed / "clips" / "v1" / "1.npz"
    before = kept.stat().st_mtime_ns
    assert main(["extract", str(src), "--out", str(resumed)]) == 0
    printed = capsys.readouterr().out
    assert "clips ok 4 / failed 1 of 5 (3 cached, 1 extracted now)" in printed
    assert kept.stat().st_mtime_ns == before and (resumed / "clips" / "v1" / "2.npz").exists()
    np.testing.assert_array_equal(np.load(resumed / "vision.npy"), np.load(out / "vision.npy"))
    from dynafuse.media.extract import extract_dataset

    with pytest.raises(ConfigError, match="other settings"):  # a cache made another way is never mixed in
        extract_dataset(src, resumed, layout="unaligned", progress=False)


def test_train_on_extracted_dataset(extracted, tmp_path, monkeypatch):
    _, out, _ = extracted
    monkeypatch.setenv("DYNAFUSE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"path:{out}", "--model", "early_fusion", "--out", str(run),
                 "train.max_epochs=1", "train.progress=false", "data.batch_size=4"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["input_dims"] == {"text": 384, "audio": 25, "vision": 1441}
    assert info["feature_spec"]["layout"] == "aligned" and info["feature_spec"]["vision"]["extractor"] == "face"
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] == 1
    # aligned features hold one vector per token of the extraction tokenizer: another max_len is refused
    assert main(["train", "--dataset", f"path:{out}", "--model", "early_fusion", "--out", str(tmp_path / "r2"),
                 "train.max_epochs=1", "data.text.max_len=40"]) == 2


def test_bad_label_csv_is_a_clear_error(tmp_path):
    from dynafuse.media.extract import extract_dataset

    with pytest.raises(DataError, match="no such file") as e:
        extract_dataset(tmp_path, tmp_path / "out", progress=False)
    assert "label.csv" in str(e.value)
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,mode\nv1,1,hi,train\n")
    with pytest.raises(DataError, match=r"missing columns \['label'\]"):
        extract_dataset(tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,label,mode\nv1,1,hi,7,train\n")
    with pytest.raises(DataError, match="outside"):
        extract_dataset(tmp_path, tmp_path / "out", value_range=3, progress=False)


def test_path_reader_names_the_bad_file(extracted, tmp_path):
    _, out, _ = extracted
    bad = tmp_path / "bad"
    shutil.copytree(out, bad, ignore=shutil.ignore_patterns("clips"))
    data = (bad / "vision.npy").read_bytes()
    (bad / "vision.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated") as e:
        load_dataset(f"path:{bad}")
    assert "vision.npy" in str(e.value)
    (bad / "vision.npy").unlink()
    with pytest.raises(DataError, match="no such file") as e:
        load_dataset(f"path:{bad}")
    assert "vision.npy" in str(e.value)
    (bad / "meta.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="dynafuse extract") as e:
        load_dataset(f"path:{bad}")
    assert "meta.json" in str(e.value)
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(f"path:{tmp_path / 'nothing'}")


# ---- ids -> file names (issue 15, item 3) --------------------------------------------------------------

TRICKY_IDS = ["视频一", "视频二", "1", "a/b", "a%2Fb", "a_b", "..", ".", "", "%", "~", "a~b", "CON", "con.txt",
              " x", "x ", "tab\there", "x" * 300, "x" * 301, "Clip", "clip", "Ä", "A\u0308", "dots...", "é/../é"]


def test_every_id_gets_its_own_file_name(tmp_path):
    """path_part is one to one and gives names this file system holds (one file each, read back)."""
    from dynafuse.media.extract import clip_caches, path_part

    names = [path_part(i) for i in TRICKY_IDS]
    assert len(set(names)) == len(TRICKY_IDS)
    assert path_part("视频一") == "视频一" and path_part("Clip") == "Clip"  # Unicode and case kept
    for i, n in zip(TRICKY_IDS, names):
        assert "/" not in n and n not in (".", "..") and len(n.encode()) <= 200
        (tmp_path / n).write_text(i)
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == sorted(TRICKY_IDS)
    # on a case-insensitive or normalising file system (macOS, Windows) too: no two paths fold together
    paths = clip_caches(tmp_path, ["v"] * len(TRICKY_IDS), TRICKY_IDS)
    folded = {str(p).casefold() for p in paths}
    import unicodedata

    assert len({unicodedata.normalize("NFC", p) for p in folded}) == len(TRICKY_IDS)
    assert all(p.parent == tmp_path / "clips" / "v" for p in paths)  # nothing escapes its folder
    videos = clip_caches(tmp_path, ["Raw", "raw", "视频一", "视频二", ".."], ["1"] * 5)
    assert len({str(p).casefold() for p in videos}) == 5


@pytest.fixture(scope="module")
def colliding(media_clips, tmp_path_factory):
    """Ids that collided on disk before: the same clip id in two Chinese-named videos, ids that differ in case
    only, an id with a slash (a sub-folder of Raw/v) and its escaped twin. Faces tell the clips apart."""
    from dynafuse.media.extract import extract_dataset

    root = tmp_path_factory.mktemp("ids")
    src = root / "src"
    layout = {("视频一", "1"): "speech_face", ("视频二", "1"): "no_face", ("v", "Clip"): "no_face",
              ("v", "clip"): "speech_face", ("v", "a/b"): "speech_face", ("v", "a%2Fb"): "no_face"}
    rows = [["video_id", "clip_id", "text", "label", "mode"]]
    for n, ((vid, cid), clip) in enumerate(layout.items()):
        target = src / "Raw" / vid / f"{cid}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(media_clips[clip], target)
        rows.append([vid, cid, f"clip number {n}", str(n - 2.5), ["train", "valid", "test"][n % 3]])
    with open(src / "label.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    media = {"audio": None, "asr": {"model": None}}  # faces only: quick, and enough to tell clips apart
    summary = extract_dataset(src, root / "out", media=media, progress=False)
    return src, root / "out", layout, media, summary


def test_colliding_ids_keep_their_own_features(colliding):
    _, out, layout, _, summary = colliding
    assert summary["ok"] == 6 and summary["failed"] == 0
    assert len(list((out / "clips").rglob("*.npz"))) == 6
    rows = read_csv(out / "label.csv")
    lengths = np.load(out / "vision_lengths.npy")
    for row, n in zip(rows, lengths):
        clip = layout[(row["video_id"], row["clip_id"])]
        assert (n > 0) == (clip == "speech_face"), (row, n)  # its own clip's face, not another's
        number = list(layout).index((row["video_id"], row["clip_id"]))
        assert row["text"] == f"clip number {number}"  # and its own transcript


def test_a_collision_that_remains_is_an_error(colliding, tmp_path):
    """A file system that merged two names (simulated: one clip's cache holds the other's features) is refused."""
    from dynafuse.media.extract import clip_caches, extract_dataset

    src, out, _, media, _ = colliding
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    first, second = clip_caches(copy, ["视频一", "视频二"], ["1", "1"])
    shutil.copy(first, second)
    with pytest.raises(DataError, match="holds the features of clip 视频一/1, not 视频二/1") as e:
        extract_dataset(src, copy, media=media, progress=False)
    assert str(second) in str(e.value)


# ---- a killed extract ends its workers (issue 15, item 17) -------------------------------------------------

def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT", "Ctrl-C"])
def test_killed_extract_leaves_no_worker(media_clips, tmp_path, how):
    """SIGKILL / SIGTERM of the parent, SIGINT to it alone, or Ctrl-C (SIGINT to its whole process group):
    every process it started is gone soon after, none waits on the task pipe."""
    import signal
    import subprocess
    import sys
    import time

    src = make_source(tmp_path / "src", media_clips)
    p = subprocess.Popen([sys.executable, "-m", "dynafuse.cli", "extract", str(src), "--out", str(tmp_path / "out"),
                          "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(children(p.pid)) < 3 and time.monotonic() < deadline:  # 2 workers + the resource tracker
            time.sleep(0.2)
        started = children(p.pid)
        assert len(started) >= 3, "the workers did not start"
        time.sleep(1.0)  # let them get into their first clip
        if how == "Ctrl-C":
            os.killpg(p.pid, signal.SIGINT)
        else:
            p.send_signal(getattr(signal, how))
        _, err = p.communicate(timeout=60)
        deadline = time.monotonic() + 20
        while any(alive(c) for c in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [c for c in started if alive(c)], f"{how}: processes left alive"
        if how in ("SIGINT", "Ctrl-C"):
            assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
