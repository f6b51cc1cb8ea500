"""Queue-length autoscaling: a deployment grows from 1 to 2 replicas under load and back after it."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests import samples

pytestmark = pytest.mark.integration

DEPLOYMENT = "autoscale-probe"  # 1-2 replicas, target 1 ongoing request, 1 s up / 4 s down delay


def running_replicas() -> int:
    from ray import serve

    status = serve.status().applications["stylefleet"].deployments[DEPLOYMENT]
    return int(status.replica_states.get("RUNNING", 0))


def deployment_status() -> str:
    from ray import serve

    status = serve.status().applications["stylefleet"].deployments[DEPLOYMENT].status
    return str(getattr(status, "value", status))


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def test_replicas_follow_the_queue_up_and_down(base_url: str) -> None:
    assert running_replicas() == 1
    photo = samples.encoded(samples.astronaut(), "JPEG", quality=90)
    stop = threading.Event()
    failures: list[int] = []

    def client() -> None:  # bounded: at most 60 requests each, and stops when told
        with httpx.Client(base_url=base_url, timeout=120) as c:
            for _ in range(60):
                if stop.is_set():
                    return
                r = c.post(f"/v1/styles/{DEPLOYMENT}", files={"image": ("a.jpg", photo, "image/jpeg")})
                if r.status_code != 200:
                    failures.append(r.status_code)

    workers = [threading.Thread(target=client) for _ in range(4)]
    for w in workers:
        w.start()
    ready_while_upscaling: list[int] = []

    def scaled_to_two() -> bool:
        if deployment_status() == "UPSCALING":  # busy, not broken: a load balancer must keep sending
            ready_while_upscaling.append(httpx.get(f"{base_url}/healthz/ready", timeout=10).status_code)
        return running_replicas() == 2

    try:
        scaled_up = wait_until(scaled_to_two, timeout_s=90)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=180)
    assert scaled_up, "no second replica under a queue of 4 with target_ongoing_requests 1"
    assert failures == []
    assert ready_while_upscaling and set(ready_while_upscaling) == {200}, ready_while_upscaling
    assert wait_until(lambda: running_replicas() == 1, timeout_s=120), "did not scale back to 1 after the load"
