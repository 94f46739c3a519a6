"""Data layer: the registry on the real benchmark data, clear errors on bad data, and batching.

The registry tests read the real files in the shared data folder (skipped when it is absent); the
bad-data tests build broken copies in a temporary folder; the batching tests use small synthetic arrays.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynafuse.data import Split, SplitDataset, load_dataset
from dynafuse.data.core import pad_sequences
from dynafuse.errors import ConfigError, DataError

COLUMNS = ["video_id", "clip_id", "text", "text_en", "label", "label_T", "label_A", "label_V", "mode"]
NPZ_KEYS = ("ids", "transcript", "label", "split_std", "split_bclstm", "text", "audio", "video")


def sizes(bundle) -> tuple[int, int, int]:
    return tuple(len(bundle.splits[s]) for s in ("train", "valid", "test"))


def video_ids(ids) -> set[str]:
    return {str(i).rsplit("_", 1)[0] for i in ids}


@pytest.fixture(scope="module")
def bundles(data_dir):
    """Each registered dataset loaded once from the real data (text stays raw: nothing is encoded)."""
    cache = {}

    def get(name, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = load_dataset(name, data_dir, **options)
        return cache[key]

    return get


# --------------------------------------------------------------------------- registry on the real data


def test_mosi_official_split(bundles):
    b = bundles("mosi")
    assert sizes(b) == (1284, 229, 686)
    assert b.value_range == 3.0
    assert b.input_dims() == {"audio": 73}  # text comes as transcripts; the leaky vectors are not used
    for s in b.splits.values():
        assert s.raw_text is not None and len(s.raw_text) == len(s)
        assert all(len(str(t).strip()) > 0 for t in s.raw_text)
        assert s.y.min() >= -3 and s.y.max() <= 3
        assert s.features["audio"].shape == (len(s), 1, 73)
        assert np.isfinite(s.features["audio"]).all()
        assert (s.lengths["audio"] == 1).all()
    ids = np.concatenate([s.ids for s in b.splits.values()])
    assert len(set(ids)) == len(ids) == 2199


def test_mosi_refuses_leaky_modalities(data_dir):
    with pytest.raises(ConfigError, match=r"(?i)leak") as e:
        load_dataset("mosi", data_dir, modalities=["text", "vision"])
    assert "mosi-bclstm" in str(e.value)


def test_mosi_bclstm_split(bundles):
    b = bundles("mosi-bclstm")
    train, valid, test = (b.splits[s] for s in ("train", "valid", "test"))
    assert len(train) + len(valid) == 1447
    assert len(test) == 752
    assert len(valid) > 0
    assert b.input_dims() == {"audio": 73, "vision": 100}
    assert b.value_range == 3.0
    # valid is carved from train by video: no speaker/video in both
    assert not video_ids(train.ids) & video_ids(valid.ids)
    for s in (train, valid, test):
        assert s.raw_text is not None and all(len(str(t).strip()) > 0 for t in s.raw_text)
        assert s.y.min() >= -3 and s.y.max() <= 3


def test_mosi_bclstm_is_deterministic(data_dir, bundles):
    again = load_dataset("mosi-bclstm", data_dir)
    np.testing.assert_array_equal(again.splits["valid"].ids, bundles("mosi-bclstm").splits["valid"].ids)
    np.testing.assert_array_equal(again.splits["train"].ids, bundles("mosi-bclstm").splits["train"].ids)


def test_mosi_bclstm_cnn_text_option(data_dir):
    b = load_dataset("mosi-bclstm", data_dir, text_source="cnn")
    assert b.input_dims() == {"text": 100, "audio": 73, "vision": 100}
    with pytest.raises(ConfigError):
        load_dataset("mosi-bclstm", data_dir, text_source="bogus")


def test_mosei_split(bundles):
    b = bundles("mosei")
    assert sizes(b) == (16274, 1861, 4653)
    assert b.value_range == 3.0
    y = np.concatenate([s.y for s in b.splits.values()])
    assert y.min() >= -3 and y.max() <= 3


@pytest.mark.parametrize("name, expected", [("sims", (1368, 456, 457)), ("simsv2", (2722, 647, 1034))])
def test_sims_splits(bundles, name, expected):
    b = bundles(name)
    assert sizes(b) == expected
    assert b.value_range == 1.0
    y = np.concatenate([s.y for s in b.splits.values()])
    assert y.min() >= -1 and y.max() <= 1


def test_simsv2_unimodal_labels(bundles):
    b = bundles("simsv2")
    n_nan = 0
    for s in b.splits.values():
        assert set(s.unimodal) == {"text", "audio", "vision"}
        for m, v in s.unimodal.items():
            assert v.shape == (len(s),)
            known = v[~np.isnan(v)]
            assert known.min() >= -1 and known.max() <= 1
            n_nan += int(np.isnan(v).sum())
    assert n_nan == 3 * 8  # 8 rows have unknown unimodal labels (NaN), allowed


def test_sims_uses_english_text_by_default(bundles, data_dir):
    b = bundles("sims")
    cjk = re.compile("[\u4e00-\u9fff]")
    texts = [str(t) for s in b.splits.values() for t in s.raw_text]
    assert not any(cjk.search(t) for t in texts)
    assert sum(t.isascii() for t in texts) > 0.99 * len(texts)
    with open(data_dir / "sims" / "label.csv", newline="", encoding="utf-8") as f:
        rows = {f"{r['video_id']}_{r['clip_id']}": r for r in csv.DictReader(f)}
    s = b.splits["train"]
    assert [rows[i]["text_en"].strip() for i in s.ids[:20]] == list(s.raw_text[:20])
    chinese = bundles("sims", text_column="text")
    assert any(cjk.search(str(t)) for t in chinese.splits["train"].raw_text)


def test_unknown_dataset(data_dir):
    with pytest.raises(ConfigError):
        load_dataset("nope", data_dir)


# --------------------------------------------------------------------------- bad data -> DataError naming the file


def write_csv(path: Path, rows: list[dict], columns=COLUMNS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def rows(n=4, **override) -> list[dict]:
    out = [dict(video_id=f"vid{i // 2}", clip_id=str(i), text=f"clip {i} is fine", text_en=f"clip {i} is fine",
                label=str(i - 1.5), label_T="", label_A="", label_V="", mode=["train", "valid", "test", "train"][i % 4])
           for i in range(n)]
    for i, r in override.items():
        out[int(i[1:])].update(r)
    return out


def expect_data_error(path: Path, name="mosi", data_dir=None, **options) -> DataError:
    with pytest.raises(DataError) as e:
        load_dataset(name, data_dir if data_dir is not None else path.parents[1], **options)
    assert str(path) in str(e.value), str(e.value)
    return e.value


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        load_dataset("mosi", missing)
    assert str(missing) in str(e.value)


def test_missing_label_csv(tmp_path):
    (tmp_path / "mosi").mkdir()
    expect_data_error(tmp_path / "mosi" / "label.csv")


def test_missing_column(tmp_path):
    p = write_csv(tmp_path / "mosi" / "label.csv", rows(), columns=[c for c in COLUMNS if c != "label"])
    err = expect_data_error(p)
    assert "label" in str(err)


def test_non_number_label(tmp_path):
    p = write_csv(tmp_path / "mosi" / "label.csv", rows(r2={"label": "very good"}))
    err = expect_data_error(p)
    assert "very good" in str(err)


def test_empty_transcript(tmp_path):
    p = write_csv(tmp_path / "mosi" / "label.csv", rows(r1={"text": "  "}))
    assert "empty" in str(expect_data_error(p))


def test_duplicate_ids(tmp_path):
    p = write_csv(tmp_path / "mosi" / "label.csv", rows(r3={"video_id": "vid0", "clip_id": "0"}))
    assert "duplicate" in str(expect_data_error(p))


def test_bad_mode(tmp_path):
    p = write_csv(tmp_path / "mosi" / "label.csv", rows(r1={"mode": "dev"}))
    assert "dev" in str(expect_data_error(p))


def test_truncated_npz(tmp_path, data_dir):
    folder = tmp_path / "mosi"
    folder.mkdir()
    shutil.copyfile(data_dir / "mosi" / "label.csv", folder / "label.csv")
    raw = (data_dir / "mosi" / "utterance_features.npz").read_bytes()
    npz = folder / "utterance_features.npz"
    npz.write_bytes(raw[: len(raw) // 2])
    expect_data_error(npz)
    expect_data_error(npz, name="mosi-bclstm")


def test_corrupt_compressed_npz(tmp_path, data_dir):
    """A complete npz whose audio member has a broken deflate stream (bad block type), not just a bad CRC."""
    import zipfile

    folder = tmp_path / "mosi"
    folder.mkdir()
    shutil.copyfile(data_dir / "mosi" / "label.csv", folder / "label.csv")
    src = data_dir / "mosi" / "utterance_features.npz"
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("audio.npy")
    if info.compress_type != zipfile.ZIP_DEFLATED:
        pytest.skip("the real npz is not compressed")
    start = info.header_offset + 30 + int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    raw[start:start + 16] = b"\xff" * 16  # deflate block type 11: invalid
    npz = folder / "utterance_features.npz"
    npz.write_bytes(bytes(raw))
    expect_data_error(npz)


def small_features(folder: Path, n: int = 6, lengths: dict[str, int] | None = None, nan_audio: bool = False) -> Path:
    """A synthetic utterance_features.npz with the real file's keys and dtypes, plus a matching label.csv."""
    rng = np.random.default_rng(0)
    ids = np.array([f"vid{i // 2}_{i}" for i in range(n)])
    modes = np.array(["train", "valid", "test"] * (n // 3 + 1))[:n]
    z = {
        "ids": ids,
        "transcript": np.array([f"CLIP {i} IS FINE" for i in range(n)]),
        "label": np.linspace(-3, 3, n).astype(np.float32),
        "split_std": modes,
        "split_bclstm": np.where(modes == "valid", "train", modes),
        "text": rng.standard_normal((n, 100)).astype(np.float32),
        "audio": rng.standard_normal((n, 73)).astype(np.float32),
        "video": rng.standard_normal((n, 100)).astype(np.float32),
    }
    for k, m in (lengths or {}).items():
        z[k] = z[k][:m]
    if nan_audio:
        z["audio"][1, 5] = np.nan
    write_csv(folder / "label.csv", [dict(video_id=i.rsplit("_", 1)[0], clip_id=i.rsplit("_", 1)[1], text=t,
                                          text_en=t, label=str(y), mode=m)
                                     for i, t, y, m in zip(ids, z["transcript"], z["label"], modes)])
    np.savez(folder / "utterance_features.npz", **z)
    return folder / "utterance_features.npz"


def test_small_features_are_readable(tmp_path):
    """Sanity check of the synthetic npz builder used by the two tests below."""
    small_features(tmp_path / "mosi")
    b = load_dataset("mosi", tmp_path)
    assert sizes(b) == (2, 2, 2) and b.input_dims() == {"audio": 73}
    b = load_dataset("mosi-bclstm", tmp_path, valid_share=0.0, need=("train", "test"))  # no valid carved
    assert (len(b.splits["train"]), len(b.splits["test"])) == (4, 2)


@pytest.mark.parametrize("name", ["mosi", "mosi-bclstm"])
def test_npz_with_nan(tmp_path, name):
    npz = small_features(tmp_path / "mosi", nan_audio=True)
    assert "nan" in str(expect_data_error(npz, name=name)).lower()


@pytest.mark.parametrize("name", ["mosi", "mosi-bclstm"])
def test_npz_inconsistent_lengths(tmp_path, name):
    npz = small_features(tmp_path / "mosi", lengths={"audio": 4})
    assert "inconsistent" in str(expect_data_error(npz, name=name))


def test_cli_reports_bad_data_in_one_line(tmp_path):
    bad_dir = tmp_path / "data"
    p = write_csv(bad_dir / "mosi" / "label.csv", rows(r2={"label": "n/a"}))
    env = {**os.environ, "DYNAFUSE_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "dynafuse.cli", "train", "--model", "early_fusion", "--dataset", "mosi",
                        "--data-dir", str(bad_dir), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("dynafuse: error:")
    assert str(p) in lines[0]
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------- Split, padding, collate (synthetic)


def synthetic_split() -> Split:
    """A synthetic split: 4 samples, audio (T=6, D=2) float64, text as int64 token ids (L=7)."""
    rng = np.random.default_rng(1)
    audio_len = np.array([3, 0, 5, 2])
    audio = rng.standard_normal((4, 6, 2)) * (np.arange(6)[None, :, None] < audio_len[:, None, None])
    text_len = np.array([4, 2, 7, 1])
    text = rng.integers(100, 1000, (4, 7)) * (np.arange(7)[None, :] < text_len[:, None])
    return Split(ids=np.array(["a_1", "a_2", "b_1", "c_1"]), y=np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32),
                 features={"audio": audio, "text": text.astype(np.int64)},
                 lengths={"audio": audio_len, "text": text_len},
                 unimodal={"text": np.array([0.1, np.nan, 0.3, 0.4], dtype=np.float32)},
                 raw_text=np.array(["w x", "y", "z z z", "q"]))


def test_split_subset():
    s = synthetic_split()
    sub = s.subset(np.array([2, 0]))
    assert list(sub.ids) == ["b_1", "a_1"]
    np.testing.assert_array_equal(sub.y, [2.0, 0.5])
    np.testing.assert_array_equal(sub.features["audio"], s.features["audio"][[2, 0]])
    np.testing.assert_array_equal(sub.lengths["text"], [7, 4])
    np.testing.assert_allclose(sub.unimodal["text"], [0.3, 0.1])
    assert list(sub.raw_text) == ["z z z", "w x"]
    assert len(sub) == 2
    sub.check("synthetic")  # still consistent


def test_pad_sequences():
    seqs = [np.ones((3, 2)), np.zeros((0, 2)), np.full((5, 2), 2.0)]
    out, lengths = pad_sequences(seqs)
    assert out.shape == (3, 5, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(lengths, [3, 0, 5])
    assert (out[0, :3] == 1).all() and (out[0, 3:] == 0).all()
    assert (out[1] == 0).all()
    out, lengths = pad_sequences(seqs, max_len=4)
    assert out.shape == (3, 4, 2)
    np.testing.assert_array_equal(lengths, [3, 0, 4])


def test_pad_sequences_all_empty_keeps_feature_dim():
    """Every sample lacks the modality: the padded array still has the feature dim, with all-zero lengths."""
    out, lengths = pad_sequences([np.zeros((0, 5)), np.zeros((0, 5))])
    assert out.shape == (2, 1, 5)
    np.testing.assert_array_equal(lengths, [0, 0])


def test_collate_masks_and_trimming():
    s = synthetic_split()
    ds = SplitDataset(s)
    b = ds.collate([3, 1, 0])  # audio lengths 2, 0, 3 -> padded to 3 steps, not 6
    assert b.x["audio"].shape == (3, 3, 2) and b.x["audio"].dtype == torch.float32
    assert b.mask["audio"].tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert not b.mask["audio"][1].any()  # length 0: an all-false mask row
    assert b.present("audio").tolist() == [True, False, True]
    for m in ("audio", "text"):
        np.testing.assert_array_equal(b.mask[m].sum(1).numpy(), s.lengths[m][[3, 1, 0]])
    np.testing.assert_allclose(b.x["audio"].numpy(), s.features["audio"][[3, 1, 0], :3].astype(np.float32))
    # text as token ids stays int64, trimmed to the longest in the batch (4)
    assert b.x["text"].dtype == torch.int64 and b.x["text"].shape == (3, 4)
    np.testing.assert_array_equal(b.x["text"].numpy(), s.features["text"][[3, 1, 0], :4])
    np.testing.assert_array_equal(b.y.numpy(), [0.0, -1.0, 0.5])
    np.testing.assert_array_equal(b.index.numpy(), [3, 1, 0])
    assert torch.isnan(b.y_uni["y_text"][1]) and b.y_uni["y_text"][2].item() == pytest.approx(0.1)


def test_collate_all_missing_modality():
    s = synthetic_split()
    b = SplitDataset(s, modalities=["audio"]).collate([1])
    assert list(b.x) == ["audio"]
    assert b.x["audio"].shape == (1, 1, 2) and not b.mask["audio"].any()


def test_collate_through_dataloader():
    s = synthetic_split()
    ds = SplitDataset(s)
    dl = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=ds.collate)
    batches = list(dl)
    assert [len(b) for b in batches] == [3, 1]
    assert batches[0].x["audio"].shape[1] == 5 and batches[1].x["audio"].shape[1] == 2


def test_tokenize_few_strings():
    """Token ids for a handful of strings (the packaged MiniLM tokenizer): int64, lengths match the padding."""
    from dynafuse.data.text import tokenize

    ids, lengths = tokenize(["a good film", "bad", "it was fine i guess"], None, 8)
    assert ids.dtype == np.int64 and ids.shape == (3, 8)
    assert lengths.dtype == np.int64 and (lengths >= 3).all() and lengths[2] > lengths[1]
    assert (ids[1, lengths[1]:] == 0).all()
