"""Low-rank adapters (`model.lora_rank`) on a fine-tuned text backbone: which weights train, the start equal to the
plain backbone, CrossSent's layer-by-layer run and KuDA's token-id path through the adapted layers, a training
step, and checkpoints that load weights-only.

Every batch here is synthetic (random token ids and audio/vision features), not real data. The backbones are tiny
randomly initialised BERT and MPNet models saved to temporary folders (any local Hugging Face folder is a valid
backbone), so the file runs in seconds; the last test trains on real MOSI (slow).
"""

from __future__ import annotations

import sys

import pytest
import torch
import yaml

from dynafuse.config import TrainConfig, dump
from dynafuse.errors import ConfigError
from dynafuse.models import create_model
from dynafuse.models.blocks import is_lora_weight
from dynafuse.training import RunDir, build_config
from dynafuse.training.module import LitMSA
from dynafuse.training.run import check_resume, load_weights, read_checkpoint
from test_crosssent import LAYERS, VOCAB, id_batch, total_loss

KINDS = ("bert", "mpnet")
# the attention projections LoRA adapts, per layer: BERT's and MPNet's names
ATTENTION = {"bert": ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"],
             "mpnet": ["attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    """Tiny random BERT and MPNet (3 layers, hidden 32, 4 heads; padding id 0) saved as local HF folders."""
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

    size = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    out = {}
    for kind, (config, model) in {"bert": (BertConfig, BertModel), "mpnet": (MPNetConfig, MPNetModel)}.items():
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(f"tiny_{kind}")
        model(config(**size)).save_pretrained(path)
        out[kind] = str(path)
    return out


def crosssent(tiny, kind, seed=0, **cfg):
    torch.manual_seed(seed)
    return create_model("crosssent", {"text": 0, "audio": 8, "vision": 12},
                        {"inject_layer": 2, "lora_rank": 4, **cfg}, backbone=tiny[kind])


def adapted(model) -> list[str]:
    """The backbone modules that hold an adapter (their lora_A), as `layer.i.<path>`."""
    return sorted(n.split("encoder.encoder.")[1].rsplit(".lora_A", 1)[0]
                  for n, _ in model.named_modules() if n.endswith(".lora_A"))


@pytest.mark.parametrize("kind", KINDS)
def test_adapters_sit_on_the_attention_projections(tiny, kind):
    model = crosssent(tiny, kind)
    assert adapted(model) == sorted(f"layer.{i}.{p}" for i in range(LAYERS) for p in ATTENTION[kind])
    every = crosssent(tiny, kind, lora_targets="all")  # the feed-forward too
    assert set(adapted(every)) - set(adapted(model)) == {f"layer.{i}.{p}" for i in range(LAYERS)
                                                          for p in ("intermediate.dense", "output.dense")}
    top = crosssent(tiny, kind, finetune_layers=1)  # only the top layer's
    assert adapted(top) == sorted(f"layer.{LAYERS - 1}.{p}" for p in ATTENTION[kind])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model_name", ["crosssent", "early_fusion"])
def test_only_adapters_and_the_models_new_layers_train(tiny, kind, model_name):
    """CrossSent (runs the backbone layer by layer) and early fusion (the base class's backbone forward): in the
    backbone only the LoRA A/B matrices train; every weight outside it (GMRA, fusion, head) trains."""
    torch.manual_seed(0)
    cfg = {"lora_rank": 4, **({"inject_layer": 2} if model_name == "crosssent" else {})}
    model = create_model(model_name, {"text": 0, "audio": 8}, cfg, backbone=tiny[kind])
    backbone = {n: p.requires_grad for n, p in model.named_parameters() if n.startswith("text_backbone.")}
    trained = sorted(n for n, on in backbone.items() if on)
    assert trained and all(is_lora_weight(n) for n in trained)
    assert len(trained) == 2 * LAYERS * len(ATTENTION[kind])  # A and B of each adapted projection
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("text_backbone."))
    # the optimiser: adapters at train.lr with the new layers, no pretrained weight at all
    groups = LitMSA(model, TrainConfig(), 3.0).configure_optimizers().param_groups
    assert len(groups) == 1 and groups[0]["lr"] == TrainConfig().lr
    assert len(groups[0]["params"]) == sum(p.requires_grad for p in model.parameters())


def plain_weights_into(lora_model, plain_model) -> None:
    """Copy a plain model's weights into the same model with adapters (peft keeps W0 as `<name>.base_layer`)."""
    plain = plain_model.state_dict()
    state = {k: plain[k.replace(".base_layer", "")] for k in lora_model.state_dict() if ".lora_" not in k}
    result = lora_model.load_state_dict(state, strict=False)
    assert all(".lora_" in k for k in result.missing_keys) and not result.unexpected_keys


@pytest.mark.parametrize("kind", KINDS)
def test_starts_as_the_plain_backbone_and_runs_the_adapted_layers(tiny, kind):
    """LoRA's B starts at zero: with the same weights the model's outputs equal the plain model's exactly. Once B
    moves, CrossSent's layer-by-layer run (embeddings, encoder.layer[i]; MPNet's position bias) still equals the
    adapted backbone's own forward, so the layers it calls are the adapted ones, and the output moves."""
    plain = crosssent(tiny, kind, seed=0, lora_rank=None).eval()
    model = crosssent(tiny, kind, seed=1).eval()
    assert all(p.abs().max() == 0 for n, p in model.named_parameters() if "lora_B" in n)
    plain_weights_into(model, plain)
    b = id_batch()
    with torch.no_grad():
        a, ref = model(b), plain(b)
    torch.testing.assert_close(a.logits, ref.logits, atol=1e-6, rtol=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
        moved = model(b)
        no_av = {m: (x, torch.zeros_like(mask)) for m, (x, mask) in model.av_inputs(b).items()}
        h, _ = model.encode_text(b.x["text"], b.mask["text"], no_av)  # GMRA is a no-op without audio/vision
        hf = model.text_backbone(b.x["text"], b.mask["text"])
    assert not torch.allclose(moved.logits, ref.logits, atol=1e-4)
    m = b.mask["text"]
    torch.testing.assert_close(h[m], hf[m], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_step_lowers_the_loss(tiny, kind):
    """Synthetic batch of 5: a few AdamW steps of the trainer's optimiser (adapters + new layers) lower the loss
    (dropout off, so the loss is a function of the weights); the pretrained weights do not move."""
    model = crosssent(tiny, kind, dropout=0.0, lora_dropout=0.0).eval()
    lit = LitMSA(model, TrainConfig(lr=1e-2), 3.0)
    opt = lit.configure_optimizers()
    b = id_batch()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    losses = []
    for _ in range(4):
        loss = total_loss(model, model(b), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(p.abs().max() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # the adapters moved


def test_checkpoint_round_trip_loads_weights_only(tiny, tmp_path):
    """The adapters save as plain tensors: the checkpoint reads with torch's weights-only loader and a freshly
    built model (other seed) given it computes the same outputs."""
    model = crosssent(tiny, "mpnet", seed=0).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": LitMSA(model, TrainConfig(), 3.0).state_dict()}, path)
    assert any(".lora_A." in k for k in read_checkpoint(path)["state_dict"])  # weights_only=True
    fresh = LitMSA(crosssent(tiny, "mpnet", seed=5), TrainConfig(), 3.0)
    load_weights(fresh, path)
    b = id_batch()
    with torch.no_grad():
        torch.testing.assert_close(fresh.model.eval()(b).logits, model(b).logits, atol=0, rtol=0)


def test_a_broken_checkpoint_is_named_as_such_with_or_without_allow_pickle(tmp_path):
    """Empty, random bytes, cut in half: one line each that says what is wrong, never a request for --allow-pickle."""
    from dynafuse.errors import DynafuseError

    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(64, 64)}}, good)
    cases = {"empty.ckpt": b"", "random.ckpt": bytes(range(256)) * 20, "cut.ckpt": good.read_bytes()[:3000]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        for allow in (False, True):
            with pytest.raises(DynafuseError, match="empty checkpoint" if not data else "corrupt or truncated") as e:
                read_checkpoint(tmp_path / name, allow)
            assert name in str(e.value) and "allow-pickle" not in str(e.value) and "\n" not in str(e.value)


def test_kuda_tunes_only_the_adapters_in_its_fusion_stage(tiny):
    """KuDA's token-id path (the backbone's hidden states feed its text adapters): stage 1 keeps the backbone
    frozen; stage 2 with finetune_backbone trains the LoRA adapters only. LoRA on a backbone KuDA keeps frozen
    is refused in one line."""
    cfg = {"d_model": 16, "heads": 4, "layers": 2, "adapter_bottleneck": 8, "text_adapters": 3, "lora_rank": 4}
    torch.manual_seed(0)
    model = create_model("kuda", {"text": 0, "audio": 8}, {**cfg, "finetune_backbone": True}, backbone=tiny["bert"])
    model.stage_setup("unimodal")
    assert not any(p.requires_grad for p in model.text_backbone.parameters())
    model.stage_setup("fusion")
    trained = [n for n, p in model.text_backbone.named_parameters() if p.requires_grad]
    assert trained and all(is_lora_weight(n) for n in trained)
    b = id_batch(vision=(0, 0, 0, 0, 0), dims={"audio": 8})
    model.train()
    total_loss(model, model(b), b).backward()
    assert all(p.grad is not None for n, p in model.text_backbone.named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="finetune_backbone=true"):
        create_model("kuda", {"text": 0, "audio": 8}, cfg, backbone=tiny["bert"])


def test_without_peft_or_without_a_backbone_is_one_line(tiny, monkeypatch):
    with pytest.raises(ConfigError, match="frozen features: set data.text.finetune=true"):
        create_model("early_fusion", {"text": 16, "audio": 8}, {"lora_rank": 4})
    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed: importing it fails
    with pytest.raises(ConfigError, match=r'needs peft: pip install "dynafuse\[lora\]"'):
        crosssent(tiny, "bert")


def test_a_run_from_before_the_lora_keys_still_resumes(tmp_path):
    """A run folder whose config.yaml predates the lora_* keys: --resume reads it through the schema (the keys
    take their defaults), so it is the same config, not a changed one."""
    cfg = build_config("crosssent", "mosi", ["model.finetune_layers=2"])
    old = yaml.safe_load(dump(cfg))
    for key in [k for k in old["model"] if k.startswith("lora_")]:
        del old["model"][key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    check_resume(RunDir(tmp_path), cfg, lit=None)  # no checkpoints here: only the configs are compared
    with pytest.raises(ConfigError, match="model.lora_rank: None -> 8"):
        check_resume(RunDir(tmp_path), build_config("crosssent", "mosi", ["model.finetune_layers=2",
                                                                            "model.lora_rank=8"]), lit=None)


@pytest.mark.slow
def test_a_finished_lora_run_rebuilds_the_same_model(data_dir, tmp_path):
    """Real MOSI (first 64 rows of each split), CrossSent on MiniLM with LoRA rank 4, one epoch: `load_model`
    rebuilds the model from the run folder alone and `eval` reproduces the run's metrics."""
    from dynafuse.training import evaluate_run, load_model, train

    cfg = build_config("crosssent", "mosi", [f"data.data_dir={data_dir}", "data.limit=64", "train.max_epochs=1",
                                             "train.progress=false", "model.lora_rank=4"])
    metrics = train(cfg, tmp_path)
    _, info, lit = load_model(tmp_path)
    assert info["trainable_params"] < info["params"] / 10
    assert any(".lora_B." in n for n, _ in lit.model.named_parameters())
    assert evaluate_run(tmp_path) == metrics
