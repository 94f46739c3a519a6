"""Model contract on synthetic batches: shapes, masks, missing modalities, gradients, fusion rules, losses.

Every batch here is synthetic (random features from `conftest.synthetic_batch`), not real data.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import DIMS, drop, synthetic_batch
from dynafuse import losses
from dynafuse.data.core import Batch
from dynafuse.errors import ConfigError
from dynafuse.models import MODELS as REGISTRY
from dynafuse.models import TEXT_FEATURES, ModelOutput, create_model

# Models that take text only as token ids (they fine-tune their backbone) run the same contract with ids in their
# own test file (tests/test_crosssent.py); the registry says which they are.
MODELS = sorted(name for name, e in REGISTRY.items() if TEXT_FEATURES in e.cls.text_inputs)
TASKS = ("regression", "3class")
CFG = {"d_model": 16, "heads": 4, "layers": 1, "dropout": 0.1}


def build(name: str, task: str = "regression", seed: int = 0, **cfg):
    torch.manual_seed(seed)
    return create_model(name, DIMS, {**CFG, "task": task, **cfg})


def total_loss(model, out, batch, task):
    """What the trainer minimises: task_weight(stage) * task loss + the model's weighted terms."""
    loss = model.task_weight(model.stage) * losses.task_loss(out.logits, batch.y, task, "l1")
    for weight, term in model.loss_terms().values():
        loss = loss + weight * term(out, batch, task=task, kind="l1")
    return loss


def with_garbage_padding(batch: Batch, extra: int = 3, seed: int = 1) -> Batch:
    """The same synthetic batch with `extra` more padding steps and random garbage in every padded position."""
    g = torch.Generator().manual_seed(seed)
    x, mask = {}, {}
    for m, v in batch.x.items():
        b, t, d = v.shape
        mk = torch.cat([batch.mask[m], torch.zeros(b, extra, dtype=torch.bool)], dim=1)
        garbage = torch.randn(b, t + extra, d, generator=g) * 100
        xv = torch.cat([v, torch.zeros(b, extra, d)], dim=1)
        x[m] = torch.where(mk.unsqueeze(-1), xv, garbage)
        mask[m] = mk
    return Batch(x=x, mask=mask, y=batch.y, index=batch.index, y_uni=batch.y_uni)


def test_registry_lists_the_2501_models():
    assert {"early_fusion", "late_fusion", "attention_fusion", "unimodal_text", "unimodal_audio",
            "unimodal_vision"} <= set(MODELS)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes(name, task, batch):
    """Synthetic batch of 5 with different lengths per sample: pred (B,), logits (B, 1 or 3), finite."""
    model = build(name, task)
    out = model(batch)
    assert isinstance(out, ModelOutput)
    assert out.pred.shape == (5,)
    assert out.logits.shape == (5, 1 if task == "regression" else 3)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.pred.float()).all()
    if task == "3class":
        assert set(out.pred.tolist()) <= {-1, 0, 1}
    else:
        torch.testing.assert_close(out.pred, out.logits.squeeze(-1))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", MODELS)
def test_padding_is_ignored(name, task, batch):
    """Synthetic batch: extra padding steps with garbage values under a false mask change nothing."""
    model = build(name, task).eval()
    padded = with_garbage_padding(batch)
    with torch.no_grad():
        a, b = model(batch), model(padded)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.pred.float(), b.pred.float(), atol=1e-5)
    with torch.enable_grad():  # the autograd path (no fused fast path) must agree too
        c = model(padded)
    assert torch.allclose(a.logits, c.logits, atol=1e-5)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", MODELS)
def test_missing_modality_is_finite(name, task, batch):
    """Synthetic batch: audio missing for some samples, then audio and vision missing for the whole batch."""
    model = build(name, task).eval()
    some = drop(batch, "audio", [1, 3])
    none = drop(drop(batch, "audio", slice(None)), "vision", slice(None))
    everything = drop(none, "text", [0])  # sample 0 has nothing at all
    with torch.no_grad():
        for b in (some, none, everything):
            out = model(b)
            assert torch.isfinite(out.logits).all()
            assert torch.isfinite(out.pred.float()).all()
    model.train()
    out = model(some)
    total_loss(model, out, some, task).backward()  # a missing modality must not make the gradients NaN
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", MODELS)
def test_missing_modality_ignores_its_features(name, task, batch):
    """Synthetic batch: a sample's features under an all-false mask do not change its prediction."""
    model = build(name, task).eval()
    missing = drop(batch, "audio", [1, 3])
    scrambled = Batch(x={**missing.x, "audio": torch.randn_like(missing.x["audio"]) * 50}, mask=missing.mask,
                      y=batch.y, index=batch.index)
    with torch.no_grad():
        a, b = model(missing), model(scrambled)
    rows = [1, 3] if "audio" in model.modalities else list(range(5))
    assert torch.allclose(a.logits[rows], b.logits[rows], atol=1e-5)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name, task, batch):
    """Synthetic batch with every modality present: the task loss plus the model's own loss terms reach
    every trainable parameter (attention fusion included), with finite gradients."""
    model = build(name, task).train()
    out = model(batch)
    total_loss(model, out, batch, task).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


def test_attention_gates_are_a_softmax_over_present_modalities(batch):
    """Synthetic batch with audio missing for samples 1 and 3."""
    model = build("attention_fusion").eval()
    b = drop(batch, "audio", [1, 3])
    with torch.no_grad():
        out = model(b)
    gates = out.gates["modality"]
    assert gates.shape == (5, 3)  # text, audio, vision
    assert model.modalities == ["text", "audio", "vision"]
    present = torch.stack([b.present(m) for m in model.modalities], 1)
    assert (gates >= 0).all()
    torch.testing.assert_close((gates * present).sum(1), torch.ones(5))
    assert gates[[1, 3], 1].abs().max() < 1e-6
    assert (gates[[0, 2, 4], 1] > 0).all()


def test_attention_gates_are_the_weights_that_make_the_fused_vector(batch):
    """Synthetic batch: the written weights w (B, M) rebuild the pooled vector, out_proj(sum_m w_m V h_m), with h
    the modality states after self-attention; the self-attention map would not."""
    model = build("attention_fusion").eval()
    states = {}
    model.norm.register_forward_hook(lambda mod, inp, out: states.update(h=out))
    with torch.no_grad():
        out = model(drop(batch, "audio", [1, 3]))
        d = states["h"].shape[-1]
        v = states["h"] @ model.pool.in_proj_weight[2 * d:].T + model.pool.in_proj_bias[2 * d:]  # (B, M, d)
        rebuilt = model.pool.out_proj((out.gates["modality"].unsqueeze(-1) * v).sum(1))
    torch.testing.assert_close(out.fused, rebuilt)


def test_attention_gates_with_all_present(batch):
    model = build("attention_fusion").eval()
    with torch.no_grad():
        gates = model(batch).gates["modality"]
    torch.testing.assert_close(gates.sum(1), torch.ones(5))
    assert (gates > 0).all()


class Constant(nn.Module):
    """A stand-in head: the same logits for every sample."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_late_fusion_majority_vote(batch):
    """Synthetic batch: two heads mildly positive, one confidently negative -> the vote says positive,
    although the mean probability favours negative."""
    model = build("late_fusion", "3class").eval()
    model.heads = nn.ModuleDict({"text": Constant([0.0, 0.0, 0.5]), "audio": Constant([0.0, 0.0, 0.5]),
                                 "vision": Constant([20.0, 0.0, 0.0])})
    with torch.no_grad():
        out = model(batch)
    assert out.pred.tolist() == [1] * 5
    mean_prob = out.logits.exp()
    assert (mean_prob[:, 0] > mean_prob[:, 2]).all()  # the mean probability alone would say negative
    torch.testing.assert_close(mean_prob.sum(1), torch.ones(5))
    # with vision missing, the two positive heads are the only voters; with only vision, negative
    b = drop(batch, "vision", [0])
    b = drop(drop(b, "text", [1]), "audio", [1])
    with torch.no_grad():
        out = model(b)
    assert out.pred.tolist() == [1, -1, 1, 1, 1]


def test_late_fusion_regression_is_the_mean_over_present_modalities(batch):
    """Synthetic batch with audio missing for samples 1 and 3."""
    model = build("late_fusion").eval()
    b = drop(batch, "audio", [1, 3])
    with torch.no_grad():
        out = model(b)
    assert set(out.unimodal) == {"text", "audio", "vision"}
    uni = torch.stack([out.unimodal[m].squeeze(-1) for m in model.modalities], 1)  # (B, M)
    present = torch.stack([b.present(m) for m in model.modalities], 1).float()
    expected = (uni * present).sum(1) / present.sum(1)
    torch.testing.assert_close(out.pred, expected)
    torch.testing.assert_close(out.pred[1], (uni[1, 0] + uni[1, 2]) / 2)
    torch.testing.assert_close(out.pred[0], uni[0].mean())


def test_late_fusion_heads_get_no_joint_loss():
    """A0: separately trained classifiers. The task loss on the combined output has weight 0, so each head's
    gradient comes from its own loss only (synthetic batch)."""
    model = build("late_fusion")
    terms = model.loss_terms()
    assert list(terms) == ["unimodal"] and terms["unimodal"][1] is losses.per_modality_task_loss
    assert model.task_weight("main") == 0.0 and build("early_fusion").task_weight("main") == 1.0
    assert build("early_fusion").loss_terms() == {}
    b = synthetic_batch()
    out = model.eval()(b)  # no dropout: the two passes below are the same function
    total_loss(model, out, b, "regression").backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    text_only = losses.task_loss(model(b).unimodal["text"], b.y, "regression", "l1")
    text_only.backward()
    for n, p in model.named_parameters():  # the text head's gradient: its own loss / number of heads, nothing else
        if n.startswith("heads.text."):
            torch.testing.assert_close(grads[n], p.grad / 3)


def test_unimodal_models_use_one_modality():
    for m in ("text", "audio", "vision"):
        model = build(f"unimodal_{m}")
        assert model.modalities == [m]
        assert list(model.encoders.enc) == [m]


def test_create_model_errors():
    with pytest.raises(ConfigError):
        create_model("no_such_model", DIMS, CFG)
    with pytest.raises(ConfigError):
        create_model("unimodal_audio", {"text": 16, "vision": 12}, CFG)
    with pytest.raises(ConfigError):
        create_model("early_fusion", DIMS, {**CFG, "task": "5class"})


# --------------------------------------------------------------------------- losses


def test_task_loss_regression_by_hand():
    logits = torch.tensor([[1.0], [-2.0], [0.5]])
    y = torch.tensor([0.0, 1.0, 0.5])
    assert losses.task_loss(logits, y, "regression", "l1").item() == pytest.approx((1 + 3 + 0) / 3)
    assert losses.task_loss(logits, y, "regression", "mse").item() == pytest.approx((1 + 9 + 0) / 3)


def test_task_loss_3class_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([-2.0, 0.7])  # classes 0 and 2
    expected = -(torch.log_softmax(logits[0], 0)[0] + math.log(1 / 3)) / 2
    assert losses.task_loss(logits, y, "3class").item() == pytest.approx(expected.item())


def test_score_to_class():
    y = torch.tensor([-3, -0.6, -0.5, 0, 0.49, 0.5, 2])
    assert losses.score_to_class(y).tolist() == [0, 0, 1, 1, 1, 2, 2]


def test_per_modality_task_loss_by_hand():
    """Synthetic outputs: every head against the multimodal label (unimodal labels are not used), each on the
    samples that have its modality."""
    y = torch.tensor([1.0, 2.0, -1.0])
    text = torch.tensor([[0.0], [0.0], [0.0]])
    audio = torch.tensor([[1.0], [5.0], [0.0]])
    out = ModelOutput(pred=torch.zeros(3), logits=torch.zeros(3, 1), unimodal={"text": text, "audio": audio})
    mask = {"text": torch.ones(3, 2, dtype=torch.bool), "audio": torch.tensor([[True], [False], [True]])}
    batch = Batch(x={}, mask=mask, y=y, index=torch.arange(3),
                  y_uni={"y_text": torch.tensor([0.5, float("nan"), -0.25])})
    text_loss = (1.0 + 2.0 + 1.0) / 3
    audio_loss = (0.0 + 1.0) / 2  # samples 0 and 2 only: |1 - 1|, |0 + 1|
    got = losses.per_modality_task_loss(out, batch, task="regression", kind="l1")
    assert got.item() == pytest.approx((text_loss + audio_loss) / 2)


def test_per_modality_task_loss_with_nothing_present():
    out = ModelOutput(pred=torch.zeros(2), logits=torch.zeros(2, 1, requires_grad=True),
                      unimodal={"audio": torch.zeros(2, 1)})
    batch = Batch(x={}, mask={"audio": torch.zeros(2, 1, dtype=torch.bool)}, y=torch.ones(2), index=torch.arange(2))
    assert losses.per_modality_task_loss(out, batch).item() == 0.0


def test_synthetic_batch_fixture_shape(make_batch):
    b = make_batch(pad_to=9)
    assert all(v.shape[:2] == (5, 9) for v in b.x.values())
    assert b.mask["text"].sum(1).tolist() == [5, 3, 1, 4, 2]


# ---- loss terms shared by the dynamic-fusion models (hand-computed cases) ----
from dynafuse import losses as L  # noqa: E402


def test_mpr_counts_only_pairs_above_threshold_with_adaptive_margin():
    y = torch.tensor([2.0, 0.0, 0.2])
    # pairs with gap > 0.5: (0,1) gap 2.0, (0,2) gap 1.8; (2,1) gap 0.2 is a near-tie and ignored
    p = torch.tensor([1.0, 0.0, 0.9])
    # margins 0.1*2.0=0.2 and 0.1*1.8=0.18; prediction gaps 1.0 and 0.1 -> losses 0 and 0.08
    assert L.mpr_loss(p, y, threshold=0.5, margin_scale=0.1).item() == pytest.approx(0.04)
    # reversed order is penalised by the gap plus the margin
    p_rev = torch.tensor([0.0, 1.0, 0.0])
    # pair (0,1): 0.2 - (0-1) = 1.2; pair (0,2): 0.18 - 0 = 0.18 -> mean 0.69
    assert L.mpr_loss(p_rev, y, threshold=0.5, margin_scale=0.1).item() == pytest.approx(0.69)
    assert L.mpr_loss(p, torch.zeros(3)).item() == 0.0


def test_eioi_zero_inside_band_excess_outside():
    y = torch.tensor([0.0, 1.0, -1.0])
    assert L.eioi_loss(torch.tensor([0.2, 0.8, -1.25]), y, tolerance=0.25).item() == 0.0
    # |errors| 1.0, 0.5, 0.0 -> excess 0.75, 0.25, 0 -> mean 1/3
    assert L.eioi_loss(torch.tensor([1.0, 1.5, -1.0]), y, tolerance=0.25).item() == pytest.approx(1 / 3)


def test_info_nce_prefers_the_positive_pair():
    a = torch.eye(4)
    assert L.info_nce(a, a, temperature=0.1) < L.info_nce(a, a.roll(1, 0), temperature=0.1)
    # hand computation, 2 samples, orthogonal unit vectors, t=1: -log(e / (e + 1))
    two = torch.eye(2)
    assert L.info_nce(two, two, temperature=1.0).item() == pytest.approx(-math.log(math.e / (math.e + 1)))
    assert L.info_nce(two, two, valid=torch.tensor([True, False])).item() == 0.0


def test_cosine_ramp():
    assert L.cosine_ramp(0.0, 0.3) == 0.0
    assert L.cosine_ramp(0.15, 0.3) == pytest.approx(0.5)
    assert L.cosine_ramp(0.5, 0.3) == 1.0


CONTRACT = (test_forward_shapes, test_padding_is_ignored, test_missing_modality_is_finite,
            test_missing_modality_ignores_its_features, test_every_parameter_gets_a_gradient)


@pytest.fixture
def tiny_registered():
    """A model family written inside the test (one class, one config dataclass, one decorator), registered for
    the test only: nothing else in the code base is edited to add it."""
    from dataclasses import dataclass

    from dynafuse.config import ModelConfig, positive
    from dynafuse.models import MSAModel, register_model
    from dynafuse.models.blocks import Head, masked_mean, presence_weights

    @dataclass
    class TinyConfig(ModelConfig):
        hidden: int = positive(8)

    @register_model("tiny_mean", "test-only: mean of per-modality projections", benchmark=False)
    class TinyMean(MSAModel):
        Config = TinyConfig

        def __init__(self, input_dims, cfg, **context):
            super().__init__(input_dims, cfg, **context)
            self.proj = nn.ModuleDict({m: nn.Linear(d, cfg.hidden) for m, d in self.input_dims.items()})
            self.head = Head(cfg.hidden, self.out_dim, dropout=cfg.dropout)

        def forward(self, batch):
            inputs = self.inputs(batch)
            h = torch.stack([self.proj[m](masked_mean(x, mask)) for m, (x, mask) in inputs.items()], 1)
            w = presence_weights(torch.stack([mask.any(1) for _, mask in inputs.values()], 1))
            logits = self.head((h * w.unsqueeze(-1)).sum(1))
            return ModelOutput(pred=self.to_pred(logits), logits=logits, gates={"modality": w})

    yield "tiny_mean"
    del REGISTRY["tiny_mean"]


@pytest.mark.parametrize("task", TASKS)
def test_a_new_model_is_one_file(tiny_registered, task, batch):
    """The shared contract runs on a model registered inside this test, and the config builder knows its keys."""
    for check in CONTRACT:
        check(tiny_registered, task, batch)
    from dynafuse.training import build_config

    assert build_config(tiny_registered, "mosi", ["model.hidden=4"]).model.hidden == 4
    with pytest.raises(ConfigError, match="hidden"):
        build_config(tiny_registered, "mosi", ["model.hiden=4"])
