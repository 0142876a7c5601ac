"""The watchdog of a sweep's local Ray instance, run by the driver as a process of its own::

    python -m echos_core.sweep.watchdog DRIVER_PID LOCK_FD TRACKING_URI EXPERIMENT SWEEP_ID ROOT_PID...

While the driver (its parent) lives, it notes every process of the Ray instance the driver started
(the root pids and all their descendants, with their start times, from /proc) once a second. A driver
that ends normally stops the watchdog first. When the driver is gone without doing so (SIGKILL, the
OOM killer), the watchdog

1. ends each noted process that is still the same process (SIGTERM, then SIGKILL): a local Ray
   instance never outlives its driver;
2. ends every MLflow run of the sweep still RUNNING (the trials the driver's workers were training,
   the parent run) as KILLED with ``echos.status=interrupted``, so MLflow never shows a lost driver's
   runs as running for ever; ``--resume`` reopens them.

It holds the driver's lock on the sweep folder (``LOCK_FD``, inherited; -1 for none) until it is done,
so a ``--resume`` started meanwhile waits for it (up to a minute) instead of racing it.  Only the standard
library is imported until step 2.
"""

from __future__ import annotations

import os
import signal
import sys
import time

__all__ = ["main", "end_lost_runs", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (another user's process included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, start time)} of every process, from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(d)] = (int(fields[1]), fields[19])
        except (OSError, ValueError, IndexError):
            pass
    return out


def _note(roots: set[int], noted: dict[int, str]) -> None:
    procs = _processes()
    children: dict[int, list[int]] = {}
    for c, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(c)
    todo, seen = list(roots), set()
    while todo:
        p = todo.pop()
        if p in procs and p not in seen:
            seen.add(p)
            noted.setdefault(p, procs[p][1])
            todo.extend(children.get(p, []))


def _end(noted: dict[int, str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = _processes()
        for p, start in noted.items():
            if p in procs and procs[p][1] == start:  # still the same process, not a reused pid
                try:
                    os.kill(p, sig)
                except OSError:
                    pass
        time.sleep(3)


def end_lost_runs(tracking_uri: str, experiment: str, sweep_id: str) -> int:
    """End every RUNNING run of ``sweep_id`` as KILLED, ``echos.status=interrupted``; returns how many."""
    from ..tracking import TAG_STATUS, TAG_SWEEP_ID, end_run, find_runs

    runs = [r for r in find_runs(tracking_uri, experiment, {TAG_SWEEP_ID: sweep_id}) if r.info.status == "RUNNING"]
    for r in runs:
        end_run(tracking_uri, r.info.run_id, "KILLED", {TAG_STATUS: "interrupted"})
    return len(runs)


def main(argv: list[str]) -> int:
    driver, lock_fd, tracking_uri, experiment, sweep_id = int(argv[0]), int(argv[1]), *argv[2:5]
    roots, noted = {int(p) for p in argv[5:]}, {}
    while True:
        _note(roots, noted)
        if os.getppid() != driver:
            break
        time.sleep(1)
    if lock_fd >= 0:
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"the watchdog (pid {os.getpid()}) of driver pid {driver}, which was killed: it is "
                           f"ending that driver's Ray processes and runs, for a few seconds".encode(), 0)
    _end(noted)
    end_lost_runs(tracking_uri, experiment, sweep_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
