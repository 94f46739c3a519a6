"""DAF (arXiv 2509.22729) on synthetic batches: blocks, masks, modality weights, gradients, the static ablation.

Every batch here is synthetic (random features from `conftest.synthetic_batch`), not real data.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import DIMS, drop, garbage_padding, synthetic_batch
from dynafuse import losses
from dynafuse.data.core import Batch
from dynafuse.models import create_model
from dynafuse.models.daf import (
    DAF,
    DynamicModalityAttention,
    StaticModalityWeights,
    UtteranceProjection,
    masked_softmax,
)
from dynafuse.training import build_config

CFG = {"d_model": 16, "dropout": 0.1}
TASKS = ("regression", "3class")


def build(task: str = "regression", dims=None, seed: int = 0, **cfg) -> DAF:
    torch.manual_seed(seed)
    return create_model("daf", dict(DIMS if dims is None else dims), {**CFG, "task": task, **cfg})


# --------------------------------------------------------------------------- blocks


def test_masked_softmax_by_hand():
    """Masked options get 0, the rest renormalise; a row with nothing available is uniform, not NaN."""
    logits = torch.tensor([[0.0, math.log(3.0), 5.0], [1.0, 2.0, 3.0]])
    avail = torch.tensor([[True, True, False], [False, False, False]])
    got = masked_softmax(logits, avail)
    torch.testing.assert_close(got[0], torch.tensor([0.25, 0.75, 0.0]))
    torch.testing.assert_close(got[1], torch.full((3,), 1 / 3))


def test_utterance_projection_shapes_masks_and_absent_rows():
    """Synthetic sequences: (B, T, D) -> (B, d); padding ignored; a sample without the modality gets zeros."""
    torch.manual_seed(0)
    proj = UtteranceProjection(8, 16, dropout=0.1).eval()
    x = torch.randn(4, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    h = proj(x, mask)
    assert h.shape == (4, 16)
    assert torch.equal(h[2], torch.zeros(16))
    noisy = torch.where(mask.unsqueeze(-1), x, torch.randn_like(x) * 100)
    torch.testing.assert_close(proj(noisy, mask), h)
    # masked mean pooling, then Linear + LayerNorm + GELU (dropout is off in eval)
    expected = proj.proj(x[0, :3].mean(0, keepdim=True))[0]
    torch.testing.assert_close(h[0], expected)


def test_dynamic_attention_by_hand():
    """Hand-set scorer: e_m = w^T tanh(W h_m) with W = I, w = (1, 0) gives e_m = tanh(h_m[0])."""
    att = DynamicModalityAttention(2, 2)
    with torch.no_grad():
        att.proj.weight.copy_(torch.eye(2))
        att.proj.bias.zero_()
        att.score.weight.copy_(torch.tensor([[1.0, 0.0]]))
    h = torch.tensor([[[0.5, 9.0], [-1.0, 3.0], [2.0, -4.0]],
                      [[0.5, 9.0], [-1.0, 3.0], [2.0, -4.0]]])
    present = torch.tensor([[True, True, True], [True, False, True]])
    alpha = att(h, present)
    e = torch.tanh(torch.tensor([0.5, -1.0, 2.0]))
    torch.testing.assert_close(alpha[0], e.softmax(0))
    torch.testing.assert_close(alpha[1], torch.stack([e[0], e[2]]).softmax(0)[[0, 0, 1]] * torch.tensor([1.0, 0, 1]))


def test_dynamic_attention_shapes_and_sums():
    """Synthetic states: (B, M, d) -> (B, M); each row sums to 1 over the present modalities."""
    torch.manual_seed(0)
    att = DynamicModalityAttention(16, 8)
    present = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    alpha = att(torch.randn(3, 3, 16), present)
    assert alpha.shape == (3, 3)
    torch.testing.assert_close(alpha.sum(1), torch.ones(3))
    assert alpha[1, 1] == 0


def test_static_weights_by_hand_and_input_independent():
    """theta = (0, log 2, log 5): alpha = (1, 2, 5) / 8 for everyone; without audio, (1, 0, 5) / 6."""
    st = StaticModalityWeights(3)
    with torch.no_grad():
        st.theta.copy_(torch.tensor([0.0, math.log(2.0), math.log(5.0)]))
    present = torch.tensor([[True, True, True], [True, True, True], [True, False, True]])
    alpha = st(torch.randn(3, 3, 4), present)
    torch.testing.assert_close(alpha[0], torch.tensor([1.0, 2.0, 5.0]) / 8)
    torch.testing.assert_close(alpha[1], alpha[0])
    torch.testing.assert_close(alpha[2], torch.tensor([1.0, 0.0, 5.0]) / 6)
    # fresh weights start as the plain mean over present modalities
    torch.testing.assert_close(StaticModalityWeights(3)(torch.zeros(1, 3, 4), present[:1]), torch.full((1, 3), 1 / 3))


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("task", TASKS)
def test_forward_gates_and_fusion(task, dynamic, batch):
    """Synthetic batch, audio missing for samples 1 and 3: gates (B, M) in modality order, a softmax over the
    present modalities, and the fused vector is exactly sum_m alpha_m h_m."""
    model = build(task, dynamic=dynamic).eval()
    b = drop(batch, "audio", [1, 3])
    with torch.no_grad():
        out = model(b)
        inputs = model.inputs(b)
        h = torch.stack([model.project[m](*inputs[m]) for m in model.modalities], 1)
    assert model.modalities == ["text", "audio", "vision"]
    assert out.logits.shape == (5, 1 if task == "regression" else 3) and out.pred.shape == (5,)
    gates = out.gates["modality"]
    assert gates.shape == (5, 3) and (gates >= 0).all()
    torch.testing.assert_close(gates.sum(1), torch.ones(5))
    assert gates[[1, 3], 1].abs().max() == 0 and (gates[[0, 2, 4], 1] > 0).all()
    torch.testing.assert_close(out.fused, (gates.unsqueeze(-1) * h).sum(1))
    assert out.fused.shape == (5, 16)
    assert out.unimodal == {}


def test_dynamic_weights_depend_on_the_input_static_do_not(batch):
    """Synthetic batch, every modality present: DAF gives each sample its own weights; static fusion one set."""
    with torch.no_grad():
        dyn = build(dynamic=True).eval()(batch).gates["modality"]
        static = build(dynamic=False).eval()(batch).gates["modality"]
    assert (dyn - dyn[0]).abs().max() > 1e-4
    torch.testing.assert_close(static, static[:1].expand(5, -1))


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("task", TASKS)
def test_padding_and_missing_features_are_ignored(task, dynamic, batch):
    """Synthetic batch: garbage in padded steps, and garbage audio for samples whose audio is missing,
    change nothing (eval mode)."""
    model = build(task, dynamic=dynamic).eval()
    missing = drop(batch, "audio", [1, 3])
    scrambled = Batch(x={**missing.x, "audio": torch.randn_like(missing.x["audio"]) * 50}, mask=missing.mask,
                      y=batch.y, index=batch.index)
    with torch.no_grad():
        a, b = model(batch), model(garbage_padding(batch))
        c, d = model(missing), model(scrambled)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.gates["modality"], b.gates["modality"], atol=1e-6, rtol=0)
    torch.testing.assert_close(c.logits[[1, 3]], d.logits[[1, 3]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("task", TASKS)
def test_every_parameter_gets_a_finite_gradient(task, dynamic, batch):
    """Synthetic batch, every modality present: the total loss (task loss; DAF adds no terms) reaches every
    trainable parameter with a finite gradient."""
    model = build(task, dynamic=dynamic).train()
    assert model.loss_terms() == {}
    out = model(batch)
    losses.task_loss(out.logits, batch.y, task, "l1").backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, p in trainable if p.grad is None] == []
    assert [n for n, p in trainable if not torch.isfinite(p.grad).all()] == []
    assert all(p.grad.abs().sum() > 0 for n, p in trainable)


@pytest.mark.parametrize("dynamic", [True, False])
def test_missing_modalities_stay_finite(dynamic, batch):
    """Synthetic batch: audio and vision missing for everyone, and sample 0 with nothing at all."""
    model = build("3class", dynamic=dynamic).eval()
    none = drop(drop(batch, "audio", slice(None)), "vision", slice(None))
    nothing = drop(none, "text", [0])
    with torch.no_grad():
        out = model(nothing)
    assert torch.isfinite(out.logits).all()
    gates = out.gates["modality"]
    torch.testing.assert_close(gates[1:], torch.tensor([[1.0, 0.0, 0.0]]).expand(4, -1))
    torch.testing.assert_close(gates[0], torch.full((3,), 1 / 3))  # nothing present: uniform, never NaN
    assert torch.equal(out.fused[0], torch.zeros(16))  # nothing present: a zero utterance vector
    model.train()
    out = model(none)
    losses.task_loss(out.logits, batch.y, "3class").backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_text_only_data_and_modality_ablation():
    """Synthetic text-only data (as MOSEI/SIMS here) and the `modalities` switch on text+audio+vision data."""
    text_only = synthetic_batch(lengths={"text": [3, 1, 2]}, dims={"text": 16})
    model = build(dims={"text": 16}).eval()
    with torch.no_grad():
        out = model(text_only)
    assert model.modalities == ["text"] and out.gates["modality"].shape == (3, 1)
    torch.testing.assert_close(out.gates["modality"], torch.ones(3, 1))
    model = build(modalities=["text", "audio"], dynamic=False)
    assert list(model.project) == ["text", "audio"] and model.attention.theta.shape == (2,)
    assert model(synthetic_batch()).gates["modality"].shape == (5, 2)


def test_switches_build_the_right_blocks():
    dyn, static = build(dynamic=True, attn_hidden=4), build(dynamic=False)
    assert isinstance(dyn.attention, DynamicModalityAttention) and dyn.attention.proj.out_features == 4
    assert isinstance(static.attention, StaticModalityWeights)
    assert not any("theta" in n for n, _ in dyn.named_parameters())
    assert sum(p.numel() for p in static.parameters()) < sum(p.numel() for p in dyn.parameters())


def test_preset_values():
    cfg = build_config("daf", "mosi")
    assert cfg["model"]["d_model"] == 128 and cfg["model"]["dropout"] == 0.2 and cfg["model"]["dynamic"] is True
    assert cfg["train"]["lr"] == pytest.approx(3e-4)
    static = build_config("daf", "mosi", ["model.dynamic=false"])
    assert static["model"]["dynamic"] is False
    model = create_model("daf", DIMS, cfg["model"])
    assert model.head.net[0].in_features == 128
