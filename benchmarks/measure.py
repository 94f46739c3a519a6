"""Run a command in a fresh process and measure it: wall time and the process's own peak resident memory.

A process's ru_maxrss starts at the resident size of the process it was forked from, so the command is forked
from a small launcher (`LAUNCHER`), not from the benchmark itself (which may hold models or data), and the
launcher reads the child's ru_maxrss with wait4.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Forks and execs the command, then writes the child's peak resident set (KiB) to the file named by argv[1].
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list, env: dict | None = None) -> dict:
    """Run `cmd` in a fresh process: its wall time (s), peak resident memory (MiB) and stdout; RuntimeError with the
    end of its stderr when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        started = time.perf_counter()
        got = subprocess.run([sys.executable, "-c", LAUNCHER, peak, *map(str, cmd)], capture_output=True, text=True,
                             env=env)
        seconds = time.perf_counter() - started
        if got.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {got.stderr.strip()[-2000:]}")
        return {"seconds": round(seconds, 2), "peak_mib": round(int(peak.read_text()) / 1024, 1),
                "stdout": got.stdout}
