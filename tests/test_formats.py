"""Readers for users' pickles, on small files with the exact structure of each format, plus the real MISA file."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from dynafuse.data.formats import (
    READERS,
    read_misa,
    read_misa_split,
    read_mmsa,
    read_mult,
)
from dynafuse.data.registry import load_dataset
from dynafuse.errors import ConfigError, DataError

DATA = Path(os.environ.get("DYNAFUSE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
MISA_VALID = DATA / "mosi" / "word_aligned_valid.pkl"
SPLITS = ("train", "valid", "test")


def dump(obj, path: Path) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def mmsa_split(rng, n, dims, widths, text_lengths, labels, sims=False, stored_lengths=None, video="vid"):
    """One split of an MMSA feature pickle (keys, dtypes and shapes as MMSA writes them); ids `<video><i>$_$<i+1>`."""
    (dt, da, dv), (lt, la, lv) = dims, widths
    mask = (np.arange(lt)[None, :] < np.asarray(text_lengths)[:, None])
    text_bert = np.stack([rng.integers(100, 30000, (n, lt)) * mask, mask, np.zeros((n, lt))], axis=1)
    d = {
        "raw_text": np.array([f"clip {i} was great" for i in range(n)], dtype=object),
        "id": np.array([f"{video}{i}$_${i + 1}" for i in range(n)], dtype=object),
        "text": (rng.standard_normal((n, lt, dt)) * mask[..., None]).astype(np.float32),
        "text_bert": text_bert.astype(np.int64 if sims else np.float32),
        "audio": rng.standard_normal((n, la, da)).astype(np.float32),
        "vision": rng.standard_normal((n, lv, dv)).astype(np.float32),
        "regression_labels": np.asarray(labels, dtype=np.float32),
        "classification_labels": (np.asarray(labels) > 0).astype(np.float32),
        "annotations": np.array(["Positive" if y > 0 else "Negative" for y in labels], dtype=object),
    }
    if stored_lengths is not None:
        d["audio_lengths"], d["vision_lengths"] = (list(x) for x in stored_lengths)
    if sims:
        for m in "TAV":
            d[f"regression_labels_{m}"] = np.clip(np.asarray(labels) + 0.2, -1, 1).astype(np.float32)
    return d


@pytest.fixture
def mosi_aligned(tmp_path):
    """MMSA aligned_50.pkl for MOSI: 768/5/20, L = 50, no audio/vision lengths stored."""
    rng = np.random.default_rng(0)
    data = {s: mmsa_split(rng, 6, (768, 5, 20), (50, 50, 50), [10, 20, 30, 40, 50, 3],
                          [-3.0, -1.4, 0.0, 0.6, 2.2, 3.0]) for s in SPLITS}
    return dump(data, tmp_path / "aligned_50.pkl")


@pytest.fixture
def sims_unaligned(tmp_path):
    """MMSA unaligned_39.pkl for SIMS: 768/33/709, lengths 39/400/55, with T/A/V labels."""
    rng = np.random.default_rng(1)
    data = {s: mmsa_split(rng, 3, (768, 33, 709), (39, 400, 55), [39, 12, 5], [-1.0, 0.2, 0.8], sims=True,
                          stored_lengths=([400, 250, 7], [55, 30, 1])) for s in SPLITS}
    return dump(data, tmp_path / "unaligned_39.pkl")


def mult_data(rng, n=4):
    """MulT mosei_senti_data.pkl: GloVe 300 text, 74 audio, 35 vision, labels (N, 1, 1), id (N, 3) str."""
    out = {}
    for s in SPLITS:
        d = {"text": rng.standard_normal((n, 50, 300)).astype(np.float32),
             "audio": rng.standard_normal((n, 50, 74)).astype(np.float32),
             "vision": rng.standard_normal((n, 50, 35)).astype(np.float32),
             "labels": np.linspace(-3, 3, n, dtype=np.float32).reshape(n, 1, 1),
             "id": np.array([[f"vid{i}", f"{i}.5", f"{i + 2}.0"] for i in range(n)])}
        d["vision"][1] = 0  # sample 1 lacks vision
        out[s] = d
    return out


@pytest.fixture
def mult_file(tmp_path):
    return dump(mult_data(np.random.default_rng(2)), tmp_path / "mosei_senti_data.pkl")


def test_mmsa_aligned_mosi(mosi_aligned):
    b = read_mmsa(mosi_aligned, allow_pickle=True)
    assert b.modalities == ["text", "audio", "vision"]
    assert b.input_dims() == {"text": 768, "audio": 5, "vision": 20}
    assert b.value_range == 3.0 and b.name == "aligned_50"
    for s in SPLITS:
        split = b.splits[s]
        assert len(split) == 6 and split.features["audio"].shape == (6, 50, 5)
        for m in ("text", "audio", "vision"):  # aligned: every modality takes the text mask length
            assert split.lengths[m].tolist() == [10, 20, 30, 40, 50, 3]
        assert split.y.dtype == np.float32 and split.y.shape == (6,)
        assert split.y.tolist() == pytest.approx([-3.0, -1.4, 0.0, 0.6, 2.2, 3.0])
        assert split.unimodal == {}
        assert split.raw_text[0] == "clip 0 was great" and split.ids[1] == "vid1$_$2"


def test_mmsa_aligned_ignores_lengths_beyond_the_aligned_width(tmp_path):
    rng = np.random.default_rng(3)
    data = {s: mmsa_split(rng, 2, (768, 5, 20), (50, 50, 50), [7, 9], [0.5, 2.0],
                          stored_lengths=([300, 120], [200, 80])) for s in SPLITS}
    b = read_mmsa(dump(data, tmp_path / "aligned_50.pkl"), allow_pickle=True)
    assert b.splits["test"].lengths["audio"].tolist() == [7, 9]
    assert any("used text lengths" in n for n in b.notes)


def test_mmsa_unaligned_sims(sims_unaligned):
    b = read_mmsa(sims_unaligned, allow_pickle=True)
    assert b.input_dims() == {"text": 768, "audio": 33, "vision": 709}
    assert b.value_range == 1.0
    split = b.splits["valid"]
    assert split.features["vision"].shape == (3, 55, 709) and split.features["audio"].dtype == np.float32
    assert split.lengths["text"].tolist() == [39, 12, 5]
    assert split.lengths["audio"].tolist() == [400, 250, 7]
    assert split.lengths["vision"].tolist() == [55, 30, 1]
    assert set(split.unimodal) == {"text", "audio", "vision"}
    assert split.unimodal["audio"].tolist() == pytest.approx([-0.8, 0.4, 1.0])


def test_value_range_option(sims_unaligned):
    assert read_mmsa(sims_unaligned, allow_pickle=True, value_range=3.0).value_range == 3.0
    with pytest.raises(DataError, match="outside.*data.value_range=3"):  # load_dataset checks the labels
        load_dataset(f"mult:{dump(mult_data(np.random.default_rng(0)), sims_unaligned.parent / 'm.pkl')}",
                     allow_pickle=True, value_range=1.0)


def test_mult(mult_file):
    b = read_mult(mult_file, allow_pickle=True)
    assert b.modalities == ["text", "audio", "vision"]
    assert b.input_dims() == {"text": 300, "audio": 74, "vision": 35}
    assert b.value_range == 3.0
    split = b.splits["train"]
    assert split.y.shape == (4,) and split.y.tolist() == pytest.approx([-3, -1, 1, 3])
    assert split.lengths["text"].tolist() == [50] * 4
    assert split.lengths["vision"].tolist() == [50, 0, 50, 50]
    assert split.ids[0] == "vid0_0.5_2.0" and split.raw_text is None


def test_mult_through_registry(mult_file):
    b = load_dataset("mult:" + str(mult_file), allow_pickle=True)
    assert b.input_dims() == {"text": 300, "audio": 74, "vision": 35} and len(b.splits["test"]) == 4
    with pytest.raises(ConfigError):
        load_dataset("mult:" + str(mult_file))


class Py2Pickler(pickle._Pickler):
    """Writes bytes as python2 `str` opcodes, like the python2-era MulT pickles (numpy array data included)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def test_mult_python2_pickle_needs_latin1(tmp_path):
    data = mult_data(np.random.default_rng(4))
    path = tmp_path / "mosi_data.pkl"
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(data)
    with pytest.raises(UnicodeDecodeError):  # what a plain pickle.load does with such a file
        pickle.loads(path.read_bytes())
    b = read_mult(path, allow_pickle=True)
    np.testing.assert_array_equal(b.splits["valid"].features["audio"], data["valid"]["audio"])


PICKLE_READERS = [r for name, r in READERS.items() if name != "path"]  # "path": `dynafuse extract` output, no pickle


@pytest.mark.parametrize("reader", [*PICKLE_READERS, read_misa_split])
def test_refuses_pickle_without_opt_in(reader, mult_file):
    with pytest.raises(ConfigError, match="allow_pickle=true.*--allow-pickle"):
        reader(mult_file)


@pytest.mark.parametrize("reader", READERS.values())
def test_missing_file(reader, tmp_path):
    with pytest.raises(DataError, match="nope.pkl"):
        reader(tmp_path / "nope.pkl", **({"allow_pickle": True} if reader is not READERS["path"] else {}))


@pytest.mark.parametrize("reader", [read_mmsa, read_mult])
def test_truncated_pickle(reader, mult_file):
    raw = mult_file.read_bytes()
    mult_file.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="mosei_senti_data.pkl.*truncated"):
        reader(mult_file, allow_pickle=True)


def test_structure_errors_name_the_file(tmp_path, mult_file):
    with pytest.raises(DataError, match="mosei_senti_data.pkl.*'vision'"):  # MMSA keys missing in a MulT file
        read_mmsa(mult_file, allow_pickle=True)
    data = mult_data(np.random.default_rng(5))
    del data["test"]["labels"]
    with pytest.raises(DataError, match=r"broken.pkl.*split 'test' is missing keys \['labels'\]"):
        read_mult(dump(data, tmp_path / "broken.pkl"), allow_pickle=True)
    del data["test"]
    with pytest.raises(DataError, match=r"broken.pkl.*missing keys \['test'\]"):
        read_mult(dump(data, tmp_path / "broken.pkl"), allow_pickle=True)
    with pytest.raises(DataError, match="list.pkl.*must be a dict"):
        read_mult(dump([1, 2], tmp_path / "list.pkl"), allow_pickle=True)
    with pytest.raises(DataError, match="dict.pkl.*list of samples"):
        read_misa(dump({"train": []}, tmp_path / "dict.pkl"), allow_pickle=True, split="train")


def test_nonfinite_features_refused_unless_fixed(tmp_path):
    data = mult_data(np.random.default_rng(6))
    data["valid"]["audio"][2, 3, 4] = -np.inf
    data["valid"]["audio"][0, 0, 0] = np.nan
    path = dump(data, tmp_path / "nan_data.pkl")
    with pytest.raises(DataError, match="nan_data.pkl.*2 NaN/Inf values in audio features.*fix_nonfinite") as e:
        read_mult(path, allow_pickle=True)
    assert "nan_data.pkl" in str(e.value)
    b = read_mult(path, allow_pickle=True, fix_nonfinite=True)
    assert np.isfinite(b.splits["valid"].features["audio"]).all()
    assert b.splits["valid"].features["audio"][2, 3, 4] == 0
    assert b.notes == ["valid: replaced 2 NaN/Inf values with 0 (data.options.fix_nonfinite; audio features 2)"]


def misa_rows(rng, n, label=1.5):
    rows = []
    for i in range(n):
        t = 2 + i
        words = [f"w{j}" for j in range(t)]
        rows.append(((np.arange(t, dtype=np.int64), rng.standard_normal((t, 47)).astype(np.float32),
                      rng.standard_normal((t, 74)).astype(np.float32), words),
                     np.array([[label]], dtype=np.float32), f"vid{i}[{i}]"))
    return rows


def test_misa_folder_and_single_file(tmp_path):
    rng = np.random.default_rng(7)
    for name, n in (("train", 4), ("dev", 2), ("test", 3)):
        dump(misa_rows(rng, n), tmp_path / f"{name}.pkl")
    b = read_misa(tmp_path, allow_pickle=True)
    assert [len(b.splits[s]) for s in SPLITS] == [4, 2, 3]
    assert b.modalities == ["audio", "vision"] and b.input_dims() == {"audio": 74, "vision": 47}
    assert b.splits["train"].lengths["vision"].tolist() == [2, 3, 4, 5]
    assert b.splits["train"].raw_text[0] == "w0 w1" and b.splits["test"].ids[2] == "vid2[2]"
    single = read_misa(tmp_path / "test.pkl", allow_pickle=True, split="test")
    assert list(single.splits) == ["test"] and len(single.splits["test"]) == 3
    (tmp_path / "dev.pkl").unlink()
    with pytest.raises(DataError, match="dev.pkl"):
        read_misa(tmp_path, allow_pickle=True)


@pytest.mark.skipif(not MISA_VALID.exists(), reason=f"{MISA_VALID} not available")
def test_misa_real_mosi_valid():
    split = read_misa_split(MISA_VALID, allow_pickle=True)
    assert len(split) == 229
    assert "text" not in split.features
    assert split.features["vision"].shape[-1] == 47 and split.features["audio"].shape[-1] == 74
    for m in ("audio", "vision"):
        assert split.lengths[m].min() >= 2 and split.lengths[m].max() <= 44
    assert split.y.dtype == np.float32 and split.y.shape == (229,)
    assert np.abs(split.y).max() <= 3.0
    assert all(t.strip() for t in split.raw_text)
    assert split.ids[0] == "WKA5OygbEKI[0]"
    b = read_misa(MISA_VALID, allow_pickle=True, split="valid")
    assert list(b.splits) == ["valid"] and b.value_range == 3.0
