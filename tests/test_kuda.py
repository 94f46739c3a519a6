"""KuDA (2410.04491) on synthetic batches: block shapes, the sentiment ratio by hand, both stages, masks, gradients,
missing modalities, ablation switches and the correlation-estimation loss.

Every batch here is synthetic (random features from `conftest.synthetic_batch`), not real data.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import DIMS, drop, garbage_padding, synthetic_batch
from dynafuse import losses
from dynafuse.data.core import Batch
from dynafuse.models import create_model, model_config
from dynafuse.models.blocks import ModalityEncoder
from dynafuse.models.kuda import (
    DynamicAttentionBlock,
    DynamicAttentionFusion,
    KnowledgeInjection,
    ModalityCrossTransformer,
    UnimodalKnowledgeEncoder,
    sentiment_ratio,
)

CFG = {"d_model": 16, "heads": 4, "layers": 2, "dropout": 0.1, "adapter_bottleneck": 8, "fusion_layers": 2,
       "fusion_queries": 4}
TASKS = ("regression", "3class")


def build(task="regression", dims=None, stage=None, seed=0, unimodal_labels=("text", "audio", "vision"), **cfg):
    """KuDA on data that has its own unimodal labels (as SIMSv2), unless told otherwise."""
    torch.manual_seed(seed)
    model = create_model("kuda", dict(DIMS if dims is None else dims), {**CFG, "task": task, **cfg},
                         unimodal_labels=unimodal_labels)
    if stage:
        model.stage_setup(stage)
    return model


def with_unimodal_labels(b: Batch) -> Batch:
    """Synthetic unimodal labels: the multimodal label plus a per-modality offset."""
    b.y_uni = {f"y_{m}": b.y + 0.1 * i for i, m in enumerate(("text", "audio", "vision"))}
    return b


def total_loss(model, out, batch, task="regression"):
    """What the trainer minimises: task_weight(stage) * task loss + the model's weighted terms."""
    loss = model.task_weight(model.stage) * losses.task_loss(out.logits, batch.y, task)
    for weight, term in model.loss_terms().values():
        loss = loss + weight * term(out, batch, task=task, kind="l1")
    return loss


# --------------------------------------------------------------------------- the sentiment ratio, by hand


def test_ratio_equal_distances_split_evenly():
    scores = torch.tensor([[0.0, 2.0]])  # both 1 away from the reference
    r = sentiment_ratio(scores, torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool), k=0.7)
    torch.testing.assert_close(r, torch.tensor([[0.5, 0.5]]))


def test_ratio_larger_distance_smaller_ratio_by_hand():
    # x = (s - s_M)^2 = [0, 4, 1]; k = 0.5 -> exp(-k x) = [1, e^-2, e^-0.5], normalised
    scores, ref = torch.tensor([[1.0, 3.0, 0.0]]), torch.tensor([1.0])
    r = sentiment_ratio(scores, ref, torch.ones(1, 3, dtype=torch.bool), k=0.5)
    e = torch.tensor([1.0, math.exp(-2.0), math.exp(-0.5)])
    torch.testing.assert_close(r, (e / e.sum()).unsqueeze(0))
    assert r[0, 0] > r[0, 2] > r[0, 1]


def test_ratio_over_present_modalities_only():
    scores = torch.tensor([[0.0, 5.0, 1.0], [0.0, 0.0, 0.0]])
    present = torch.tensor([[True, False, True], [False, False, False]])
    r = sentiment_ratio(scores, torch.tensor([0.0, 0.0]), present, k=1.0)
    e = torch.tensor([1.0, math.exp(-1.0)])
    torch.testing.assert_close(r[0], torch.tensor([e[0], 0.0, e[1]]) / e.sum())
    torch.testing.assert_close(r[1], torch.full((3,), 1 / 3))  # nothing present: uniform, not NaN


def test_ratio_k_zero_is_uniform():
    r = sentiment_ratio(torch.randn(4, 3), torch.randn(4), torch.ones(4, 3, dtype=torch.bool), k=0.0)
    torch.testing.assert_close(r, torch.full((4, 3), 1 / 3))


# --------------------------------------------------------------------------- blocks


def test_encoder_returns_every_hidden_state():
    """Synthetic features: a 3-layer encoder gives 4 states (input embedding + 3 layers), same output as without."""
    enc = ModalityEncoder(8, 16, layers=3).eval()
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    seq, pooled, states = enc(x, mask, return_states=True)
    assert seq.shape == (2, 5, 16) and len(states) == 4 and all(s.shape == (2, 5, 16) for s in states)
    torch.testing.assert_close(seq, enc(x, mask)[0])
    # the layer loop is the same computation as nn.TransformerEncoder's
    safe = ~mask
    torch.testing.assert_close(states[-1], enc.transformer(states[0], src_key_padding_mask=safe))


def test_knowledge_injection_starts_as_the_layer_sum():
    """Adapters start as the identity (zero up-projection): K = LN(LN(h0 + h1) + h2) on synthetic states."""
    inj = KnowledgeInjection(16, 2, 4, 0.0)
    taps = [torch.randn(2, 3, 16) for _ in range(3)]
    k = inj(taps)
    assert k.shape == (2, 3, 16)
    torch.testing.assert_close(k, inj.norm(inj.norm(taps[0] + taps[1]) + taps[2]))


@pytest.mark.parametrize("task", TASKS)
def test_unimodal_encoder_shapes(task):
    out = 1 if task == "regression" else 3
    enc = UnimodalKnowledgeEncoder(8, model_config("kuda", CFG), out)
    x, mask = torch.randn(3, 6, 8), torch.arange(6)[None] < torch.tensor([6, 2, 0])[:, None]
    u, pooled, logits = enc(x, mask)
    assert enc.out_dim == 32 and u.shape == (3, 6, 32) and pooled.shape == (3, 32) and logits.shape == (3, out)
    assert (u[1, 2:] == 0).all() and (pooled[2] == 0).all()  # padding and an absent modality are zeros
    plain = UnimodalKnowledgeEncoder(8, model_config("kuda", CFG), out, knowledge=False)
    u, pooled, logits = plain(x, mask)
    assert plain.out_dim == 16 and u.shape == (3, 6, 16) and logits is None


def test_fusion_block_shapes():
    mods = ["text", "audio"]
    f = torch.randn(2, 4, 16)
    seqs = {"text": torch.randn(2, 5, 16), "audio": torch.randn(2, 3, 16)}
    masks = {"text": torch.ones(2, 5, dtype=torch.bool), "audio": torch.tensor([[True, True, False], [False] * 3])}
    c, w = ModalityCrossTransformer(16, 4, 0.0)(f, seqs["audio"], masks["audio"])
    assert c.shape == (2, 4, 16) and w.shape == (2, 4, 3)
    out, attn = DynamicAttentionBlock(mods, 16, 4, 0.0)(f, seqs, masks, torch.ones(2, 2))
    assert out.shape == (2, 4, 16) and attn["text"].shape == (2, 4, 5) and attn["audio"].shape == (2, 4, 3)
    fusion = DynamicAttentionFusion({"text": 32, "audio": 8}, model_config("kuda", CFG)).eval()
    u = {"text": torch.randn(2, 5, 32), "audio": torch.randn(2, 3, 8)}
    present = torch.stack([masks[m].any(1) for m in mods], 1)
    fused, pooled, attn = fusion(u, masks, present, torch.ones(2, 2))
    assert fused.shape == (2, 16) and pooled["text"].shape == (2, 16) and attn["audio"].shape == (2, 4, 3)


def test_ratios_change_the_fusion():
    """Synthetic inputs: unlike the reference code, where a LayerNorm cancels the (1 + R) scale, the ratios matter."""
    block = DynamicAttentionBlock(["text", "audio"], 16, 4, 0.0).eval()
    f = torch.randn(1, 4, 16)
    seqs = {"text": torch.randn(1, 5, 16), "audio": torch.randn(1, 3, 16)}
    masks = {m: torch.ones(1, s.shape[1], dtype=torch.bool) for m, s in seqs.items()}
    with torch.no_grad():
        a, _ = block(f, seqs, masks, torch.tensor([[1.9, 1.1]]))
        b, _ = block(f, seqs, masks, torch.tensor([[1.1, 1.9]]))
        c, _ = block(f, seqs, masks, torch.tensor([[3.8, 2.2]]))  # same proportions as a
    assert not torch.allclose(a, b, atol=1e-3)
    torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)  # only the relative weights count, as normalised ratios


# --------------------------------------------------------------------------- stages


def test_stages_and_task_weights():
    model = build()
    assert model.stages == ("unimodal", "fusion") and model.stage == "fusion"
    assert model.task_weight("unimodal") == 0.0 and model.task_weight("fusion") == 1.0
    model.stage_setup("unimodal")
    terms = model.loss_terms()
    assert terms["unimodal"] == (1.0, model.knowledge_loss) and terms["estimate"][0] == 1.0
    assert "ce" not in terms
    model.stage_setup("fusion")
    terms = model.loss_terms()
    assert terms["ce"][0] == pytest.approx(0.1) and terms["unimodal"][0] == 0.0


@pytest.mark.parametrize("task", TASKS)
def test_stage_one_pred_is_the_mean_unimodal_prediction(task):
    """Synthetic batch with audio missing for samples 1 and 3: the mean runs over present modalities."""
    model = build(task, stage="unimodal").eval()
    b = drop(synthetic_batch(), "audio", [1, 3])
    with torch.no_grad():
        out = model(b)
    assert set(out.unimodal) == {"text", "audio", "vision"} and out.fused is None
    present = torch.stack([b.present(m) for m in model.modalities], 1).float()
    if task == "regression":
        uni = torch.stack([out.unimodal[m].squeeze(-1) for m in model.modalities], 1)
        torch.testing.assert_close(out.pred, (uni * present).sum(1) / present.sum(1))
    else:
        probs = torch.stack([out.unimodal[m].softmax(-1) for m in model.modalities], 1)
        mean = (probs * present.unsqueeze(-1)).sum(1) / present.sum(1, keepdim=True)
        assert out.pred.tolist() == (mean.argmax(-1) - 1).tolist()


def test_stage_freezing():
    model = build(stage="unimodal")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("encoders.", "estimate.")) for n in trainable)
    model.stage_setup("fusion")  # freeze: knowledge (reference): adapters, decoders and the estimate head
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".inject." in n or ".decoder." in n or n.startswith("estimate.") for n in frozen)
    assert any(p.requires_grad for p in model.encoders["audio"].encoder.parameters())
    all_frozen = build(stage="fusion", freeze="all")
    assert not any(p.requires_grad for p in all_frozen.encoders.parameters())
    none_frozen = build(stage="fusion", freeze="none")
    assert all(p.requires_grad for p in none_frozen.parameters())


@pytest.mark.parametrize("stage", ["unimodal", "fusion"])
@pytest.mark.parametrize("task", TASKS)
def test_every_trainable_parameter_gets_a_finite_gradient(task, stage):
    """Synthetic batch: after stage_setup, the stage's loss reaches every parameter left trainable."""
    model = build(task, stage=stage, fusion_unimodal_weight=0.1).train()
    b = with_unimodal_labels(synthetic_batch())
    out = model(b)
    total_loss(model, out, b, task).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


# --------------------------------------------------------------------------- masks, gates, missing modalities


@pytest.mark.parametrize("stage", ["unimodal", "fusion"])
@pytest.mark.parametrize("task", TASKS)
def test_padding_garbage_changes_nothing(task, stage):
    model = build(task, stage=stage).eval()
    b = synthetic_batch()
    with torch.no_grad():
        a, c = model(b), model(garbage_padding(b))
    torch.testing.assert_close(a.logits, c.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.gates["modality"], c.gates["modality"], atol=1e-5, rtol=1e-5)
    for m in model.modalities:
        torch.testing.assert_close(a.unimodal[m], c.unimodal[m], atol=1e-5, rtol=1e-5)


def test_gates_are_the_normalised_multipliers_over_present_modalities():
    """Synthetic batch with audio missing for samples 1 and 3: the gates written out are p_m (1 + R_m)
    normalised, the weights the fusion applies, not the raw ratios."""
    model = build().eval()
    b = drop(synthetic_batch(), "audio", [1, 3])
    with torch.no_grad():
        out = model(b)
    g = out.gates["modality"]
    assert g.shape == (5, 3) and model.modalities == ["text", "audio", "vision"]
    torch.testing.assert_close(g.sum(1), torch.ones(5))
    assert (g[[1, 3], 1] == 0).all() and (g[[0, 2, 4]] > 0).all()
    scores, ref = out.extras["unimodal_scores"], out.extras["reference_score"]
    present = torch.stack([b.present(m) for m in model.modalities], 1)
    ratio = sentiment_ratio(scores, ref, present, model.k)
    torch.testing.assert_close(out.extras["ratio"], ratio)
    torch.testing.assert_close(g, present * (1 + ratio) / (present * (1 + ratio)).sum(1, keepdim=True))
    assert out.fused.shape == (5, 16) and all(out.extras[f"repr_{m}"].shape == (5, 16) for m in model.modalities)


@pytest.mark.parametrize("stage", ["unimodal", "fusion"])
def test_missing_modalities_are_finite(stage):
    model = build(stage=stage).eval()
    b = synthetic_batch()
    none = drop(drop(b, "audio", slice(None)), "vision", slice(None))
    nothing = drop(none, "text", [0])  # sample 0 has no modality at all
    with torch.no_grad():
        for batch in (drop(b, "audio", [1, 3]), none, nothing):
            out = model(batch)
            assert torch.isfinite(out.logits).all() and torch.isfinite(out.gates["modality"]).all()
    model.train()
    out = model(nothing)
    total_loss(model, out, nothing).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("task", TASKS)
def test_text_only_data(task):
    """Synthetic text-only batch (as MOSEI/SIMS/SIMSv2 are here): one modality, its ratio is 1."""
    dims = {"text": DIMS["text"]}
    model = build(task, dims=dims).eval()
    b = synthetic_batch(lengths={"text": [5, 3, 1, 4, 2]}, dims=dims)
    with torch.no_grad():
        out = model(b)
    assert model.modalities == ["text"] and torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.gates["modality"], torch.ones(5, 1))


# --------------------------------------------------------------------------- ablations and options


def test_ablation_no_knowledge():
    model = build(knowledge=False)
    assert model.stages == ("fusion",) and model.estimate is None
    assert all(e.inject is None and e.decoder is None for e in model.encoders.values())
    b = drop(synthetic_batch(), "audio", [1])
    out = model.eval()(b)
    assert out.unimodal == {} and set(model.loss_terms()) == {"ce"}
    torch.testing.assert_close(out.gates["modality"][0], torch.full((3,), 1 / 3))
    torch.testing.assert_close(out.gates["modality"][1], torch.tensor([0.5, 0.0, 0.5]))


def test_ablation_static_attention():
    model = build(dynamic=False).eval()
    assert model.estimate is None and model.stages == ("unimodal", "fusion")
    with torch.no_grad():
        out = model(synthetic_batch())
    assert set(out.unimodal) == {"text", "audio", "vision"}
    torch.testing.assert_close(out.gates["modality"], torch.full((5, 3), 1 / 3))
    assert set(model.loss_terms()) == {"unimodal", "ce"}


def test_ablation_no_ce_loss():
    model = build(ce_loss=False)
    assert model.alpha == 0.0 and "ce" not in model.loss_terms()
    assert "ce" in build(alpha=0.5).loss_terms() and build(alpha=0.5).loss_terms()["ce"][0] == 0.5


def test_ratio_reference_label_is_used_only_when_training():
    """Synthetic batch: `label` takes the ground truth while training (the reference code) and the estimate in eval."""
    model = build(ratio_reference="label", dropout=0.0)
    b = synthetic_batch()
    out = model.train()(b)
    torch.testing.assert_close(out.extras["reference_score"], b.y)
    with torch.no_grad():
        out = model.eval()(b)
    torch.testing.assert_close(out.extras["reference_score"], out.extras["estimate_logits"].squeeze(-1))


def test_ratio_reference_consensus_two_modalities_is_even():
    """Synthetic text+audio batch: with two modalities, the mean unimodal score is equally far from both."""
    dims = {"text": 16, "audio": 8}
    model = build(dims=dims, ratio_reference="consensus").eval()
    assert model.estimate is None
    with torch.no_grad():
        out = model(synthetic_batch(lengths={"text": [5, 3, 1, 4, 2], "audio": [2, 6, 4, 1, 3]}, dims=dims))
    torch.testing.assert_close(out.gates["modality"], torch.full((5, 2), 0.5))


def test_bad_options_raise():
    from dynafuse.errors import ConfigError

    with pytest.raises(ConfigError):
        build(ratio_reference="oracle")
    with pytest.raises(ConfigError):
        build(freeze="adapters")


@pytest.mark.parametrize("flags", [{"knowledge": False}, {"dynamic": False}, {"ce_loss": False},
                                   {"ratio_reference": "label"}, {"ratio_reference": "consensus"},
                                   {"ratio_reference": "public_code"}, {"knowledge_source": "multimodal"},
                                   {"freeze": "all"}, {"fusion_unimodal_weight": 0.2}])
def test_ablations_train_a_step(flags):
    """Synthetic batch: each switch builds, runs both of its stages and gives a finite loss."""
    model = build(**flags)
    b = with_unimodal_labels(synthetic_batch())
    for stage in model.stages:
        model.stage_setup(stage)
        loss = total_loss(model, model.train()(b), b)
        assert torch.isfinite(loss)
        loss.backward()


# --------------------------------------------------------------------------- losses


def test_correlation_estimation_by_hand():
    """Synthetic representations: two samples, orthogonal unit vectors, temperature 1.

    Each modality's term is -log(e / (e + 1)). Audio is missing for sample 1, which leaves one valid sample, so
    its term is 0. The CE loss is the sum over modalities.
    """
    model = build(dims={"text": 4, "audio": 4}, ce_temperature=1.0)
    fused = torch.eye(2)
    out = type("Out", (), {})()
    out.fused, out.extras = fused, {"repr_text": torch.eye(2) * 3, "repr_audio": torch.eye(2)}
    mask = {"text": torch.ones(2, 1, dtype=torch.bool), "audio": torch.tensor([[True], [False]])}
    batch = Batch(x={}, mask=mask, y=torch.zeros(2), index=torch.arange(2))
    assert model.correlation_estimation(out, batch).item() == pytest.approx(-math.log(math.e / (math.e + 1)))
    batch.mask["audio"][:] = True
    assert model.correlation_estimation(out, batch).item() == pytest.approx(-2 * math.log(math.e / (math.e + 1)))


def test_unimodal_loss_uses_unimodal_labels():
    """Synthetic batch with SIMSv2-style `y_text` (one NaN) in stage 1: the decoders train on the unimodal labels."""
    model = build(dims={"text": 16}, stage="unimodal").eval()
    b = synthetic_batch(lengths={"text": [5, 3, 1, 4, 2]}, dims={"text": 16}, y=[1.0, -1.0, 0.5, 0.0, 2.0])
    b.y_uni = {"y_text": torch.tensor([0.2, float("nan"), -0.4, 0.0, 1.0])}
    with torch.no_grad():
        out = model(b)
    pred = out.unimodal["text"].squeeze(-1)
    known = torch.tensor([True, False, True, True, True])  # a NaN label is skipped, never replaced
    target = b.y_uni["y_text"]
    weight, term = model.loss_terms()["unimodal"]
    assert weight == 1.0
    assert term(out, b, task="regression", kind="l1").item() == pytest.approx(
        (pred - target)[known].abs().mean().item())
    assert model.estimate_loss(out, b).item() == pytest.approx(
        (out.extras["estimate_logits"].squeeze(-1) - b.y).abs().mean().item())


def test_stage_one_weights_load_into_a_fresh_model():
    """What `train.init_from=.../unimodal/best.ckpt train.skip_stages=[unimodal]` relies on: same names and outputs."""
    a = build(seed=0, stage="unimodal").eval()
    b = build(seed=1).eval()
    b.load_state_dict(a.state_dict())
    b.stage_setup("unimodal")
    batch = synthetic_batch()
    with torch.no_grad():
        torch.testing.assert_close(a(batch).logits, b(batch).logits)


# --------------------------------------------------------------------------- the frozen-backbone text path


@pytest.mark.slow
def test_token_ids_run_a_frozen_backbone_with_adapters(tmp_path):
    """Synthetic token ids and a tiny random BERT saved locally (no download): the backbone is frozen, the text
    adapters read its layers 0, 2 and 4, and gradients reach the adapters but never the backbone."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = create_model("kuda", {"text": 0, "audio": 8}, {**CFG, "text_adapters": 2}, backbone=str(tmp_path),
                         unimodal_labels=("text", "audio"))
    assert model.text_taps == [0, 2, 4] and len(model.encoders["text"].inject.adapters) == 2
    assert model.encoders["text"].encoder is None and model.encoders["text"].out_dim == 32
    assert not any(p.requires_grad for p in model.text_backbone.parameters())
    ids = torch.randint(1, 50, (3, 6))
    mask = {"text": torch.arange(6)[None] < torch.tensor([6, 3, 0])[:, None],
            "audio": torch.ones(3, 2, dtype=torch.bool)}
    b = Batch(x={"text": ids, "audio": torch.randn(3, 2, 8)}, mask=mask, y=torch.tensor([1.0, -1.0, 0.0]),
              index=torch.arange(3))
    model.stage_setup("unimodal")
    model.train()
    assert not model.text_backbone.training  # frozen, so no dropout noise
    out = model(b)
    total_loss(model, out, b).backward()
    assert all(p.grad is not None for p in model.encoders["text"].inject.parameters())
    assert all(p.grad is None for p in model.text_backbone.parameters())
    model.stage_setup("fusion")
    with torch.no_grad():
        out = model.eval()(b)
    assert torch.isfinite(out.logits).all() and out.gates["modality"].shape == (3, 2)


# --------------------------------------------------------------------------- where the knowledge comes from


def test_knowledge_plan_own_external_none_and_ablation():
    """Own unimodal labels for every modality: own. None: the external dataset's, for the modalities it provides
    (here text); a modality with no source gets no adapters and no decoder. Nothing at all: no stage 1."""
    own = build()
    assert {s["source"] for s in own.knowledge_sources.values()} == {"own"} and own.stages == ("unimodal", "fusion")
    ext = build(unimodal_labels=())
    assert ext.knowledge_modalities == [] and ext.stages == ("fusion",)  # no labels, no external data: no knowledge
    ext = create_model("kuda", DIMS, CFG, unimodal_labels=(), stage_modalities={"unimodal": ["text"]})
    assert ext.knowledge_sources["text"] == {"source": "external", "dataset": "simsv2", "label": "label_T"}
    assert ext.knowledge_sources["audio"]["source"] == "none" and ext.knowledge_modalities == ["text"]
    assert ext.encoders["audio"].decoder is None and ext.encoders["text"].decoder is not None
    assert ext.run_info() == {"knowledge": ext.knowledge_sources}
    abl = build(knowledge_source="multimodal", unimodal_labels=())
    assert {s["source"] for s in abl.knowledge_sources.values()} == {"multimodal"}
    from dynafuse.models.kuda import KuDA, KuDAConfig

    all3 = ("text", "audio", "vision")
    assert KuDA.stage_datasets(KuDAConfig(), all3, ()) == {"unimodal": "simsv2"}
    assert KuDA.stage_datasets(KuDAConfig(), all3, all3) == {}
    assert KuDA.stage_datasets(KuDAConfig(knowledge_source="multimodal"), all3, ()) == {}
    # data without vision but with its own text and audio labels: stage 1 on the data itself, as the plan says
    assert KuDA.stage_datasets(KuDAConfig(), ("text", "audio"), ("text", "audio")) == {}
    assert KuDA.stage_datasets(KuDAConfig(modalities=["text"]), all3, ("text",)) == {}


def synthetic_bundle(name: str, value_range: float, audio_spec: dict, unimodal: tuple, modalities=("text", "audio")):
    """A small synthetic dataset: labels at half the range, unimodal labels for `unimodal`, text and audio."""
    import numpy as np

    from dynafuse.data.core import Bundle, Split

    rng, n = np.random.default_rng(0), 4
    dims = {"text": 8, "audio": 5, "vision": 3}
    splits = {s: Split(ids=np.array([f"{s}{i}" for i in range(n)]), y=np.full(n, value_range / 2, np.float32),
                       features={m: rng.standard_normal((n, 3, dims[m])).astype(np.float32) for m in modalities},
                       lengths={m: np.full(n, 3) for m in modalities},
                       unimodal={m: np.full(n, value_range / 2, np.float32) for m in unimodal})
              for s in ("train", "valid", "test")}
    spec = {"text": {"backbone": "minilm", "layout": "aligned"}, "audio": audio_spec, "vision": {"extractor": "v"}}
    return Bundle(name, splits, value_range=value_range, feature_spec={m: spec[m] for m in modalities})


def test_external_knowledge_data_is_put_on_the_targets_terms(monkeypatch):
    """Synthetic bundles. A [-3, 3] target without unimodal labels learns knowledge from a [-1, 1] external set:
    text (same spec) is provided, audio (another extractor) is not and is fed as missing; labels and unimodal labels
    are rescaled x3; the model's plan (written to run.json) says text external, audio none."""
    from dynafuse.training import run
    from dynafuse.training.settings import build_config

    target = synthetic_bundle("mosi", 3.0, {"extractor": "covarep"}, ())
    external = synthetic_bundle("simsv2", 1.0, {"extractor": "egemaps"}, ("text", "audio", "vision"))
    monkeypatch.setattr(run, "prepare_data", lambda cfg, splits=None: external)
    context, stages = run.data_context(build_config("kuda", "mosi"), target)
    assert context == {"unimodal_labels": [], "stage_modalities": {"unimodal": ["text"]}}
    train = stages["unimodal"].splits["train"]
    assert stages["unimodal"].value_range == 3.0 and (train.y == 1.5).all() and (train.unimodal["text"] == 1.5).all()
    assert (train.lengths["audio"] == 0).all() and (train.lengths["text"] == 3).all()
    model = create_model("kuda", target.input_dims(), CFG, value_range=3.0, **context)
    assert model.run_info()["knowledge"]["text"]["source"] == "external"
    assert model.run_info()["knowledge"]["audio"]["source"] == "none"
    own = synthetic_bundle("sims", 1.0, {"extractor": "egemaps"}, ("text", "audio"))  # no vision, own labels
    context, stages = run.data_context(build_config("kuda", "sims"), own)
    assert stages == {} and {s["source"] for s in create_model(
        "kuda", own.input_dims(), CFG, value_range=1.0, **context).knowledge_sources.values()} == {"own"}


def test_partial_knowledge_ratios_keep_a_fixed_share_for_the_modality_without_knowledge():
    """Synthetic batch, knowledge for text only: audio and vision keep 1/3 of the weight each, text's ratio is 1/3
    (the only knowledge modality takes all of the knowledge share)."""
    model = create_model("kuda", DIMS, CFG, unimodal_labels=(), stage_modalities={"unimodal": ["text"]}).eval()
    with torch.no_grad():
        out = model(synthetic_batch())
    torch.testing.assert_close(out.extras["ratio"], torch.full((5, 3), 1 / 3))


def test_public_code_reference_uses_the_label_in_training_and_no_ratios_at_test():
    model = build(ratio_reference="public_code")
    b = synthetic_batch()
    model.eval()
    with torch.no_grad():
        out = model(b)
    assert (out.extras["ratio"] == 0).all()
    torch.testing.assert_close(out.gates["modality"], torch.full((5, 3), 1 / 3))  # plain presence, normalised
    model.train()
    out = model(b)
    torch.testing.assert_close(out.extras["reference_score"], b.y)
