"""The worker processes ``ainode serve`` runs: started so that they die with it, restarted when they exit,
stopped with it. A worker started this way also watches its parent and stops if it is gone, so a node that
was killed (kill -9, OOM killer) leaves no orphan claiming jobs."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Sequence

log = logging.getLogger("ainode.supervise")

_PR_SET_PDEATHSIG = 1
REFUSED = 2  # the exit code of a command that refuses its configuration


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the kernel sends SIGTERM to this process when the process that started it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the worker's own watch on its parent still applies


class WorkerPool:
    """``count`` copies of ``command``, each told who supervises it (``--supervisor PID``)."""

    def __init__(self, command: Sequence[str], count: int) -> None:
        self.command = [*command, "--supervisor", str(os.getpid())]
        self.processes = [self._spawn() for _ in range(count)]

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, preexec_fn=_die_with_parent)

    def restart_exited(self) -> bool:
        """Start a new worker for each that exited; False when one refused to start (its configuration or a
        model is wrong: exit code 2), since another would refuse too."""
        for n, process in enumerate(self.processes):
            if process.poll() == REFUSED:
                log.error("worker %d refused to start (see its message above); stopping", process.pid)
                return False
            if process.poll() is not None:
                log.warning("worker %d exited with %s; starting another", process.pid, process.returncode)
                self.processes[n] = self._spawn()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()


def watch_parent(supervisor: int, stop: threading.Event, interval: float = 1.0) -> threading.Thread:
    """Set ``stop`` when the process that started this one (``supervisor``) is no longer its parent."""
    def watch() -> None:
        while not stop.wait(interval):
            if os.getppid() != supervisor:
                log.warning("the node that started this worker (pid %d) is gone; stopping", supervisor)
                stop.set()

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread
