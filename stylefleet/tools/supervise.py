"""Watch the Ray processes ``stylefleet run`` started, and end every process of that Ray session,
by pid, when one of them dies.

Ray's local cluster does not survive the loss of its raylet or its GCS: with the raylet gone the
router still accepts connections but every request hangs and the other processes stay up for ever;
with the GCS gone requests hang for a minute before the driver aborts. So ``stylefleet run``
polls those two pids about once a second (``Supervisor``), and on a death tells the router (the
down file, ``stylefleet.lifecycle``) and then stops the rest itself (``stop_processes``). The
processes are Ray's, found without asking Ray (it may be the part that is gone): the descendants of
this process and every process that inherited this service's down-file variable, which reaches the
workers a dead raylet left behind too. Never ``ray stop``: it ends every Ray on the machine.

The process table is behind a small protocol (``Processes``) so the logic is tested with fakes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import psutil

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
# Descendants are listed from the whole process table (a few ms): often enough to know the
# workers that come and go, rarely enough to cost nothing on an idle service.
REFRESH_EVERY_POLLS = 10
TERM_GRACE_S = 3.0
KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class Death:
    """One watched Ray process found dead."""

    name: str
    pid: int

    def message(self) -> str:
        return f"Ray's {self.name} (pid {self.pid}) died; stopping the service"


class Processes(Protocol):
    """The process table, as far as the supervisor needs it."""

    def alive(self, pid: int) -> bool:
        """The process still runs (a zombie does not)."""

    def session(self, everywhere: bool = False) -> set[int]:
        """The processes of this service's Ray session now (never this process): the cheap
        look, or with ``everywhere`` also the ones that lost their parent."""

    def signal(self, pid: int, sig: int) -> None:
        """Send ``sig`` to ``pid`` if it is still the process that was recorded (else nothing)."""


class OwnProcesses:
    """The real table (psutil): the session is this process's descendants plus every process whose
    environment holds ``marker`` (name, value), which the orphans of a dead raylet still do. A pid is
    remembered with its start time, so a pid reused by an unrelated process is never signalled."""

    def __init__(self, marker: tuple[str, str] | None = None, root: int | None = None) -> None:
        self.marker = marker
        self.root = os.getpid() if root is None else root
        self._known: dict[int, psutil.Process] = {}

    def _remember(self, proc: psutil.Process) -> None:
        known = self._known.get(proc.pid)
        if known is None or known.create_time() != proc.create_time():
            self._known[proc.pid] = proc

    def _process(self, pid: int) -> psutil.Process | None:
        proc = self._known.get(pid)
        if proc is None:
            try:
                proc = psutil.Process(pid)
            except psutil.Error:
                return None
            self._known[pid] = proc
        return proc

    def alive(self, pid: int) -> bool:
        proc = self._process(pid)
        try:
            return proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def session(self, everywhere: bool = False) -> set[int]:
        found: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            found += psutil.Process(self.root).children(recursive=True)
        if everywhere and self.marker is not None:  # reads every process's environment: ~15 ms
            found += self._marked()
        for proc in found:
            try:
                self._remember(proc)
            except psutil.Error:
                continue
        return {p.pid for p in found if p.pid != self.root}

    def _marked(self) -> list[psutil.Process]:
        assert self.marker is not None
        name, value = self.marker
        uid = os.getuid()
        marked = []
        for proc in psutil.process_iter(["uids"]):
            try:
                if proc.info["uids"] is None or proc.info["uids"].real != uid:
                    continue
                if proc.environ().get(name) == value:
                    marked.append(proc)
            except psutil.Error:  # gone, a zombie, or not ours to read
                continue
        return marked

    def signal(self, pid: int, sig: int) -> None:
        proc = self._known.get(pid)
        if proc is None:
            return
        with contextlib.suppress(psutil.Error):  # gone, or psutil refuses: the pid names another process now
            proc.send_signal(sig)


class Supervisor:
    """Polls ``watched`` (name -> pid) every ``interval_s`` and calls ``on_death`` once, from its
    own thread, with the first one found dead; it records the session's processes meanwhile, so
    the ones a dead process orphaned are still known (``recorded``)."""

    def __init__(
        self,
        watched: Mapping[str, int],
        processes: Processes,
        on_death: Callable[[Death], None],
        *,
        interval_s: float = POLL_INTERVAL_S,
        refresh_every: int = REFRESH_EVERY_POLLS,
    ) -> None:
        self.watched = dict(watched)
        self.processes = processes
        self.on_death = on_death
        self.interval_s = interval_s
        self.refresh_every = refresh_every
        self.recorded: set[int] = set()
        self._polls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> Death | None:
        """One look: the first watched process that is dead, or None."""
        if self._polls % self.refresh_every == 0:
            self.recorded |= self.processes.session()
        self._polls += 1
        for name, pid in self.watched.items():
            if not self.processes.alive(pid):
                return Death(name, pid)
        return None

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            death = self.poll()
            if death is not None:
                self.on_death(death)
                return

    def start(self) -> None:
        self.recorded |= self.processes.session()
        self._thread = threading.Thread(target=self.run, name="stylefleet-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before a deliberate shutdown, whose processes die on purpose)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


def stop_processes(
    pids: Iterable[int],
    processes: Processes,
    *,
    term_grace_s: float = TERM_GRACE_S,
    kill_grace_s: float = KILL_GRACE_S,
    poll_s: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> set[int]:
    """SIGTERM every pid still alive, SIGKILL those still up after ``term_grace_s``; the pids
    still alive ``kill_grace_s`` after that are returned (none, normally)."""
    left = {pid for pid in pids if processes.alive(pid)}
    for sig, grace in ((signal.SIGTERM, term_grace_s), (signal.SIGKILL, kill_grace_s)):
        for pid in sorted(left):
            processes.signal(pid, sig)
        deadline = clock() + grace
        while True:
            left = {pid for pid in left if processes.alive(pid)}
            if not left or clock() >= deadline:
                break
            sleep(poll_s)
        if not left:
            break
        if sig == signal.SIGTERM:
            logger.warning("still up %.0f s after SIGTERM, killing: %s", term_grace_s, sorted(left))
    return left
