"""Each model replica's memory budget: from its kind or its config, and Ray's memory resource."""

from __future__ import annotations

from stylefleet.router.app import actor_options
from stylefleet.spec import AppSpec, load_serve_file
from tests.samples import ROOT

GIB = 2**30


def shipped() -> AppSpec:
    return load_serve_file(ROOT / "serve_config.yaml").app


def test_a_model_replica_asks_ray_for_its_memory_budget() -> None:
    spec = shipped()
    assert actor_options("stylize", spec)["memory"] == spec.kind_of("stylize").memory_budget_bytes


def test_a_configured_budget_replaces_the_kinds_and_reaches_the_replica() -> None:
    args = shipped().args.model_dump()
    args["deployments"]["stylize"]["memory_budget_bytes"] = 2 * GIB
    spec = AppSpec.from_args(args)
    assert actor_options("stylize", spec)["memory"] == 2 * GIB
    assert spec.model_spec("stylize").memory_budget_bytes == 2 * GIB


def test_a_composed_deployment_has_no_budget_by_default() -> None:
    assert "memory" not in actor_options("id-photo", shipped())


def test_the_shipped_budgets_leave_room_on_a_24_gib_machine() -> None:
    """Ray's memory monitor kills at 95% of the machine (22.8 GiB); Ray's own processes, the router
    and the object store's traffic need several GiB beside the replicas, and Ray's default
    ``memory`` resource, which places the budgets, is 15-16 GiB there (docs/batching.md "Memory")."""
    spec = shipped()
    total = sum(spec.memory_budget_of(name) or 0 for name in spec.deployments)
    assert total <= 15 * GIB


def test_every_shipped_model_deployment_has_a_budget() -> None:
    """The shipped config's model replicas all admit by memory; only the composed id-photo, which
    holds no model and calls the others, has none."""
    app = shipped()
    unbudgeted = sorted(name for name in app.args.deployments if app.memory_budget_of(name) is None)
    assert unbudgeted == ["id-photo"]
