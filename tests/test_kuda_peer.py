"""The KuDA side-by-side benchmark's own parts (benchmarks/kuda_peer.py): the exporter, the layout both sides
read, the run-time shims that need no reference checkout, and the generated verdict. All data here is
synthetic; the benchmark itself runs on the real CH-SIMSv2 data."""

from __future__ import annotations

import csv
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dynafuse.data.core import Bundle, Split
from dynafuse.errors import DataError
from dynafuse.training import build_config
from dynafuse.training.run import prepare_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import dynafuse_side  # noqa: E402
import kuda_side  # noqa: E402

SPLITS = ("train", "valid", "test")


def synthetic_split(rng, n: int, offset: int, text_len: int = 6) -> Split:
    """Random text states (zero past each length), one audio and one vision step, unimodal labels."""
    lengths = rng.integers(1, text_len + 1, n)
    text = rng.standard_normal((n, text_len, 4)).astype(np.float32)
    text *= (np.arange(text_len)[None, :] < lengths[:, None])[..., None]
    y = rng.uniform(-1, 1, n).astype(np.float32)
    uni = {m: np.clip(y + rng.normal(0, 0.3, n), -1, 1).astype(np.float32) for m in ("text", "audio", "vision")}
    uni["text"][0] = np.nan  # an unknown unimodal label, as 8 CH-SIMSv2 clips have
    return Split(ids=np.array([f"v{offset + i}_{i:04d}" for i in range(n)]), y=y,
                 features={"text": text}, lengths={"text": lengths}, unimodal=uni,
                 raw_text=np.array([f"clip {i}" for i in range(n)]))


@pytest.fixture
def bundle() -> Bundle:
    rng = np.random.default_rng(0)
    splits = {s: synthetic_split(rng, n, 100 * k) for k, (s, n) in enumerate(zip(SPLITS, (9, 5, 6)))}
    return Bundle(name="synthetic", splits=splits, value_range=1.0, source="synthetic")


def write_scores(path: Path, bundle: Bundle, skip: str | None = None) -> dict[str, tuple[str, str]]:
    """unimodal_scores.csv for the bundle's clips; every third clip has no pred_v (no face)."""
    scores = {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "clip_id", "pred_t", "pred_a", "pred_v", "mode"])
        for s, split in bundle.splits.items():
            for i, clip in enumerate(split.ids):
                if clip == skip:
                    continue
                video, cid = clip.rsplit("_", 1)
                scores[clip] = (f"{0.1 * i - 0.3:.2f}", "" if i % 3 == 0 else f"{0.5 - 0.1 * i:.2f}")
                w.writerow([video, cid, "0.0", *scores[clip], s])
    return scores


def test_score_features_are_length1_sequences_and_a_missing_face_is_absent(tmp_path, bundle):
    scores = write_scores(tmp_path / "scores.csv", bundle)
    dynafuse_side.add_score_features(bundle, tmp_path / "scores.csv")
    for split in bundle.splits.values():
        assert split.features["audio"].shape == (len(split), 1, 1)
        for i, clip in enumerate(split.ids):
            a, v = scores[clip]
            assert split.features["audio"][i, 0, 0] == pytest.approx(float(a))
            assert split.lengths["vision"][i] == (1 if v else 0)
            assert split.features["vision"][i, 0, 0] == pytest.approx(float(v) if v else 0.0)
    assert bundle.input_dims() == {"text": 4, "audio": 1, "vision": 1}


def test_score_features_refuse_a_clip_without_scores(tmp_path, bundle):
    write_scores(tmp_path / "scores.csv", bundle, skip=bundle.splits["valid"].ids[2])
    with pytest.raises(DataError, match="1 clips have no scores") as e:
        dynafuse_side.add_score_features(bundle, tmp_path / "scores.csv")
    assert "scores.csv" in str(e.value)


def test_export_is_read_back_identically_by_our_reader(tmp_path, bundle, monkeypatch):
    """Both sides read one file: our `mmsa:` reader must see the exported tensors, lengths and labels, and
    text_bert's ids must index the flattened `text` rows, as the reference's BERT stand-in reads them."""
    write_scores(tmp_path / "scores.csv", bundle)
    dynafuse_side.add_score_features(bundle, tmp_path / "scores.csv")
    monkeypatch.setattr(dynafuse_side, "kuda_bundle", lambda name: (bundle, None))
    out = tmp_path / "export.pkl"
    dynafuse_side.export_kuda("synthetic", out)
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["ours_dataset"] == f"mmsa:{out.resolve()}" and info["seq_lens"] == {"text": 6, "audio": 1, "vision": 1}
    assert info["unknown_unimodal_labels"]["T"] == {"train": 1, "valid": 1, "test": 1}
    ours = prepare_data(build_config("kuda", info["ours_dataset"], info["ours_overrides"]))
    data = pickle.loads(out.read_bytes())
    table = np.concatenate([data[s]["text"] for s in SPLITS]).reshape(-1, 4)
    stats = bundle.feature_stats()
    for s in SPLITS:
        src, back = bundle.splits[s], ours.splits[s]
        np.testing.assert_array_equal(back.ids, src.ids)
        for m in ("text", "audio", "vision"):
            np.testing.assert_array_equal(back.lengths[m], src.lengths[m])
            valid = (np.arange(src.features[m].shape[1])[None, :] < src.lengths[m][:, None])[..., None]
            z = (src.features[m] - stats[m][0]) / stats[m][1] * valid
            np.testing.assert_allclose(back.features[m], z, atol=1e-6)
        np.testing.assert_array_equal(np.isnan(back.unimodal["text"]), np.isnan(src.unimodal["text"]))
        ids, mask = data[s]["text_bert"][:, 0].astype(np.int64), data[s]["text_bert"][:, 1].astype(bool)
        np.testing.assert_array_equal(mask.sum(1), src.lengths["text"])
        np.testing.assert_array_equal(table[ids], data[s]["text"])


def test_text_ids_stay_exact_in_float32():
    """The reference casts text_bert to float32: ids up to CH-SIMSv2's 4403 x 50 rows must survive it."""
    ids = dynafuse_side.text_ids(4400, np.array([50, 3, 0]), 50)
    assert ids.dtype == np.float32
    np.testing.assert_array_equal(ids[:, 0].astype(np.int64)[:, -1], (4400 + np.arange(3)) * 50 + 49)
    np.testing.assert_array_equal(ids[:, 1].sum(1), [50, 3, 0])


def test_encoder_with_states_matches_torch_and_returns_every_layer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    ours, stock = kuda_side.EncoderWithStates(layer, 3), nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    stock.load_state_dict(ours.state_dict())
    x, pad = torch.randn(2, 5, 8), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    out, states = ours(x, src_key_padding_mask=pad)
    assert len(states) == 4 and states[0] is x and torch.equal(states[-1], out)
    torch.testing.assert_close(out, stock(x, src_key_padding_mask=pad))


def test_frozen_token_states_stand_in_for_bert():
    kuda_side.FrozenTokenStates.table = torch.arange(12.0).reshape(6, 2)
    bert = kuda_side.FrozenTokenStates.from_pretrained("./pretrainedModel/BERT/bert-base-chinese")
    out = bert(input_ids=torch.tensor([[5, 0], [2, 2]]), attention_mask=None, token_type_ids=None)
    torch.testing.assert_close(out["last_hidden_state"], torch.tensor([[[10.0, 11.0], [0.0, 1.0]],
                                                                      [[4.0, 5.0], [4.0, 5.0]]]))
    assert len(out["hidden_states"]) == 13  # BERT-base's embeddings + 12 layers; the reference reads 0/3/6/9/11
    assert not list(bert.parameters()) and "states" not in bert.state_dict()  # frozen, never saved


def test_verdict_says_within_or_outside_one_std():
    ref = {"agg": {"mae": {"mean": 0.30, "std": 0.01}, "corr": {"mean": 0.70, "std": 0.02}}}
    ours = {"agg": {"mae": {"mean": 0.305, "std": 0.0}, "corr": {"mean": 0.64, "std": 0.0}}}
    mae, corr = dynafuse_side.within_std(ours, ref)
    assert "within one standard deviation" in mae and "+0.005" in mae
    assert "outside one standard deviation (3.0 std)" in corr
