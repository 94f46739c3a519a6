"""`dynafuse serve`: the HTTP API through FastAPI's TestClient on a real MOSI clip, every bad input, the bounded
queue, the time limit, private uploads; the server over loopback; batch `dynafuse predict DIR`."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from dynafuse.cli import main
from dynafuse.errors import ConfigError
from media_clips import SENTENCE

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
pytest.importorskip("fastapi", reason="the serve extra is not installed")


@pytest.fixture(scope="module")
def service(media_run, text_run):
    """The DAF media run (default) and the MOSI text run, loaded and warmed once; queue 2 (capacity 3)."""
    from dynafuse.serve import Service

    s = Service({"daf": media_run, "mosi": text_run}, queue=2, timeout=120)
    yield s
    s.close()
    assert not s.upload_root.exists()


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    from dynafuse.serve import create_app

    with TestClient(create_app(service)) as c:
        yield c


@pytest.fixture(autouse=True)
def nothing_left(request):
    """After every test of this module that uses the service, its upload folder is empty: every upload was
    removed, whether the request scored, failed, or was refused."""
    yield
    if "service" in request.fixturenames:
        root = request.getfixturevalue("service").upload_root
        assert root.is_dir() and not list(root.iterdir())


def post(client, clip: Path | tuple, **fields):
    """POST /predict with `clip` (a path, or a (name, bytes, type) tuple) and text fields."""
    file = (clip.name, clip.read_bytes(), "video/mp4") if isinstance(clip, Path) else clip
    return client.post("/predict", files={"clip": file}, data=fields)


def test_health_and_runs(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["runs"] == ["daf", "mosi"] and health["capacity"] == 3
    assert ".mp4" in health["suffixes"] and health["max_upload_bytes"] == 50 * 2**20
    daf, mosi = client.get("/runs").json()
    assert daf["default"] and daf["model"] == "daf" and daf["ignored"] == {} and daf["range"] == [-3.0, 3.0]
    assert daf["feature_spec"]["audio"]["extractor"] == "egemaps" and daf["feature_spec"]["vision"]["dim"] == 1441
    assert mosi["model"] == "early_fusion" and "came with the dataset 'mosi'" in mosi["ignored"]["audio"]
    assert daf["warm_up_s"] > 0


def test_real_clip_gives_the_json_of_predict(client, real_clip, media_run, capsys):
    """A real MOSI clip with its transcript: every modality used, gates that sum to 1, and the object
    `dynafuse predict --json` prints for the same clip and run (timings and the clip's path aside)."""
    clip, transcript = real_clip
    r = post(client, clip, transcript=transcript)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["clip"] == clip.name and got["model"] == "daf" and -3 <= got["score"] <= 3
    assert got["transcript"] == transcript and got["transcript_source"] == "given+asr-timing"
    assert {m: s["used"] for m, s in got["modalities"].items()} == {"text": True, "audio": True, "vision": True}
    assert math.isclose(sum(got["gates"]["modality"].values()), 1, abs_tol=1e-3)
    assert main(["predict", str(clip), "--run", str(media_run), "--json", "--transcript", transcript]) == 0
    want = json.loads(capsys.readouterr().out)
    assert set(got) == set(want) and set(got["timings"]) == set(want["timings"])
    for key in ("run", "model", "range", "polarity", "level", "transcript", "transcript_source", "modalities"):
        assert got[key] == want[key], key
    assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    assert got["gates"] == {g: pytest.approx(w, abs=1e-4) for g, w in want["gates"].items()}


def test_run_by_name_and_asr_transcript(client, real_clip):
    """The MOSI text run, chosen by name, with whisper's transcript; its audio came with the dataset."""
    from dynafuse.media.asr import word_error_rate

    clip, reference = real_clip
    r = post(client, clip, run="mosi")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["model"] == "early_fusion" and got["transcript_source"] == "asr" and got["gates"] == {}
    assert word_error_rate(reference, got["transcript"]) <= 0.2
    assert got["modalities"]["text"]["used"] and not got["modalities"]["audio"]["used"]
    assert "came with the dataset 'mosi'" in got["modalities"]["audio"]["note"]


PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


@pytest.mark.parametrize("files, data, status, message", [
    (None, None, 400, "no clip"),                                                   # no body at all
    ({"transcript": (None, "hello")}, None, 400, "no clip"),                        # a form without the file
    ({"clip": ("empty.mp4", b"", "video/mp4")}, None, 400, "empty.mp4: the clip is empty (0 bytes)"),
    ({"clip": ("notes.txt", b"hello", "text/plain")}, None, 415, "notes.txt: unsupported type"),
    ({"clip": ("photo.mp4", PNG, "image/png")}, None, 415, "photo.mp4: unsupported type (image/png"),
    ({"clip": ("noise.mp4", bytes(range(256)) * 40, "video/mp4")}, None, 422, "noise.mp4: cannot decode"),
    ({"clip": ("a.mp4", b"x", "video/mp4")}, {"run": "nope"}, 404, "unknown run 'nope'; loaded: daf, mosi"),
    ({"run": ("run.txt", b"daf", "text/plain")}, None, 400, "the form field `run` must be text, not a file"),
    ({"clip": ("a.mp4", b"x", "video/mp4"), "more": ("b.mp4", b"x", "video/mp4")}, None, 400, "Too many files"),
])
def test_bad_requests_get_one_clear_json_error(client, files, data, status, message):
    r = client.post("/predict", files=files, data=data)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert list(r.json()) == ["error"]


def test_a_form_that_is_not_multipart_is_415(client):
    r = client.post("/predict", data={"transcript": "hello"})
    assert r.status_code == 415 and "application/x-www-form-urlencoded" in r.json()["error"]


def test_clips_that_cannot_be_scored_are_422_naming_the_upload(client, service, media_clips):
    for name, problem in (("corrupt", "cannot decode"), ("truncated", "truncated")):
        r = post(client, media_clips[name])
        assert r.status_code == 422 and r.json()["error"].startswith(f"{name}.mp4: ") and problem in r.text
        assert str(service.upload_root) not in r.text  # the server's own paths stay private
    r = post(client, media_clips["speech_face"], transcript="   ")
    assert r.status_code == 422 and "empty transcript" in r.json()["error"]


def test_unknown_page_is_json_404(client):
    r = client.get("/no/such/page")
    assert r.status_code == 404 and r.json() == {"error": "no such page: GET /no/such/page"}


def test_upload_over_the_configured_limit_is_413(text_run, real_clip):
    """--max-upload-mb 0.1 (100 KiB) against the 151 KB clip: refused from its Content-Length, and, sent chunked
    with no length, refused while it streams in."""
    from fastapi.testclient import TestClient

    from dynafuse.serve import Service, create_app

    clip = real_clip[0].read_bytes()
    service = Service({"mosi": text_run}, max_upload_mb=0.1, warm=False)
    try:
        client = TestClient(create_app(service))
        r = post(client, real_clip[0])
        assert r.status_code == 413 and r.json()["error"] == "the upload is larger than the 0.1 MB limit " \
                                                             "(--max-upload-mb)"
        boundary = "dynafuse-test-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"clip\"; filename=\"big.mp4\"\r\n"
                f"Content-Type: video/mp4\r\n\r\n").encode() + clip + f"\r\n--{boundary}--\r\n".encode()
        chunks = (body[i:i + 8192] for i in range(0, len(body), 8192))  # a generator: sent chunked, no length
        r = client.post("/predict", content=chunks,
                        headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413 and "0.1 MB limit" in r.json()["error"]
        assert client.get("/health").json()["busy"] == 0 and not list(service.upload_root.iterdir())
    finally:
        service.close()


@contextmanager
def held_worker(service, n: int):
    """Take `n` slots with jobs that wait until the block ends: the worker is busy and n - 1 jobs queue."""
    release = threading.Event()
    futures = [service.admit().submit(release.wait, 60) for _ in range(n)]
    try:
        yield
    finally:
        release.set()
        for f in futures:
            f.result(timeout=60)
        deadline = time.monotonic() + 10
        while service.health()["busy"] and time.monotonic() < deadline:  # done-callbacks free the slots
            time.sleep(0.01)


def test_a_full_queue_gets_503_with_retry_after(client, service, real_clip):
    with held_worker(service, service.capacity):
        assert client.get("/health").json()["busy"] == service.capacity
        r = post(client, real_clip[0])
        assert r.status_code == 503 and "busy" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
    assert client.get("/health").json()["busy"] == 0
    r = post(client, real_clip[0], transcript=real_clip[1])  # the slots are back
    assert r.status_code == 200, r.text


def test_time_limit_is_504_and_a_dropped_clip_leaves_nothing(client, service, real_clip, monkeypatch):
    """The worker is held, so the clip waits past the limit: 504, and its upload folder is already gone."""
    monkeypatch.setattr(service, "timeout", 0.5)
    with held_worker(service, 1):
        r = post(client, real_clip[0])
        assert r.status_code == 504 and "longer than the 0.5 s limit" in r.json()["error"]
        assert len(list(service.upload_root.iterdir())) == 1  # only the held job's folder


@pytest.mark.parametrize("filename, status, echoed", [
    ("../../escape.mp4", 422, "escape.mp4"), ("..\\..\\escape.mp4", 422, "escape.mp4"),
    ("/tmp/escape.mp4", 422, "escape.mp4"), ("a/../../../escape.mp4", 422, "escape.mp4"),
    ("....//....//escape.mp4", 422, "escape.mp4"), ("..", 415, "clip"), ("escape.mp4/..", 415, "clip")])
def test_the_client_file_name_never_becomes_a_path(client, service, media_clips, monkeypatch, filename, status,
                                                    echoed):
    """Whatever the name, the clip is written as <upload root>/<fresh folder>/clip<suffix>; the name is only
    echoed back, reduced to its last component (a name without a media suffix is 415)."""
    seen = []
    real = service.predictors["daf"]

    def spy(path, transcript=None):
        seen.append(Path(path))
        assert Path(path).is_file()
        return real(path, transcript)

    monkeypatch.setitem(service.predictors, "daf", spy)
    r = client.post("/predict", files={"clip": (filename, media_clips["corrupt"].read_bytes(), "video/mp4")})
    assert r.status_code == status and r.json()["error"].startswith(f"{echoed}: "), r.text
    if status == 422:  # scored (and failed to decode) from inside the upload root
        assert len(seen) == 1 and seen[0].parent.parent == service.upload_root and seen[0].name == "clip.mp4"
    for outside in (Path("/tmp/escape.mp4"), service.upload_root.parent / "escape.mp4", Path.cwd() / "escape.mp4"):
        assert not outside.exists()


def test_run_names_from_the_command_line(tmp_path):
    from dynafuse.cli import build_parser
    from dynafuse.serve import parse_runs

    assert parse_runs(["runs/a/", "b=runs/x", "runs/c=d"]) == {"a": Path("runs/a/"), "b": Path("runs/x"),
                                                                 "c=d": Path("runs/c=d")}
    with pytest.raises(ConfigError, match="two runs are named 'a'"):
        parse_runs(["x/a", "y/a"])
    a = build_parser().parse_args(["serve", "--run", "r1", "--run", "r2", "--max-upload-mb", "2", "--queue", "0"])
    assert (a.run, a.max_upload_mb, a.queue, a.host, a.port) == (["r1", "r2"], 2.0, 0, "127.0.0.1", 8000)


def test_serve_with_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["serve", "--run", str(tmp_path / "no-such-run")]) == 2
    err = capsys.readouterr().err
    assert "no such run folder" in err and "no-such-run" in err and len(err.strip().splitlines()) == 1


def test_live_server_over_loopback(live_server, real_clip):
    """The real `dynafuse serve` process (uvicorn on 127.0.0.1): the page, its script, and a scored clip."""
    import httpx

    page = httpx.get(live_server + "/", timeout=10)
    assert page.status_code == 200 and 'id="predict-form"' in page.text
    for asset in ("app.js", "style.css"):  # served by the app; nothing on the page points off this machine
        r = httpx.get(f"{live_server}/static/{asset}", timeout=10)
        assert r.status_code == 200 and "://" not in r.text
    assert "://" not in page.text
    clip, transcript = real_clip
    r = httpx.post(live_server + "/predict", files={"clip": (clip.name, clip.read_bytes(), "video/mp4")},
                   data={"transcript": transcript}, timeout=120)
    assert r.status_code == 200 and r.json()["clip"] == clip.name and r.json()["model"] == "daf"


def test_predict_a_folder_prints_one_json_line_per_clip(text_run, media_clips, tmp_path, capsys):
    """`dynafuse predict DIR`: media files at any depth, sorted; hidden and non-media files skipped; a bad clip
    is its own JSON line with the error and the others are still scored."""
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    shutil.copy(media_clips["speech_face"], tmp_path / "a.mp4")
    shutil.copy(media_clips["corrupt"], tmp_path / "sub" / "b.mp4")
    shutil.copy(media_clips["speech_face"], tmp_path / ".hidden" / "c.mp4")
    (tmp_path / "notes.txt").write_text("not a clip")
    assert main(["predict", str(tmp_path), "--run", str(text_run), "--transcript", SENTENCE]) == 2
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["clip"]).name for r in lines] == ["a.mp4", "b.mp4"]
    assert math.isfinite(lines[0]["score"]) and "cannot decode" in lines[1]["error"]
    assert "1 of 2 clips could not be scored" in err and "b.mp4: cannot decode" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--run", str(text_run)]) == 2
    assert f"{empty}: no media files" in capsys.readouterr().err
