"""Progress when the output is not a terminal (a log file, CI, nohup): plain lines with done/total, rate and ETA."""

from __future__ import annotations

import re

from dynafuse.progress import Lines, duration, progress, rate_text, track


def test_lines_when_not_a_terminal(capsys):
    with progress("encoding", total=4, unit="sentences", every=0) as bar:  # pytest's stderr is not a terminal
        for _ in range(4):
            bar.advance(1, note="batch")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5  # one per step (every=0), then the final line
    assert re.match(r"encoding: 1/4 sentences \(25%\), [\d.]+ (sentences/s|s/sentence), ETA \d+s; batch$", lines[0])
    assert lines[3].startswith("encoding: 4/4 sentences (100%)") and "ETA" not in lines[3]
    assert re.match(r"encoding: 4/4 sentences \(100%\), in \d+s", lines[4])


def test_lines_every_few_seconds_and_done_before(capsys):
    p = Lines("extracting", 10, "clips", done=6, every=3600)
    for _ in range(4):
        p.advance()
    assert capsys.readouterr().err == ""  # within `every`: nothing yet
    p.print(final=True)
    assert capsys.readouterr().err.startswith("extracting: 10/10 clips (100%), in ")


def test_track_disabled_and_unknown_total(capsys):
    assert list(track(range(3), "quiet", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    assert list(track(iter(range(3)), "steps", every=3600)) == [0, 1, 2]
    assert re.match(r"steps: 3 items, in \d+s", capsys.readouterr().err)


def test_rate_and_duration():
    assert rate_text(10, 2.0, "clips") == "5.0 clips/s"
    assert rate_text(2, 9.0, "epochs") == "4.5 s/epoch"
    assert rate_text(0, 1.0, "clips") == ""
    assert rate_text(2, 9.0, "passes") == "4.5 s/pass" and rate_text(1, 3.0, "batches") == "3.0 s/batch"
    assert (duration(42), duration(185), duration(3840)) == ("42s", "3m05s", "1h04m")
