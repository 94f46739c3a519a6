"""The KuDA side-by-side benchmark's own parts (benchmarks/kuda_peer.py): the exporter, the layout both sides
read, the run-time shims that need no reference checkout, and the generated verdict. All data here is
synthetic; the benchmark itself runs on the real CH-SIMSv2 data."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dynafuse.data.core import Bundle, Split
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


def with_scores(bundle: Bundle) -> Bundle:
    """Audio and vision as one (1, 1) step per clip, as simsv2-scores has them; every third clip has no face."""
    for split in bundle.splits.values():
        n = len(split)
        for m in ("audio", "vision"):
            split.features[m] = np.linspace(-0.5, 0.5, n, dtype=np.float32)[:, None, None]
            split.lengths[m] = np.ones(n, dtype=np.int64)
        split.features["vision"][::3], split.lengths["vision"][::3] = 0, 0
    return bundle


def test_export_is_read_back_identically_by_our_reader(tmp_path, bundle, monkeypatch):
    """The export is our data exactly: our `mmsa:` reader must see the exported tensors, lengths and labels, and
    text_bert's ids must index the flattened `text` rows, as the reference's BERT stand-in reads them."""
    monkeypatch.setattr(dynafuse_side, "prepare_data", lambda cfg: with_scores(bundle))
    monkeypatch.setattr(dynafuse_side, "build_config", lambda *args: None)
    out = tmp_path / "export.pkl"
    dynafuse_side.export_kuda("synthetic", out)
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["ours_dataset"] == "synthetic" and info["seq_lens"] == {"text": 6, "audio": 1, "vision": 1}
    assert info["unknown_unimodal_labels"]["T"] == {"train": 1, "valid": 1, "test": 1}
    assert info["absent"]["vision"] == {"train": 3, "valid": 2, "test": 2}
    ours = prepare_data(build_config("kuda", f"mmsa:{out}", ["data.options.allow_pickle=true"]))
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
