"""Typed configs: every section rejects unknown keys, wrong types and values out of range, in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from dynafuse.cli import main
from dynafuse.config import dump
from dynafuse.errors import ConfigError
from dynafuse.training import RunDir, build_config, run_config
from dynafuse.training.run import choose_threads


@pytest.mark.parametrize("override, words", [
    ("model.dropuot=0.3", ["model.dropuot", "dropout"]),
    ("train.lrr=0.1", ["train.lrr", "lr"]),
    ("data.batchsize=8", ["data.batchsize", "batch_size"]),
    ("data.text.max_lenn=8", ["data.text.max_lenn", "max_len"]),
    ("data.options.text_colum=text", ["text_colum", "text_column"]),
    ("varaint=x", ["varaint", "variant"]),
])
def test_unknown_key_in_each_section_names_it_and_the_closest(override, words):
    with pytest.raises(ConfigError) as e:
        build_config("daf", "mosi", [override])
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("train.lr=fast", "train.lr"), ("data.batch_size=many", "data.batch_size"), ("model.dynamic=maybe", "model.dynamic"),
    ("train=5", "train"), ("model=[1, 2]", "model"),
])
def test_wrong_type_is_one_line(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config("daf", "mosi", [override])


@pytest.mark.parametrize("override", ["train.lr=-0.001", "data.batch_size=0", "model.dropout=1.5",
                                      "train.max_epochs=0", "data.value_range=5", "train.devices=0",
                                      "train.warmup_ratio=1", "model.task=binary", "train.monitor=accuracy",
                                      "train.threads=0", "train.threads=many"])
def test_out_of_range_is_refused_before_any_data(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        build_config("daf", "mosi", [override])


def test_threads_default_environment_and_auto(monkeypatch):
    """One thread unless told: train.threads wins over $DYNAFUSE_THREADS; auto takes the cores the 1-minute load
    leaves free, shared by the run's processes; each answer says why."""
    monkeypatch.delenv("DYNAFUSE_THREADS", raising=False)
    n, why = choose_threads(None)
    assert n == 1 and why.startswith("the default")
    assert choose_threads(3) == (3, "train.threads=3")
    monkeypatch.setenv("DYNAFUSE_THREADS", "2")
    assert choose_threads(None) == (2, "$DYNAFUSE_THREADS=2") and choose_threads(3)[0] == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.5, 0.0, 0.0))
    assert choose_threads("auto", devices=2)[0] == 2  # int(8 - 2.5) = 5 free cores over 2 processes
    monkeypatch.setattr(os, "getloadavg", lambda: (11.0, 0.0, 0.0))
    assert choose_threads("auto")[0] == 1  # a saturated machine: still one
    monkeypatch.setenv("DYNAFUSE_THREADS", "lots")
    with pytest.raises(ConfigError, match=r"\$DYNAFUSE_THREADS='lots'"):
        choose_threads(None)


def test_presets_and_overrides_merge_in_order(tmp_path):
    cfg = build_config("dpdf_lq", "mosei")
    assert cfg.model.d_model == 128 and cfg.data.batch_size == 64 and cfg.train.max_epochs == 20  # mosei section
    f = tmp_path / "mine.yaml"
    f.write_text("train:\n  max_epochs: 7\n")
    assert build_config("dpdf_lq", "mosei", ["train.max_epochs=9"], f).train.max_epochs == 9
    assert build_config("dpdf_lq", "mosei", [], f).train.max_epochs == 7
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mine.yaml"):
        build_config("daf", "mosi", [], f)
    f.write_text("train: {lr: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        build_config("daf", "mosi", [], f)


def test_saved_config_is_complete_and_loads_back(tmp_path):
    cfg = build_config("kuda", "mosi", ["model.k=0.5", "train.seed=3"])
    run = RunDir(tmp_path)
    run.write_config(dump(cfg))
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["k"] == 0.5 and "fusion_layers" in saved["model"] and saved["train"]["seed"] == 3
    assert run_config(run) == cfg


def test_cli_unknown_key_is_one_line_exit_2(capsys):
    assert main(["train", "--model", "daf", "--dataset", "mosi", "model.dropuot=0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dropuot" in err and "dropout" in err


@pytest.mark.parametrize("model", ["early_fusion", "late_fusion", "attention_fusion"])
def test_paper_preset_2501_is_mosei_3class_cross_entropy_adam(model):
    import torch
    from omegaconf import OmegaConf

    from dynafuse.models import create_model
    from dynafuse.training.module import LitMSA

    cfg = build_config(model, "mosei", preset="2501.08085")
    assert cfg.model.task == "3class" and cfg.train.optimizer == "adam" and cfg.train.monitor == "acc3"
    lit = LitMSA(create_model(model, {"text": 8}, cfg.model), OmegaConf.to_object(cfg.train), 3.0)
    assert type(lit.configure_optimizers()) is torch.optim.Adam
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config(model, "mosei", preset="nope")


def test_kuda_preset_is_the_public_codes():
    """MKMaS-GUET/KuDA's settings (opts.py, pretrain.py, train.py): MSE, AdamW 3e-5 / wd 1e-5 in stage 2,
    1e-4 / 1e-3 in stage 1, dropout 0.3; the backbone frozen unless asked (stage-2 fine-tuning is an option)."""
    cfg = build_config("kuda", "simsv2")
    assert (cfg.train.loss, cfg.train.lr, cfg.train.weight_decay, cfg.model.dropout) == ("mse", 3e-5, 1e-5, 0.3)
    assert (cfg.train.stages.unimodal.lr, cfg.train.stages.unimodal.weight_decay) == (1e-4, 1e-3)
    assert cfg.model.finetune_backbone is False
    assert build_config("kuda", "simsv2", ["model.finetune_backbone=true"]).model.finetune_backbone is True


def test_kuda_narrow_preset_is_the_measured_old_preset_variant():
    """`--preset kuda-narrow` gives exactly the settings KuDA used before issue 13 (the README quotes main.yaml's
    `old-preset` cells, which run with this preset, for it)."""
    grid = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "main.yaml").read_text())["grid"]
    block = next(b for b in grid if "old-preset" in (b.get("variants") or {}))
    assert block["preset"] == "kuda-narrow" and block["variants"]["old-preset"] == []
    earlier = ["train.loss=l1", "train.lr=3e-4", "model.dropout=0.1", "train.warmup_ratio=0", "train.weight_decay=1e-4",
               "train.max_epochs=40", "train.patience=8", "train.stages.unimodal.lr=3e-4",
               "train.stages.unimodal.weight_decay=1e-4"]
    from_preset = build_config("kuda", "simsv2-scores", preset="kuda-narrow")
    from_variant = build_config("kuda", "simsv2-scores", earlier)
    assert OmegaConf.to_container(from_preset) == OmegaConf.to_container(from_variant)
    assert from_preset.train.loss == "l1" and from_preset.train.stages.unimodal.lr == 3e-4


def test_a_preset_is_for_its_models_and_keeps_their_dataset_budget(capsys):
    """A preset names the models it was written for (another model is refused in one line) and carries its own
    per-dataset settings (KuDA's shorter MOSEI schedule survives kuda-narrow); `--preset` is given once."""
    with pytest.raises(ConfigError, match="preset 'kuda-narrow' is for kuda, not daf"):
        build_config("daf", "simsv2-scores", preset="kuda-narrow")
    with pytest.raises(ConfigError, match="is for early_fusion"):
        build_config("kuda", "mosei", preset="2501.08085")
    mosei = build_config("kuda", "mosei", preset="kuda-narrow")
    assert (mosei.train.max_epochs, mosei.train.patience, mosei.train.loss) == (10, 3, "l1")
    with pytest.raises(SystemExit):
        main(["train", "--model", "kuda", "--dataset", "mosi", "--preset", "kuda-narrow", "--preset", "2501.08085"])
    assert "--preset given twice" in capsys.readouterr().err


def test_unknown_stage_names_are_refused():
    """A typo in a stage name (train.stages.NAME, train.skip_stages) would be ignored in silence: one line."""
    with pytest.raises(ConfigError, match="train stage 'unimodl': kuda trains in the stages unimodal, fusion"):
        build_config("kuda", "mosi", ["train.stages.unimodl.lr=1e-3"])
    with pytest.raises(ConfigError, match="train stage 'foo': daf trains in the stage main"):
        build_config("daf", "mosi", ["train.skip_stages=[foo]"])
    assert build_config("kuda", "mosi", ["train.skip_stages=[unimodal]"]).train.skip_stages == ["unimodal"]


@pytest.mark.parametrize("override, words", [
    ("model.modalities=text", "model.modalities must be a list, e.g. model.modalities=[text,audio]"),
    ("model.modalities=[smell]", "'smell' is not a modality; choose from text, audio, vision"),
    ("=3", "must look like key.path=value (a key is empty)"),
    ("train..lr=3", "must look like key.path=value (a key is empty)"),
])
def test_malformed_overrides_say_what_is_wrong(override, words):
    with pytest.raises(ConfigError) as e:
        build_config("daf", "mosi", [override])
    assert words in str(e.value)
