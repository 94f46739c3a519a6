"""`dynafuse bench`: FLOP counting, the matmul probe, the side-by-side run and its report. No timing values are
asserted (they depend on the machine and its load)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from dynafuse.analysis.bench import (
    bench,
    compare_threads,
    count_flops,
    gmra_overhead,
    inference_peak_mb,
    markdown,
    matmul_flops,
    print_report,
    thread_table,
    write_report,
)
from dynafuse.cli import main

ROW_KEYS = {"model", "variant", "dataset", "params", "trainable", "weights_mb", "batch", "inference_peak_mb",
            "flops_per_sample", "latency_ms", "throughput", "achieved_flops", "share_of_matmul", "matmul_flops",
            "train_batch", "sec_per_step", "sec_per_epoch", "train_matmul_flops", "vs_baseline"}


def test_flops_of_a_linear_layer():
    batch, d_in, d_out = 5, 7, 3
    assert count_flops(nn.Linear(d_in, d_out), torch.randn(batch, d_in)) == 2 * d_in * d_out * batch


def test_flops_see_through_fused_attention():
    """Eval-mode attention takes fused CPU kernels; their matmuls must still be counted."""
    b, t, d = 2, 6, 16
    layer = nn.TransformerEncoderLayer(d, 4, 32, batch_first=True)
    linear = 2 * b * t * (3 * d * d + d * d + 2 * d * 32)  # q/k/v and output projections, feed-forward
    attention = 2 * 2 * b * t * t * d  # Q K^T and weights x V over all heads
    assert count_flops(layer, torch.randn(b, t, d)) == linear + attention


def test_matmul_probe_is_a_positive_rate():
    rate = matmul_flops(n=64, repeats=3, warmup=1)
    assert rate > 0 and math.isfinite(rate)


def test_inference_peak_sees_the_activations():
    """A pass whose output alone is 64 MiB must raise the peak by at least that much (and not by gigabytes)."""
    peak = inference_peak_mb(nn.Linear(4, 2 ** 18), torch.randn(64, 4))
    if peak is None:
        pytest.skip("no /proc/self/clear_refs on this system")
    assert 60 < peak < 1024


def test_gmra_overhead_is_with_over_without():
    base = {"model": "crosssent", "variant": "gmra=false", "params": 100, "flops_per_sample": 10.0,
            "latency_ms": 2.0, "throughput": 50.0, "weights_mb": 4.0, "inference_peak_mb": 6.0, "matmul_flops": 1e9}
    full = {**base, "variant": "", "params": 110, "latency_ms": 3.0, "throughput": 40.0, "inference_peak_mb": 8.0}
    g = gmra_overhead([full, base])
    assert (g["params"], g["added_params"], g["latency_ms"], g["throughput"]) == (1.1, 10, 1.5, 0.8)
    assert g["memory"] == pytest.approx(12 / 10)
    # the same model timed while the machine ran half as fast: load-corrected, the ratios are 1
    slowed = {**base, "variant": "", "latency_ms": 4.0, "throughput": 25.0, "matmul_flops": 0.5e9}
    g = gmra_overhead([slowed, base])
    assert (g["latency_ms"], g["throughput"]) == (1.0, 1.0)
    assert gmra_overhead([full]) is None


def test_cli_unknown_model_is_a_one_line_error(capsys, tmp_path):
    assert main(["bench", "--models", "early_fusion,nope", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynafuse: error:") and "'nope'" in err and "\n" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_bench_two_models_on_real_mosi(data_dir, tmp_path):
    result = bench(["early_fusion", "daf"], "mosi", train=True, threads=1, repeats=2, warmup=1, steps=1,
                   overrides=[f"data.data_dir={data_dir}", "data.limit=80"])
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["early_fusion", "daf"]
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert r["params"] >= r["trainable"] > 0 and r["flops_per_sample"] > 0 and r["batch"] == 64
    assert rows[0]["vs_baseline"] == 1.0
    assert result["machine"]["threads"] == 1 and result["machine"]["matmul_flops"] > 0
    assert result["gmra"] is None  # no CrossSent in the run
    md, js = write_report(result, tmp_path / "cost")
    assert "| daf |" in md.read_text() and "Machine:" in md.read_text()
    assert json.loads(js.read_text())["rows"][1]["model"] == "daf"
    assert "Training" in markdown(result)
    print_report(result)


@pytest.mark.slow
def test_thread_comparison_on_real_training_runs(data_dir, tmp_path):
    """Real `dynafuse train` processes (a 60-row MOSI subset, 1 epoch): every (jobs, threads) setting is timed and
    the table gives s/epoch, the thread ratio and the slow-down of two jobs at once."""
    t = compare_threads(runs=(("daf", "mosi"),), epochs=1, work=tmp_path,
                        overrides=[f"data.data_dir={data_dir}", "data.limit=60"])
    assert [(r["jobs"], r["threads"]) for r in t["rows"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r["sec_per_epoch"] > 0 and len(r["sec_per_epoch_jobs"]) == r["jobs"] for r in t["rows"])
    title, header, rows = thread_table(t)
    assert header[2:] == ["s/epoch, 1 thread (default)", "s/epoch, 2 threads", "2 threads / 1"]
    assert [r[:2] for r in rows] == [["daf on mosi", "1"], ["daf on mosi", "2"], ["daf on mosi", "2 / 1 (slow-down)"]]
    assert float(rows[0][4]) == pytest.approx(t["rows"][1]["sec_per_epoch"] / t["rows"][0]["sec_per_epoch"], abs=0.01)
    assert not list(tmp_path.iterdir())  # the timed runs' folders are removed
