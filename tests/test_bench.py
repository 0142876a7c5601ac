"""The benchmark runs (quick form) and prints every figure with numbers; its targets are not asserted here."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.mark.slow
def test_quick_benchmark_prints_every_figure():
    out = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[1].startswith("machine: ") and "commit" in lines[1]
    for fig in "abcdfg":  # (e) is a real sweep: skipped in --quick (tests/test_sweep_e2e.py runs sweeps)
        line = next((ln for ln in lines if ln.startswith(f"({fig}) ")), None)
        assert line is not None, (fig, out.stdout)
        assert re.search(r"\d+(\.\d+)? (s|ms|img/s) \(\d", line), line  # median (min-max)


def test_benchmark_rejects_unknown_figures():
    out = subprocess.run([sys.executable, str(BENCH), "--only", "az"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown figures z" in out.stderr
