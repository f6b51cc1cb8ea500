"""Which router replica runs a job: a lease in ``{id}/lease.json``, taken, renewed and released.

One replica runs a job at a time, holding its lease and renewing it; a job whose lease expired
(its replica died) or was released (the replica shut down) is taken by whichever replica scans
it next. A lease names its holder's Ray actor, so a replica that Ray says is dead loses its
jobs at once instead of after ``lease_timeout_s``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from stylefleet.deployments.log import serve_logger
from stylefleet.storage import Storage

logger = serve_logger(__name__)

CLAIM_SETTLE_S = 0.1  # how long a claimant waits before reading its claim back


def default_owner() -> str:
    """host:pid:random, unique per JobManager."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    """The leases this replica (``owner``) takes. Blocking calls: the async callers run them in
    threads. ``actor_id`` goes into each lease taken; ``owner_alive`` asks Ray whether a lease
    holder's actor still lives (None: cannot tell)."""

    def __init__(
        self,
        storage: Storage,
        timeout_s: float,
        *,
        owner: str,
        actor_id: str | None = None,
        owner_alive: Callable[[str], bool | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.timeout_s = timeout_s
        self.owner = owner
        self.actor_id = actor_id
        self.owner_alive = owner_alive
        self.clock = clock

    def claim(self, job_id: str) -> bool:
        """Take the job's lease if it is free or expired (or its holder is known dead). Re-read
        after a moment: of two replicas claiming at once, only the last writer goes on."""
        rel = _rel(job_id)
        lease = self._read(rel)
        if lease and lease["owner"] != self.owner and lease["expires_at"] > self.clock():
            if not self._holder_dead(lease):
                return False
            logger.warning("job %s: its router (actor %s) is dead; resuming it now", job_id, lease["actor_id"])
        self.storage.write_text(rel, self._lease_json())
        time.sleep(CLAIM_SETTLE_S)
        lease = self._read(rel)
        return lease is not None and lease["owner"] == self.owner

    def renew(self, job_id: str) -> bool:
        """Extend our lease; False when another replica holds it now."""
        rel = _rel(job_id)
        lease = self._read(rel)
        if lease and lease["owner"] != self.owner:
            return False
        self.storage.write_text(rel, self._lease_json())
        return True

    def release(self, job_id: str) -> None:
        """Give the lease up (if it is still ours), so another replica may resume the job at once."""
        rel = _rel(job_id)
        with contextlib.suppress(Exception):
            lease = self._read(rel)
            if lease and lease["owner"] == self.owner:
                self.storage.delete(rel)

    def _lease_json(self) -> str:
        lease: dict[str, Any] = {"owner": self.owner, "expires_at": self.clock() + self.timeout_s}
        if self.actor_id:
            lease["actor_id"] = self.actor_id
        return json.dumps(lease)

    def _holder_dead(self, lease: dict[str, Any]) -> bool:
        """True only when Ray says the lease holder's actor is dead; unknown is alive."""
        actor_id = lease.get("actor_id")
        if not actor_id or self.owner_alive is None:
            return False
        try:
            return self.owner_alive(str(actor_id)) is False
        except Exception:  # noqa: BLE001 - no answer is no evidence: wait for the lease
            logger.warning("could not ask Ray about actor %s", actor_id, exc_info=True)
            return False

    def _read(self, rel: str) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = json.loads(self.storage.read_text(rel))
            return lease
        except (FileNotFoundError, ValueError):
            return None


def _rel(job_id: str) -> str:
    return f"{job_id}/lease.json"
