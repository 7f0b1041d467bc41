"""``bench.common.CpuMeter`` and ``ServerProcess.memory_kb``: CPU seconds and peak memory by role,
read from ``/proc`` of real processes (a stand-in server that burns CPU or holds memory itself
and in a child whose command line runs ``project``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.common import CPU_ROLES, CpuMeter, ServerProcess, memory_notes

pytestmark = pytest.mark.unit

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"

#: Waits for a line on stdin, burns 0.3 s of CPU, starts a child that burns 0.6 s and then
#: touches the marker file given as its last argument; both then sleep.
SERVER = (
    "import subprocess, sys, time\n"
    "sys.stdin.readline()\n"
    + BURN.format(s=0.3)
    + "child = subprocess.Popen([sys.executable, '-c', CHILD, 'project', sys.argv[1]])\n"
    "time.sleep(60)\n"
)
CHILD = BURN.format(s=0.6) + "import pathlib, sys\npathlib.Path(sys.argv[-1]).touch()\n"
CHILD += "time.sleep(60)\n"


def test_cpu_meter_splits_the_server_from_its_projector(tmp_path: Path) -> None:
    marker = tmp_path / "burnt"
    process = subprocess.Popen(
        [sys.executable, "-c", f"CHILD = {CHILD!r}\n" + SERVER, str(marker)],
        stdin=subprocess.PIPE,
        start_new_session=True,  # its own process group: killed with its child at the end
    )
    server = ServerProcess("stand-in", [], {}, tmp_path / "log", 0, process=process)
    try:
        with CpuMeter(server) as meter:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.flush()
            deadline = time.monotonic() + 30
            while not marker.exists():
                assert time.monotonic() < deadline, "the stand-in never finished burning"
                time.sleep(0.05)
        spent = meter.seconds
        assert set(spent) == set(CPU_ROLES)
        # /proc counts in clock ticks (1/100 s); the burns are timed by the same clock.
        assert 0.28 <= spent["api"] < 0.5, spent
        assert 0.58 <= spent["projector"] < 0.8, spent
        assert spent["client"] < 0.25, spent  # this process only polled
        assert meter.wall_s >= 0.85  # the two burns ran one after the other
        per = meter.per_unit_us(1000)
        assert per["projector"] == pytest.approx(spent["projector"] / 1000 * 1e6)
        line = meter.describe(1000, "event")
        assert line.startswith("CPU µs per event: api ") and "projector " in line
        assert "cores busy" in line
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


#: Holds 40 MB and starts a child (``project``) holding 160 MB and a second child (an API
#: worker) holding 40 MB; each touches ``<directory given>/<its role>`` once it holds its
#: memory; all then sleep.
HOLDER = (
    "import pathlib, subprocess, sys, time\n"
    "held = bytearray(40 << 20)\n"
    "for role in ('project', 'worker'):\n"
    "    subprocess.Popen([sys.executable, '-c', CHILD, role, sys.argv[1]])\n"
    "pathlib.Path(sys.argv[1], 'api').touch()\n"
    "time.sleep(60)\n"
)
HELD = (
    "import pathlib, sys, time\n"
    "held = bytearray((160 if sys.argv[1] == 'project' else 40) << 20)\n"
    "pathlib.Path(sys.argv[2], sys.argv[1]).touch()\n"
    "time.sleep(60)\n"
)


def test_memory_counts_the_api_processes_not_the_projector(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", f"CHILD = {HELD!r}\n" + HOLDER, str(tmp_path)],
        start_new_session=True,
    )
    server = ServerProcess("stand-in", [], {}, tmp_path / "log", 0, process=process)
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / role).exists() for role in ("api", "project", "worker")):
            assert time.monotonic() < deadline, "the stand-in and its children never held memory"
            time.sleep(0.05)
        mb = {key: value / 1024 for key, value in server.memory_kb().items()}
        # the largest API process holds 40 MB and an interpreter, not the projector's 160 MB
        assert 40 < mb["VmHWM"] < 100, mb
        assert 40 < mb["VmRSS"] <= mb["VmHWM"], mb
        assert mb["projector_VmHWM"] > 160, mb
        assert 80 < mb["VmHWM_total"] < 200, mb  # the stand-in and its worker
        notes = memory_notes(server.memory_kb())
        assert "; projector 1" in notes and "; all API processes together " in notes
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
