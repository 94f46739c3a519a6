"""Mechanism test on SYNTHETIC data: per sample only one modality carries the label.

Each sample picks its informative modality at random. That modality holds the label along a fixed direction;
the other two hold a distractor of the same scale along their own direction, so no modality can be trusted
on its own. A reliability cue (the last feature dimension: 1 on the informative modality, 0 elsewhere)
says which one to trust, as a face-detection or voice-activity confidence would. A dynamic-fusion model
should route its modality weights to the informative modality. On the test split the distractors are louder
than in training (a noisier sensor): reliability weighting is unaffected, while early fusion, whose MLP has
learnt a function of the distractor values too, extrapolates; the dynamic models must beat it there.
Each modality's unimodal label (KuDA's knowledge, as CH-SIMS annotates it) is what that modality alone says: the
label on the informative modality, the distractor on the others.
"""

from __future__ import annotations

import numpy as np
import pytest

from dynafuse.data.core import Bundle, Split
from dynafuse.data.registry import DATASETS, DESCRIPTIONS, register_dataset
from dynafuse.training import build_config, load_run, predict_batches, train
from dynafuse.training.run import loader

pytestmark = pytest.mark.slow
MODS = ("text", "audio", "vision")
DYNAMIC = ("daf", "kuda", "dpdf_lq")


def synthetic_one_informative(n: int, seed: int, dim: int = 8, distractor: float = 3.0) -> tuple[Split, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(-3, 3, n).astype(np.float32)
    informative = rng.integers(0, 3, n)
    directions = np.random.default_rng(123).normal(size=(3, dim - 1))  # fixed across splits
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    features, lengths, unimodal = {}, {}, {}
    for k, m in enumerate(MODS):
        carries = informative == k
        signal = np.where(carries, y, rng.uniform(-distractor, distractor, n))  # the label, or a distractor
        unimodal[m] = np.clip(signal, -3, 3).astype(np.float32)  # what this modality alone says (KuDA knowledge)
        x = signal[:, None] * directions[k] + 0.1 * rng.normal(size=(n, dim - 1))
        cue = carries.astype(np.float32)[:, None]
        features[m] = np.concatenate([x, cue], axis=1).astype(np.float32)[:, None, :]  # (n, 1, dim)
        lengths[m] = np.ones(n, dtype=np.int64)
    split = Split(ids=np.array([f"syn{seed}_{i}" for i in range(n)]), y=y, features=features, lengths=lengths,
                  unimodal=unimodal)
    return split, informative


# On test the unreliable modalities are louder (distractors in [-6, 6]): weighting by reliability ignores
# them whatever their size; a concatenation has learnt a function of their values and extrapolates.
SPLITS = {name: synthetic_one_informative(n, seed, distractor=d) for name, n, seed, d in
          (("train", 400, 0, 3.0), ("valid", 200, 1, 3.0), ("test", 500, 2, 6.0))}

@pytest.fixture(scope="module", autouse=True)
def synthetic_dataset():
    """Registered only while this module runs: the registry other tests see stays the shipped one."""
    @register_dataset("synthetic-one-informative", "SYNTHETIC: one random modality per sample carries the label")
    def _synthetic(_data_dir, **_):
        return Bundle(name="synthetic-one-informative", splits={k: s for k, (s, _) in SPLITS.items()})

    yield
    DATASETS.pop("synthetic-one-informative")
    DESCRIPTIONS.pop("synthetic-one-informative")


# Small widths keep the test to a few minutes on 2 cores; the mechanism, not the capacity, is under test.
SMALL = {
    "dpdf_lq": ["model.d_model=32", "model.hidden=64", "model.heads=4", "model.query_len=4", "model.dglqa_depth=1",
                "model.gpath_ca_depth=1", "model.lpath_ca_depth=1"],
    # k sharpens exp(-k x); the preset's 0.1 (the reference code's, for its label scale) barely separates modalities.
    # The preset's stage-1 lr (1e-4) and dropout 0.3 are for a pretrained backbone; from scratch here they leave the
    # knowledge decoders undertrained and the ratios flat.
    "kuda": ["model.layers=1", "model.fusion_layers=1", "model.k=3.0", "model.dropout=0.0",
             "train.stages.unimodal.lr=1e-3"],
}


def _fit(model: str, tmp_path, data_dir):
    cfg = build_config(model, "synthetic-one-informative",
                       [f"data.data_dir={data_dir}", "train.progress=false", "train.max_epochs=30",
                        "train.patience=30", "train.lr=1e-3", "data.batch_size=64", "model.d_model=32",
                        *SMALL.get(model, [])])
    m = train(cfg, tmp_path / model)
    return m["test"]["mae"], tmp_path / model


@pytest.fixture(scope="module")
def results(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("mechanism")
    return {m: _fit(m, tmp, data_dir) for m in ("early_fusion", *DYNAMIC)}


@pytest.mark.parametrize("model", DYNAMIC)
def test_modality_weights_follow_the_informative_modality(results, model):
    _, run = results[model]
    cfg, lit, bundle = load_run(run)
    out = predict_batches(lit.model, loader(bundle, "test", cfg, shuffle=False))
    gates = out.gates["modality"]  # (n, 3) in MODS order
    informative = SPLITS["test"][1]
    weight_on_informative = gates[np.arange(len(gates)), informative].mean()
    picks = (gates.argmax(1) == informative).mean()
    if model == "kuda":
        # KuDA's weights are p_m (1 + R_m) normalised (Sec. 3.3), at most 1/2 per modality, and R follows how close a
        # modality's own sentiment is to the estimated multimodal one, not a reliability cue: a distractor near the
        # label looks as right as the informative modality. Above chance (1/3) is what its mechanism can show here.
        assert weight_on_informative > 0.35 and picks > 0.4, (weight_on_informative, picks)
        return
    assert weight_on_informative > 0.6, f"{model}: mean weight on the informative modality {weight_on_informative:.2f}"
    assert picks > 0.7


# KuDA is left out: with knowledge from each modality's own (unimodal) labels, as the paper learns it, its ratios
# route by agreement with the estimated score, and on this data it trails early fusion and its own static-attention
# ablation (model.dynamic=false). A finding about the mechanism on this synthetic task, recorded, not bent.
@pytest.mark.parametrize("model", ("daf", "dpdf_lq"))
def test_dynamic_models_beat_early_fusion(results, model):
    assert results[model][0] < results["early_fusion"][0], {k: round(v[0], 3) for k, v in results.items()}
