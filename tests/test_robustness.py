"""Test-time corruptions and modality-dropout training.

The fast tests use synthetic batches (random features from `conftest.synthetic_batch`, not real data);
the one `slow` test trains a tiny run on real MOSI and scores it under every corruption.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import DIMS, synthetic_batch
from dynafuse.config import TrainConfig
from dynafuse.data.corrupt import (
    add_noise,
    drop_modalities,
    drop_positions,
    modality_dropout,
)
from dynafuse.errors import ConfigError
from dynafuse.experiments.robustness import (
    parse_levels,
    relative_robustness,
    robustness_run,
)
from dynafuse.models import create_model
from dynafuse.training import build_config
from dynafuse.training.module import LitMSA


def big_synthetic_batch(n: int = 64, t: int = 40, seed: int = 0):
    """Synthetic: n samples with lengths 0..t-1 (some samples lack a modality), padded to t."""
    g = torch.Generator().manual_seed(seed)
    lengths = {m: torch.randint(0, t, (n,), generator=g).tolist() for m in DIMS}
    return synthetic_batch(lengths, seed=seed, pad_to=t)


def presence(batch, mods) -> torch.Tensor:
    """(B, M): which samples have each modality."""
    return torch.stack([batch.present(m) for m in mods], 1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_drop_sets_exactly_those_masks_false_and_keeps_features(batch):
    out = drop_modalities(batch, ["audio", "vision"])
    assert not out.mask["audio"].any() and not out.mask["vision"].any()
    assert torch.equal(out.mask["text"], batch.mask["text"])
    assert all(out.x[m] is batch.x[m] for m in DIMS)  # features left in place: models must ignore them
    assert batch.mask["audio"].any()  # the input batch is untouched


def test_noise_touches_only_valid_positions_and_scales_with_std():
    b = big_synthetic_batch()
    std = {"text": torch.linspace(0.1, 10.0, DIMS["text"])}
    out = add_noise(b, ["text"], 0.5, std, gen())
    diff = out.x["text"] - b.x["text"]
    valid = b.mask["text"]
    assert torch.all(diff[~valid] == 0)
    assert torch.equal(out.x["audio"], b.x["audio"]) and torch.equal(out.mask["text"], valid)
    ratio = diff[valid].std(0) / (0.5 * std["text"])  # per feature dim: ~1 whatever that dim's scale
    assert torch.all((ratio > 0.85) & (ratio < 1.15)), ratio


def test_level_zero_is_identity(batch):
    std = {m: torch.ones(d) for m, d in DIMS.items()}
    assert add_noise(batch, list(DIMS), 0.0, std, gen()) is batch
    assert drop_positions(batch, list(DIMS), 0.0, gen()) is batch


@pytest.mark.parametrize("level", [0.5, 0.9, 1.0])
def test_token_drop_keeps_one_position_per_present_sample(level):
    b = big_synthetic_batch()
    out = drop_positions(b, ["audio"], level, gen())
    before, after = b.mask["audio"], out.mask["audio"]
    assert not (after & ~before).any()  # only ever turns valid positions off
    assert torch.equal(after.any(1), before.any(1))  # present stays present, missing stays missing
    if level == 1.0:
        assert torch.all(after.sum(1) == before.any(1).long())
    else:  # roughly `level` of the positions go
        share = 1 - after.sum() / before.sum()
        assert abs(float(share) - level) < 0.06
    assert torch.equal(out.mask["text"], b.mask["text"])


def test_corruptions_are_deterministic_given_the_seed():
    b = big_synthetic_batch()
    std = {"text": torch.ones(DIMS["text"])}
    assert torch.equal(add_noise(b, ["text"], 0.3, std, gen(1)).x["text"],
                       add_noise(b, ["text"], 0.3, std, gen(1)).x["text"])
    assert not torch.equal(add_noise(b, ["text"], 0.3, std, gen(1)).x["text"],
                           add_noise(b, ["text"], 0.3, std, gen(2)).x["text"])
    assert torch.equal(drop_positions(b, ["text"], 0.4, gen(1)).mask["text"],
                       drop_positions(b, ["text"], 0.4, gen(1)).mask["text"])


def test_relative_robustness_on_a_hand_computed_curve():
    # trapezoids: 0.1 * (2 + 1) / 2 + 0.2 * (1 + 1) / 2 = 0.35, over a span of 0.3
    assert relative_robustness([0.0, 0.1, 0.3], [2.0, 1.0, 1.0]) == pytest.approx(0.35 / 0.3)
    assert relative_robustness([0.0, 0.5, 1.0], [1.0, 1.0, 1.0]) == pytest.approx(1.0)  # flat: the metric itself


def test_levels_are_checked():
    assert parse_levels("0,0.5,0.9") == [0.0, 0.5, 0.9]
    for bad in ("0,x", "0.5,0.1", "0", "0,2"):
        with pytest.raises(ConfigError):
            parse_levels(bad)


def test_modality_dropout_never_drops_every_modality_of_a_sample():
    b = big_synthetic_batch(n=256)
    mods = list(DIMS)
    present = presence(b, mods)
    torch.manual_seed(0)
    left = presence(modality_dropout(b, 1.0, mods), mods)
    assert not (left & ~present).any()
    assert torch.equal(left.sum(1), present.any(1).long())  # p=1: exactly one of its modalities stays
    torch.manual_seed(0)
    half = presence(modality_dropout(b, 0.5, mods), mods)
    assert not (half & ~present).any() and torch.equal(half.any(1), present.any(1))
    assert 0.3 < float((present & ~half).sum() / present.sum()) < 0.6
    torch.manual_seed(0)  # deterministic under the global seed (which Lightning sets from train.seed)
    assert torch.equal(half, presence(modality_dropout(b, 0.5, mods), mods))


def tiny_module(p: float) -> LitMSA:
    model = create_model("early_fusion", DIMS, {"d_model": 16, "heads": 4, "layers": 1})
    return LitMSA(model, TrainConfig(modality_dropout=p), 3.0)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a bare step, no Trainer attached
def test_modality_dropout_only_in_training_steps(batch, monkeypatch):
    lit = tiny_module(1.0)
    seen = []
    monkeypatch.setattr(lit, "compute_loss", lambda out, b: (seen.append(b) or (out.pred.sum(), {})))
    lit.train()
    lit.training_step(batch, 0)
    assert sum(seen[0].present(m).long() for m in DIMS).eq(1).all()  # p=1: one modality left per sample
    lit.eval()
    assert lit.augment(batch) is batch
    monkeypatch.setattr(lit, "augment", lambda b: pytest.fail("augmented outside training"))
    lit.validation_step(batch, 0)
    assert tiny_module(0.0).train().augment(batch) is batch
    with pytest.raises(ConfigError, match="modality_dropout"):  # a probability: checked when the config is built
        build_config("early_fusion", "mosi", ["train.modality_dropout=1.5"])


@pytest.mark.slow
def test_robustness_run_on_a_tiny_real_mosi_run(data_dir, tmp_path):
    from dynafuse.training import build_config, train

    # trained with modality dropout, so the flag also runs inside the real Lightning loop
    cfg = build_config("early_fusion", "mosi", [f"data.data_dir={data_dir}", "data.limit=200", "train.max_epochs=1",
                                                "train.progress=false", "train.modality_dropout=0.3"])
    train(cfg, tmp_path)
    levels = [0.0, 0.3, 0.6, 0.9]
    r = robustness_run(tmp_path, levels=levels)
    assert json.loads((tmp_path / "robustness.json").read_text()) == r
    assert {"run", "model", "dataset", "split", "seed", "task", "clean", "drop", "noise", "token_drop",
            "relative_robustness"} <= set(r)
    assert (r["model"], r["dataset"], r["split"], r["task"]) == ("early_fusion", "mosi", "test", "regression")
    assert set(r["drop"]) == {"audio", "text"}  # the model uses both; dropping both is not evaluated
    assert set(r["noise"]["curves"]) == {"text", "audio", "all"} and r["noise"]["skipped"] == {}
    assert set(r["token_drop"]["curves"]) == {"text", "all"}  # audio is one vector per clip
    assert "audio" in r["token_drop"]["skipped"]
    assert set(r["relative_robustness"]) == {"noise/text", "noise/audio", "noise/all", "token_drop/text",
                                             "token_drop/all"}
    keys = {"mae", "corr", "acc2_non0", "acc2_has0", "acc7", "f1_non0"}
    for m in [r["clean"], *r["drop"].values(), *r["relative_robustness"].values()]:
        assert keys <= set(m) and all(math.isfinite(m[k]) for k in keys)
    for kind in ("noise", "token_drop"):
        assert r[kind]["levels"] == levels
        for curve in r[kind]["curves"].values():
            assert all(len(v) == len(levels) and all(map(math.isfinite, v)) for v in curve.values())
            assert curve["mae"][0] == r["clean"]["mae"]  # level 0 is the clean data
