"""Shared fixtures: the real data folder (skipped when absent) and small synthetic batches."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from dynafuse.data.core import Batch

REPO = Path(__file__).resolve().parents[1]
DIMS = {"text": 16, "audio": 8, "vision": 12}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real benchmark data: $DYNAFUSE_DATA, else ../shared/datasets beside the project root."""
    p = Path(os.environ.get("DYNAFUSE_DATA") or REPO.parent / "shared" / "datasets")
    if not p.is_dir():
        pytest.skip(f"real data folder not found at {p}")
    return p


def synthetic_batch(lengths: dict[str, list[int]] | None = None, dims: dict[str, int] | None = None,
                    seed: int = 0, pad_to: int | None = None, y: list[float] | None = None) -> Batch:
    """A synthetic Batch (random features, not real data): `lengths[m]` gives each sample's length in m.

    Padded positions hold zeros; the mask is true exactly on the first `length` steps of each row.
    """
    dims = dict(DIMS if dims is None else dims)
    lengths = lengths or {"text": [5, 3, 1, 4, 2], "audio": [2, 6, 4, 1, 3], "vision": [3, 3, 5, 2, 1]}
    g = torch.Generator().manual_seed(seed)
    b = len(next(iter(lengths.values())))
    x, mask = {}, {}
    for m, d in dims.items():
        n = torch.tensor(lengths[m])
        t = max(pad_to or 0, int(n.max()), 1)
        mask[m] = torch.arange(t)[None, :] < n[:, None]
        x[m] = torch.randn(b, t, d, generator=g) * mask[m].unsqueeze(-1)
    y_t = torch.tensor(y, dtype=torch.float32) if y is not None else torch.rand(b, generator=g) * 6 - 3
    return Batch(x=x, mask=mask, y=y_t, index=torch.arange(b))


@pytest.fixture
def make_batch():
    """Factory for synthetic batches (see `synthetic_batch`)."""
    return synthetic_batch


@pytest.fixture
def batch() -> Batch:
    """A synthetic batch of 5 samples with different lengths per modality, every modality present."""
    return synthetic_batch()


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny synthetic models run fastest on one thread and do not stall when other jobs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def ctrl_c_reaches_children():
    """Ctrl-C (SIGINT) back to Python's handler before each test. A library run in this process (Lightning after
    an interrupt, Ray, a server) may leave SIGINT ignored, and a child started then inherits "ignored": Python does
    not install its KeyboardInterrupt handler in it, and the Ctrl-C tests' subprocesses would run to the end."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


def drop(batch: Batch, modality: str, rows) -> Batch:
    """Mark `modality` missing (all-false mask) for `rows`; its features stay in place as garbage."""
    mask = {m: v.clone() for m, v in batch.mask.items()}
    mask[modality][rows] = False
    return Batch(x=batch.x, mask=mask, y=batch.y, index=batch.index, y_uni=batch.y_uni)


def garbage_padding(batch: Batch, extra: int = 3) -> Batch:
    """The same batch, `extra` steps longer, with large random values in every masked position.

    Token-id (int64) text is padded with random ids instead."""
    g = torch.Generator().manual_seed(7)
    x, mask = {}, {}
    for m, v in batch.x.items():
        b, t = v.shape[:2]
        mask[m] = torch.cat([batch.mask[m], torch.zeros(b, extra, dtype=torch.bool)], 1)
        full = torch.cat([v, torch.zeros(b, extra, *v.shape[2:], dtype=v.dtype)], 1)
        noise = (torch.randint(1, 100, full.shape, generator=g) if v.dtype == torch.long
                 else torch.randn(full.shape, generator=g) * 100)
        keep = mask[m].view(b, t + extra, *([1] * (v.dim() - 2)))
        x[m] = torch.where(keep, full, noise)
    return Batch(x=x, mask=mask, y=batch.y, index=batch.index, y_uni=batch.y_uni)


@pytest.fixture(scope="session")
def media_clips() -> dict[str, Path]:
    """Small real clips (face video, espeak speech, silent, corrupt...) by name; see tests/media_clips.py."""
    from media_clips import build_clips

    return build_clips(REPO / ".cache" / "media" / "clips")


@pytest.fixture(scope="session")
def extracted(tmp_path_factory, media_clips):
    """The source folder and one extraction with a process pool of 2 workers."""
    for module in ("av", "faster_whisper", "opensmile"):
        pytest.importorskip(module, reason="the media extra is not installed")
    from dynafuse.media.extract import extract_dataset
    from media_clips import make_source

    root = tmp_path_factory.mktemp("extract")
    src = make_source(root / "src", media_clips)
    summary = extract_dataset(src, root / "out", workers=2, progress=False)
    return src, root / "out", summary


@pytest.fixture(scope="session")
def text_run(data_dir, tmp_path_factory):
    """Like `make demo`'s run (early fusion on real MOSI, text + the dataset's own audio vectors), but tiny."""
    from dynafuse.training import build_config, train

    run = tmp_path_factory.mktemp("mosi-text-run")
    train(build_config("early_fusion", "mosi", [f"data.data_dir={data_dir}", "data.limit=64",
                                                "train.max_epochs=1", "train.progress=false"]), run)
    return run


@pytest.fixture(scope="session")
def media_run(extracted, tmp_path_factory):
    """DAF (it has modality gates) trained on the folder `dynafuse extract` made from the test clips."""
    from dynafuse.training import build_config, train

    run = tmp_path_factory.mktemp("media-run")
    train(build_config("daf", f"path:{extracted[1]}", ["train.max_epochs=1", "train.progress=false"]), run)
    return run


@pytest.fixture(scope="session")
def real_clip(data_dir) -> tuple[Path, str]:
    """A real CMU-MOSI clip from ../shared/media/real (a train-split clip: for the media path, not for accuracy)
    and its reference transcript from the dataset's label.csv."""
    import csv

    folder = data_dir.parent / "media" / "real"
    if not (folder / "manifest.csv").is_file():
        pytest.skip(f"the real clips are not at {folder}")
    with open(folder / "manifest.csv", newline="") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    name = "mosi_Sqr0AcuoNnk_12.mp4"
    return folder / name, rows[name]["transcript"]


@pytest.fixture(scope="session")
def live_server(media_run, text_run, tmp_path_factory):
    """`dynafuse serve` in its own process on a free loopback port, with the DAF media run (default, named `daf`)
    and the MOSI text run (`mosi`): its base URL. Stopped with SIGINT at the end; a traceback in its log fails."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:  # a free port; the tiny race with another process is acceptable in tests
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dynafuse.cli", "serve", "--run", f"daf={media_run}",
                                 "--run", f"mosi={text_run}", "--port", str(port), "--queue", "2"],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"dynafuse serve did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
