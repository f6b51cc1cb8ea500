"""The app on two Ray nodes (head and worker raylets on 127.0.0.1): requests, batching, A/B and a
job cross nodes, and killing the worker's replica recovers. The cluster lives in a child process
(``tests/integration/multinode.py``), bounded in time; see its docstring for the placement."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.multinode import LEASE_S
from tests.samples import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def facts() -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-m", "tests.integration.multinode"], cwd=ROOT, capture_output=True, text=True, timeout=540
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("FACTS ")]
    assert run.returncode == 0 and lines, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return dict(json.loads(lines[-1][len("FACTS "):]))


def test_two_nodes_on_loopback(facts: dict[str, Any]) -> None:
    assert facts["nodes"] == ["127.0.0.1", "127.0.0.1"]


def test_the_router_runs_on_the_head_and_the_model_on_the_worker(facts: dict[str, Any]) -> None:
    assert facts["router_on_head"] and facts["stylize_on_worker"]


def test_requests_and_batches_cross_nodes(facts: dict[str, Any]) -> None:
    assert facts["single"] == 200 and facts["burst"] == [200] * 8 and facts["ready"] == 200
    assert max(int(size) for size in facts["batch_sizes"]) > 1, facts["batch_sizes"]


def test_ab_variants_both_serve_across_nodes(facts: dict[str, Any]) -> None:
    assert facts["variant_statuses"] == [200] and facts["variants"] == ["a", "b"]


def test_a_job_runs_across_nodes(facts: dict[str, Any]) -> None:
    assert facts["job"]["status"] == "succeeded" and facts["job"]["succeeded"] == 3 and len(facts["job"]["outputs"]) == 3


def test_killing_the_workers_replica_recovers(facts: dict[str, Any]) -> None:
    assert facts["after_kill"]["status"] == 200 and facts["replaced"], facts["after_kill"]


def test_a_job_whose_router_is_killed_resumes_before_its_lease_would_and_never_counts_down(facts: dict[str, Any]) -> None:
    death = facts["router_death"]
    assert death["status"] == "succeeded" and death["seen"][-1] == 16, death
    assert death["seen"] == sorted(death["seen"]), death["seen"]
    assert death["seconds"] < LEASE_S, death  # resumed because Ray said the router was dead
