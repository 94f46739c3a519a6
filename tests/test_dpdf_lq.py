"""DPDF-LQ on synthetic batches (random features from `conftest.synthetic_batch`, not real data): block shapes,
gates, masks, missing modalities, gradients, the ablation switches and the preset."""

from __future__ import annotations

import pytest
import torch

from conftest import DIMS, drop, garbage_padding, synthetic_batch
from dynafuse import losses
from dynafuse.data.core import Batch
from dynafuse.errors import ConfigError
from dynafuse.models import create_model
from dynafuse.models.dpdf_lq import (
    AdaptiveGate,
    ChannelAttention,
    CrossModalTransformer,
    DepthwiseConvBlock,
    DGLQALayer,
    GlobalTokenTransformer,
    PathGate,
    SpatialAttention,
    StandardQueryAttention,
    TextEncoder,
)
from dynafuse.training import build_config

CFG = {"d_model": 16, "heads": 4, "layers": 1, "dropout": 0.1, "query_len": 4, "dglqa_depth": 3,
       "gpath_ca_depth": 2, "lpath_ca_depth": 2, "hidden": 32}
ABLATIONS = {"full": {}, "w/o LPath": {"local_path": False}, "w/o GPath": {"global_path": False},
             "w/o Gate": {"path_gate": False}, "Std.A": {"query_attention": "standard"},
             "w/o DGLQA": {"query_attention": "none"}, "AHL": {"query_attention": "ahl"},
             "w/o GPath CA": {"gpath_ca": False}, "LPath CA <-> GPath CA": {"swap_ca": True}}
MODS = ["text", "audio", "vision"]


def build(task="regression", dims=None, seed=0, **cfg):
    torch.manual_seed(seed)
    return create_model("dpdf_lq", DIMS if dims is None else dims, {**CFG, "task": task, **cfg})


def only(batch: Batch, mods) -> Batch:
    return Batch(x={m: batch.x[m] for m in mods}, mask={m: batch.mask[m] for m in mods}, y=batch.y,
                 index=batch.index)


# --------------------------------------------------------------------------- blocks


def test_block_shapes():
    """Synthetic tensors: each DPDF block's output shapes."""
    torch.manual_seed(0)
    b, d, n = 3, 16, 4
    x, mask = torch.randn(b, 7, 10), torch.tensor([[True] * 7, [True] * 2 + [False] * 5, [False] * 7])
    h = GlobalTokenTransformer(10, d, n, 1, 4, 32, 0.0)(x, mask)
    assert h.shape == (b, n, d)
    assert h[2].abs().max() == 0  # a missing modality gives zero global tokens
    hs = TextEncoder(d, 2, 4, 32, 0.0)(h)
    assert len(hs) == 3 and all(t.shape == (b, n, d) for t in hs)
    assert ChannelAttention(d)(h).shape == (b, n, d)
    tokens = {m: torch.randn(b, n, d) for m in MODS}
    present = torch.ones(b, 3, dtype=torch.bool)
    for block in (DGLQALayer, StandardQueryAttention):
        lq, gate, maps = block(d, MODS, 4, 0.0)(torch.randn(b, n, d), tokens, present)
        assert lq.shape == (b, n, d) and gate.shape == (b, 3)
        assert set(maps) == set(MODS) and all(a.shape == (b, n, n) for a in maps.values())
    assert DepthwiseConvBlock(d)(h).shape == (b, n, d)
    lq2, g = AdaptiveGate(d)(h, hs[-1], torch.randn(b, d))
    assert lq2.shape == g.shape == (b, n, d)
    ca = CrossModalTransformer(d, 2, 4, 32, 0.0)
    f, w = ca(torch.randn(b, 5, d), torch.ones(b, 5, dtype=torch.bool), torch.randn(b, 6, d),
              torch.ones(b, 6, dtype=torch.bool))
    assert f.shape == (b, d) and w.shape == (b, 7, 5)
    f, w = ca(torch.randn(b, 5, d), torch.ones(b, 5, dtype=torch.bool))  # no target: [CLS] alone
    assert f.shape == (b, d) and w.shape == (b, 1, 5)
    xs, a = SpatialAttention(10)(x, mask)
    assert xs.shape == x.shape and a.shape == (b, 7)
    fused, pw = PathGate(d, 32)(torch.randn(b, d), torch.randn(b, d))
    assert fused.shape == (b, d) and pw.shape == (b, 2)


def test_channel_attention_by_hand():
    """Synthetic input: zero weights give s = sigmoid(0) = 0.5 on every channel, so out = x * 0.5 + x."""
    ca = ChannelAttention(8)
    for p in ca.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ca(x), 1.5 * x)


def test_adaptive_gate_by_hand():
    """Synthetic input: a saturated gate keeps the query (G = 1) or takes the text (G = 0), Eq. 24."""
    gate = AdaptiveGate(4)
    torch.nn.init.zeros_(gate.fc.weight)
    lq, ht, f = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 4)
    torch.nn.init.constant_(gate.fc.bias, 50.0)
    torch.testing.assert_close(gate(lq, ht, f)[0], lq)
    torch.nn.init.constant_(gate.fc.bias, -50.0)
    torch.testing.assert_close(gate(lq, ht, f)[0], ht)
    torch.nn.init.constant_(gate.fc.bias, 0.0)
    torch.testing.assert_close(gate(lq, ht, f)[0], (lq + ht) / 2)


def test_dglqa_gate_is_a_softmax_over_present_modalities():
    """Synthetic tokens: the gate sums to 1, a missing modality gets 0 and its tokens do not matter."""
    torch.manual_seed(0)
    layer = DGLQALayer(16, MODS, 4, 0.0).eval()
    tokens = {m: torch.randn(3, 4, 16) for m in MODS}
    present = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    lq = torch.randn(3, 4, 16)
    out, gate, _ = layer(lq, tokens, present)
    torch.testing.assert_close(gate.sum(1), torch.ones(3))
    assert gate[1, 1] == 0 and (gate[0] > 0).all()
    assert torch.isfinite(gate[2]).all()  # nothing present: SoftmaxGate unmasks every option, no NaN
    other = {**tokens, "audio": tokens["audio"].clone()}
    other["audio"][1] = torch.randn(4, 16) * 50
    out2 = layer(lq, other, present)[0]
    torch.testing.assert_close(out[1], out2[1])  # the attention output of a missing modality gets weight 0


def test_spatial_attention_ignores_padding():
    """Synthetic vision: garbage beyond the mask changes neither the rescaled sequence nor the map."""
    sa = SpatialAttention(6)
    x, mask = torch.randn(2, 5, 6), torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    noisy = torch.where(mask.unsqueeze(-1), x, torch.randn_like(x) * 100)
    (a, wa), (b, wb) = sa(x, mask), sa(noisy, mask)
    torch.testing.assert_close(a[mask], b[mask])
    torch.testing.assert_close(wa, wb)
    assert (wb[~mask] == 0).all()


def test_path_gate_is_a_convex_combination():
    """Synthetic path features: weights sum to 1 and the fused vector is their weighted sum (Eq. 34)."""
    torch.manual_seed(0)
    g, l = torch.randn(4, 16), torch.randn(4, 16)
    fused, w = PathGate(16, 32)(g, l)
    torch.testing.assert_close(w.sum(1), torch.ones(4))
    torch.testing.assert_close(fused, w[:, :1] * g + w[:, 1:] * l)


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_gates_and_attention(name):
    """Synthetic batch with audio missing for samples 1 and 3: path gate (B, 2) [global, local] and modality
    gate (B, M) in self.modalities order, both summing to 1; attention maps per part."""
    model = build(**ABLATIONS[name]).eval()
    batch = drop(synthetic_batch(), "audio", [1, 3])
    with torch.no_grad():
        out = model(batch)
    path = out.gates["path"]
    assert path.shape == (5, 2)
    torch.testing.assert_close(path.sum(1), torch.ones(5))
    expected = {"w/o LPath": [1.0, 0.0], "w/o GPath": [0.0, 1.0], "w/o Gate": [0.5, 0.5]}.get(name)
    if expected:
        torch.testing.assert_close(path, torch.tensor(expected).expand(5, 2))
    else:
        assert (path > 0).all()
    if model.use_global:
        gate = out.gates["modality"]
        assert model.modalities == MODS and gate.shape == (5, 3)
        torch.testing.assert_close(gate.sum(1), torch.ones(5))
        weighed = [0, 1, 2] if model.query_attention != "ahl" else [1, 2]  # AHL gives text no share
        assert gate[[1, 3], 1].abs().max() < 1e-6 and (gate[[0, 2, 4]][:, weighed] > 0).all()
        mapped = {"dglqa": MODS, "standard": MODS, "ahl": ["audio", "vision"], "none": []}[model.query_attention]
        assert {f"dglqa_{m}" for m in mapped} <= set(out.attention)
        if model.cfg.gpath_ca:
            assert {"text_ca", "global_ca"} <= set(out.attention)
            n_q, n_k = CFG["query_len"], CFG["query_len"]  # the swapped flow has the same sizes: both are l_t long
            assert out.attention["global_ca"].shape == (5, 1 + n_q, n_k)
    else:
        assert "modality" not in out.gates  # w/o GPath has no modality gate
    if model.use_local:
        t_av, t_text = batch.x["audio"].shape[1] + batch.x["vision"].shape[1], batch.x["text"].shape[1]
        swapped = model.cfg.swap_ca  # the text attends to audio+vision instead
        assert out.attention["local_ca"].shape == ((5, 1 + t_text, t_av) if swapped else (5, 1 + t_av, t_text))
        assert out.attention["spatial"].shape == batch.mask["vision"].shape


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_padding_and_missing_features_are_ignored(name):
    """Synthetic batch, eval mode: garbage under false masks (extra padding, and a missing modality's
    features) does not change the output."""
    model = build(**ABLATIONS[name]).eval()
    batch = drop(synthetic_batch(), "audio", [1, 3])
    scrambled = Batch(x={**batch.x, "audio": torch.randn_like(batch.x["audio"]) * 50}, mask=batch.mask,
                      y=batch.y, index=batch.index)
    with torch.no_grad():
        a, b, c = model(batch), model(garbage_padding(batch)), model(scrambled)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logits[[1, 3]], c.logits[[1, 3]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task", ["regression", "3class"])
@pytest.mark.parametrize("name", list(ABLATIONS))
def test_every_parameter_gets_a_finite_gradient(name, task):
    """Synthetic batch, every modality present: the MSE task loss (the preset's) reaches every parameter."""
    model = build(task, **ABLATIONS[name]).train()
    batch = synthetic_batch()
    out = model(batch)
    loss = losses.task_loss(out.logits, batch.y, task, "mse")
    for weight, term in model.loss_terms().values():
        loss = loss + weight * term(out, batch, task=task, kind="mse")
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("mods", [["text"], ["text", "audio"], ["audio", "vision"]])
@pytest.mark.parametrize("task", ["regression", "3class"])
def test_without_some_modalities_in_the_data(mods, task):
    """Synthetic batches whose input_dims lack modalities: text-only (MOSEI/SIMS here), text+audio (MOSI
    official split), and no text (the paper's "w/o T"): finite outputs, gates over the modalities present."""
    model = build(task, dims={m: DIMS[m] for m in mods})
    assert model.modalities == mods
    batch = only(synthetic_batch(), mods)
    out = model(batch)
    assert out.logits.shape == (5, 1 if task == "regression" else 3) and torch.isfinite(out.logits).all()
    assert out.gates["modality"].shape == (5, len(mods))
    torch.testing.assert_close(out.gates["modality"].sum(1), torch.ones(5))
    torch.testing.assert_close(out.gates["path"].sum(1), torch.ones(5))
    if mods == ["text"]:  # no target for the local path: its [CLS] token alone queries the text
        assert out.attention["local_ca"].shape == (5, 1, batch.x["text"].shape[1])
    losses.task_loss(out.logits, batch.y, task, "mse").backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_missing_modalities_per_sample_are_finite():
    """Synthetic batch: audio+vision missing for all samples and text too for sample 0 (nothing at all)."""
    model = build().eval()
    batch = drop(drop(drop(synthetic_batch(), "audio", slice(None)), "vision", slice(None)), "text", [0])
    with torch.no_grad():
        out = model(batch)
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.gates["modality"].sum(1), torch.ones(5))  # sample 0: an unmasked softmax
    torch.testing.assert_close(out.gates["modality"][1:], torch.tensor([1.0, 0.0, 0.0]).expand(4, 3))


def test_local_path_uses_audio_and_vision():
    """Synthetic batch: f_local changes when only the audio or only the vision features change (the target
    self-attention makes the [CLS] output see the audio-visual queries, Sec. 3.4.2)."""
    model = build(global_path=False).eval()
    batch = synthetic_batch()
    with torch.no_grad():
        base = model(batch).extras["f_local"]
        for m in ("audio", "vision"):
            changed = Batch(x={**batch.x, m: batch.x[m] + torch.randn_like(batch.x[m]) * batch.mask[m][..., None]},
                            mask=batch.mask, y=batch.y, index=batch.index)
            assert not torch.allclose(model(changed).extras["f_local"], base, atol=1e-4)


def test_needs_a_path():
    with pytest.raises(ConfigError):
        build(global_path=False, local_path=False)


def test_preset_holds_table3_and_builds():
    """The preset (Table 3, MOSI) builds at full width on synthetic dims and runs a synthetic batch."""
    cfg = build_config("dpdf_lq", "mosi")
    m, t = cfg["model"], cfg["train"]
    assert (m["d_model"], m["heads"], m["query_len"], m["dglqa_depth"], m["gpath_ca_depth"], m["lpath_ca_depth"],
            m["hidden"]) == (128, 8, 8, 3, 2, 2, 256)
    assert (t["loss"], t["lr"], t["weight_decay"], cfg["data"]["batch_size"]) == ("mse", 1e-4, 1e-4, 64)
    assert all(m[k] is True for k in ("global_path", "local_path", "path_gate", "gpath_ca"))
    assert m["query_attention"] == "dglqa" and m["swap_ca"] is False
    assert (t["max_epochs"], t["patience"]) == (60, 10)
    # the preset's MOSEI section: MOSEI's own epoch budget (255 steps per epoch, not MOSI's 20); an override wins
    mosei = build_config("dpdf_lq", "mosei")
    assert (mosei["train"]["max_epochs"], mosei["train"]["patience"], mosei["model"]) == (20, 4, m)
    assert "datasets" not in mosei
    assert build_config("dpdf_lq", "mosei", ["train.patience=6"])["train"]["patience"] == 6
    torch.manual_seed(0)
    model = create_model("dpdf_lq", DIMS, m).eval()
    with torch.no_grad():
        assert torch.isfinite(model(synthetic_batch()).logits).all()


def test_table2_attention_switches_really_switch(batch):
    """Synthetic batch. w/o DGLQA: no query attention, plain presence shares as the modality gate. AHL: the text
    queries the others, text gets no gate weight. w/o GPath CA: no Eq. 21/25 blocks. The swapped flows, with the
    same weights, give other outputs."""
    from dynafuse.models.dpdf_lq import AHLLayer

    none = build(query_attention="none").eval()
    assert len(none.dglqa) == 0
    with torch.no_grad():
        g = none(batch).gates["modality"]
    torch.testing.assert_close(g, torch.full((5, 3), 1 / 3))
    ahl = build(query_attention="ahl").eval()
    assert all(isinstance(layer, AHLLayer) for layer in ahl.dglqa)
    with torch.no_grad():
        g = ahl(batch).gates["modality"]
    assert (g[:, 0] == 0).all() and torch.allclose(g[:, 1:], torch.full((5, 2), 0.5))
    no_ca = build(gpath_ca=False)
    assert not hasattr(no_ca, "text_ca") and not hasattr(no_ca, "global_ca")
    plain, swapped = build().eval(), build(swap_ca=True).eval()
    swapped.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a, b = plain(batch), swapped(batch)
    assert not torch.allclose(a.extras["f_global"], b.extras["f_global"], atol=1e-4)
    assert not torch.allclose(a.extras["f_local"], b.extras["f_local"], atol=1e-4)
