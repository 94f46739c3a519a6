"""`dynafuse extract` on a tiny MMSA-FET folder, the `path:` reader, resume, and training on the result."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dynafuse.cli import main
from dynafuse.data import load_dataset
from dynafuse.data.text import tokenize
from dynafuse.errors import ConfigError, DataError
from media_clips import SENTENCE


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


def test_path_reader_gives_memory_mapped_splits(extracted):
    _, out, _ = extracted
    b = load_dataset(f"path:{out}")
    assert {s: len(x) for s, x in b.splits.items()} == {"train": 2, "valid": 1, "test": 1}
    train = b.splits["train"]
    assert isinstance(train.features["audio"], np.memmap) and train.features["vision"].shape[2] == 1441
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
