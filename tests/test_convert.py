"""`dynafuse convert`: any reader's data -> the on-disk folder `path:DIR` reads, and training from it.

The pickles are small synthetic files the tests build with the exact structure of each format (test_formats.py);
the registered datasets are the real ones in the data folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynafuse.cli import main
from dynafuse.data import core
from dynafuse.data.convert import convert, convert_settings, exact_label
from dynafuse.data.core import DiskArray, SplitDataset
from dynafuse.data.registry import load_dataset
from dynafuse.errors import ConfigError, DataError
from dynafuse.training import build_config, train
from dynafuse.training.run import prepare_data
from test_formats import SPLITS, dump, misa_rows, mmsa_split, mult_data

QUICK = ["train.progress=false", "train.max_epochs=2"]


@pytest.fixture
def mmsa_file(tmp_path):
    """An MMSA unaligned_50.pkl of MOSEI's dims (768/74/35, lengths 50/500/375 cut to 50/60/40 to stay small):
    40/12/12 samples, ids unique over the splits (as MMSA's are)."""
    rng = np.random.default_rng(0)
    data = {}
    for s, n in zip(SPLITS, (40, 12, 12)):
        data[s] = mmsa_split(rng, n, (768, 74, 35), (50, 60, 40), rng.integers(1, 51, n),
                             np.round(rng.uniform(-3, 3, n), 1), video=f"{s}-",
                             stored_lengths=(rng.integers(1, 61, n), rng.integers(0, 41, n)))
    return dump(data, tmp_path / "unaligned_50.pkl")


def converted(src: str, out: Path, *overrides: str) -> Path:
    options, value_range, data_dir = convert_settings(src, list(overrides))
    convert(src, out, data_dir, options, value_range, progress=False)
    return out


def same_bundles(a, b) -> None:
    """The same samples, labels, transcripts and features (b's arrays may be wider: zero padding past lengths);
    b, a converted folder, knows its train statistics (the very float32 values a's are) and that it is finite."""
    assert a.value_range == b.value_range and a.notes == b.notes and a.input_dims() == b.input_dims()
    stats = a.feature_stats()
    assert b.splits["train"].stats.keys() == stats.keys() and all(s.known_finite for s in b.splits.values())
    for m, (mean, std) in stats.items():
        assert np.array_equal(mean, b.splits["train"].stats[m][0]) and np.array_equal(std, b.splits["train"].stats[m][1])
    for s in SPLITS:
        x, y = a.splits[s], b.splits[s]
        assert x.ids.tolist() == y.ids.tolist() and np.array_equal(x.y, y.y)
        assert (x.raw_text is None) == (y.raw_text is None)
        assert x.raw_text is None or x.raw_text.tolist() == y.raw_text.tolist()
        assert x.unimodal.keys() == y.unimodal.keys()
        for m in x.unimodal:
            assert np.array_equal(x.unimodal[m], y.unimodal[m], equal_nan=True)
        assert x.features.keys() == y.features.keys()
        for m in x.features:
            assert isinstance(y.features[m], DiskArray)  # left on disk
            f, g = np.asarray(x.features[m]), np.asarray(y.features[m])
            assert np.array_equal(x.lengths[m], y.lengths[m])
            assert np.array_equal(g[:, :f.shape[1]], f) and not g[:, f.shape[1]:].any()


def test_mmsa_pickle_and_its_folder_train_to_the_same_metrics(mmsa_file, tmp_path):
    folder = converted(f"mmsa:{mmsa_file}", tmp_path / "folder", "data.options.allow_pickle=true")
    same_bundles(load_dataset(f"mmsa:{mmsa_file}", allow_pickle=True), load_dataset(f"path:{folder}"))
    a = train(build_config("daf", f"mmsa:{mmsa_file}", [*QUICK, "data.options.allow_pickle=true"]), tmp_path / "a")
    b = train(build_config("daf", f"path:{folder}", QUICK), tmp_path / "b")
    assert a == b
    for f in ("metrics.json", "predictions.csv", "ordinal.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    info = [json.loads((tmp_path / r / "run.json").read_text()) for r in "ab"]
    assert info[0]["input_dims"] == info[1]["input_dims"] == {"text": 768, "audio": 74, "vision": 35}


def test_a_run_reads_rows_never_whole_arrays(mmsa_file, tmp_path, monkeypatch):
    """Loading (checks), the train statistics and an epoch of batches read blocks of rows, never a whole array;
    data.limit keeps the folder on disk."""
    folder = converted(f"mmsa:{mmsa_file}", tmp_path / "folder", "data.options.allow_pickle=true")
    reads = []
    real_read = DiskArray._read

    def spy(self, index, width=None):
        reads.append(len(index))
        return real_read(self, index, width)

    monkeypatch.setattr(DiskArray, "_read", spy)
    monkeypatch.setattr(core, "STATS_ROWS", 8)
    monkeypatch.setattr(core, "CHUNK_BYTES", 1)  # one row per block
    cfg = build_config("early_fusion", f"path:{folder}", [*QUICK, "data.limit=30", "data.batch_size=8"])
    bundle = prepare_data(cfg)
    assert all(isinstance(a, DiskArray) for s in bundle.splits.values() for a in s.features.values())
    assert len(bundle.splits["train"]) == 30
    bundle.feature_stats()
    ds = SplitDataset(bundle.splits["train"])
    for rows in np.array_split(np.random.default_rng(0).permutation(len(ds)), 4):
        ds.collate(list(rows))
    assert reads and max(reads) <= 8  # the splits hold 30 rows each


def test_disk_array_indexes_like_numpy(tmp_path):
    a = np.arange(7 * 5 * 3, dtype=np.float32).reshape(7, 5, 3)
    np.save(tmp_path / "a.npy", a)
    d = DiskArray.open(tmp_path / "a.npy")
    assert (d.shape, d.dtype, d.ndim, len(d)) == (a.shape, a.dtype, 3, 7)
    keys = [3, -1, slice(2, 5), slice(None, None, 2), slice(5, 2), np.array([6, 0, 0, 3]), np.array([], int),
            a[:, 0, 0] > 40, (np.array([4, 2, 3]), slice(None, 2)), (np.array([1, 2]), slice(1, 4)), (2, slice(0, 3)),
            (slice(1, 3), slice(None, 1)), (np.array([5]), slice(None, 9))]
    for k in keys:
        assert np.array_equal(np.asarray(d[k]), a[k]), k
    assert isinstance(d[2:5], DiskArray) and np.array_equal(np.asarray(d[2:5][1:]), a[3:5])  # views of views
    assert np.array_equal(np.asarray(d, dtype=np.float64), a.astype(np.float64))
    with pytest.raises(IndexError):
        d[np.array([7])]
    (tmp_path / "cut.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-20])
    with pytest.raises(DataError, match="truncated"):
        DiskArray.open(tmp_path / "cut.npy")
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    with pytest.raises(DataError, match="Fortran"):
        DiskArray.open(tmp_path / "f.npy")


def test_labels_read_back_to_the_same_float32():
    values = np.random.default_rng(0).standard_normal(20000).astype(np.float32) * 3
    values = np.concatenate([values, np.float32([-3, 0, 1.4, 2.2, 1e-7, 3.4e38, np.nan])])
    for v in values:
        text = exact_label(v)
        assert (text == "") if np.isnan(v) else np.float32(float(text)) == v
    assert exact_label(np.float32(-1.4)) == "-1.4"


def test_done_once_and_other_data_refused(mmsa_file, tmp_path, capsys):
    out = tmp_path / "folder"
    args = ["convert", f"mmsa:{mmsa_file}", "--out", str(out), "--allow-pickle"]
    assert main(args[:-1]) == 2  # a pickle needs the opt-in
    assert "refusing to load a pickle" in capsys.readouterr().err
    assert main(args) == 0
    assert "converted" in capsys.readouterr().out
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 0  # the same source: done, nothing written
    assert "already holds" in capsys.readouterr().out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([*args, "data.value_range=3"]) == 2  # the same file with other options is other data
    assert "holds a conversion of mmsa:" in capsys.readouterr().err
    data = bytearray(mmsa_file.read_bytes())
    data[-200] ^= 1  # same size, other contents
    mmsa_file.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256 differs"):
        converted(f"mmsa:{mmsa_file}", out, "data.options.allow_pickle=true")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"holds other data \(notes.txt\)"):
        converted("mosi", tmp_path / "mine")
    with pytest.raises(ConfigError, match="already in the format convert writes"):
        converted(f"path:{out}", tmp_path / "again")
    with pytest.raises(ConfigError, match="convert takes only data.options"):
        convert_settings("mosi", ["train.lr=0.1"])


def test_unfinished_conversion_is_done_again(mmsa_file, tmp_path):
    out = tmp_path / "folder"
    out.mkdir()
    (out / "audio.npy").write_bytes(b"half")  # a killed run: no meta.json
    (out / ".vision.npy.x1.tmp").write_bytes(b"")
    converted(f"mmsa:{mmsa_file}", out, "data.options.allow_pickle=true")
    assert not (out / ".vision.npy.x1.tmp").exists()
    same_bundles(load_dataset(f"mmsa:{mmsa_file}", allow_pickle=True), load_dataset(f"path:{out}"))


def test_mult_and_misa(tmp_path):
    mult = dump(mult_data(np.random.default_rng(2)), tmp_path / "mosei_senti_data.pkl")
    folder = converted(f"mult:{mult}", tmp_path / "mult", "data.options.allow_pickle=true")
    same_bundles(load_dataset(f"mult:{mult}", allow_pickle=True), load_dataset(f"path:{folder}"))
    assert json.loads((folder / "meta.json").read_text())["raw_text"] is False  # MulT has no transcripts
    misa = tmp_path / "misa"
    misa.mkdir()
    rng = np.random.default_rng(3)
    for name, n in (("train.pkl", 3), ("dev.pkl", 4), ("test.pkl", 5)):  # the widest samples: 4, 5, 6 steps
        dump([(feats, y, f"{name}-{sid}") for feats, y, sid in misa_rows(rng, n)], misa / name)
    folder = converted(f"misa:{misa}", tmp_path / "misa-folder", "data.options.allow_pickle=true")
    meta = json.loads((folder / "meta.json").read_text())
    assert [f["path"] for f in meta["source"]["files"]] == [str(misa / f) for f in ("train.pkl", "dev.pkl",
                                                                                   "test.pkl")]
    same_bundles(load_dataset(f"misa:{misa}", allow_pickle=True), load_dataset(f"path:{folder}"))


@pytest.mark.slow
def test_registered_datasets_convert_and_train_the_same(data_dir, tmp_path):
    folder = converted("simsv2-scores", tmp_path / "simsv2-scores", f"data.data_dir={data_dir}")
    same_bundles(load_dataset("simsv2-scores", data_dir), load_dataset(f"path:{folder}"))  # NaN labels, no face
    folder = converted("mosi", tmp_path / "mosi", f"data.data_dir={data_dir}")
    files = json.loads((folder / "meta.json").read_text())["source"]["files"]
    assert [Path(f["path"]).name for f in files] == ["label.csv", "utterance_features.npz"]
    more = [*QUICK, "data.limit=64", f"data.data_dir={data_dir}"]
    a = train(build_config("early_fusion", "mosi", more), tmp_path / "a")
    b = train(build_config("early_fusion", f"path:{folder}", more), tmp_path / "b")
    assert a == b


def test_a_converted_folder_trains_with_its_source_preset(data_dir, tmp_path):
    """MOSEI's own budget (datasets/mosei.yaml, and the model presets' mosei sections) follows it to the folder;
    the reader options were applied when converting."""
    folder = converted("mosei", tmp_path / "mosei", f"data.data_dir={data_dir}")
    for model in ("early_fusion", "dpdf_lq"):
        a, b = build_config(model, "mosei"), build_config(model, f"path:{folder}")
        assert a.train == b.train and a.data.batch_size == b.data.batch_size == 64
    mosi = converted("mosi", tmp_path / "mosi", f"data.data_dir={data_dir}")  # its preset sets a reader option
    assert build_config("early_fusion", f"path:{mosi}").data.options.modalities is None
