"""Liveness and readiness, from the deployments' states (pure: the backend supplies the states).

- live: the HTTP proxy and a router replica answer. Nothing about the models; a failing live
  probe means restart the process.
- ready: every deployment can take a request now: it has a running replica, or it is HEALTHY
  with none (scaled to zero on purpose; Serve starts one on the first request). UPSCALING,
  UPDATING or a replica being replaced beside running ones is ready: that is normal load. A
  failing ready probe means send no traffic here for now.
- going down (``stylefleet.lifecycle``: a Ray process the service needs died): not ready, at once,
  without asking Serve (which may never answer now).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NOT_READY_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class DeploymentState:
    status: str  # Serve's: HEALTHY, UPSCALING, DOWNSCALING, UPDATING, UNHEALTHY, DEPLOY_FAILED
    running_replicas: int

    @property
    def ready(self) -> bool:
        return self.running_replicas > 0 or self.status == "HEALTHY"


def readiness(states: Mapping[str, DeploymentState]) -> tuple[bool, dict[str, Any]]:
    """(ready, the body ``/healthz/ready`` answers). No states at all (Serve's status could not be
    read yet) is not ready."""
    ready = bool(states) and all(s.ready for s in states.values())
    body: dict[str, Any] = {
        "status": "ready" if ready else "not_ready",
        "deployments": {
            name: {"status": s.status, "running_replicas": s.running_replicas, "ready": s.ready}
            for name, s in sorted(states.items())
        },
    }
    if not ready:
        waiting = sorted(name for name, s in states.items() if not s.ready) or ["(serve status unknown)"]
        body["error"] = {"code": "not_ready", "message": f"no running replica yet: {', '.join(waiting)}"}
    return ready, body


def going_down(reason: str) -> dict[str, Any]:
    """The ``/healthz/ready`` body while the service is going down."""
    return {"status": "not_ready", "deployments": {}, "error": {"code": "service_stopping", "message": reason}}
