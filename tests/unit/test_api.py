"""The HTTP API with a fake backend: routing, parsing, error rendering. No Ray."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from stylefleet.errors import RETRYABLE_CODES, FaceTooSmall, InternalError, MaxKbTooSmall, MultipleFaces, NoFace, Overloaded
from stylefleet.router.health import DeploymentState
from tests import samples
from tests.unit.apps import api_client
from tests.unit.fakes import FakeBackend


@pytest.fixture()
def backend() -> FakeBackend:
    return FakeBackend(statuses={"stylize": DeploymentState("HEALTHY", 1), "router": DeploymentState("HEALTHY", 1)})


@pytest.fixture()
def api(backend: FakeBackend) -> TestClient:
    return api_client(backend)


def _upload(api: TestClient, style: str = "frost", **fields: str):
    return api.post(f"/v1/styles/{style}", files={"image": ("c.png", samples.encoded(samples.cat()), "image/png")}, data=fields)


def test_a_style_request_reaches_its_deployment_with_fixed_and_given_params(api: TestClient, backend: FakeBackend) -> None:
    r = _upload(api, "frost", strength="0.5", format="jpeg", quality="70")
    assert r.status_code == 200 and r.headers["x-stylefleet-style"] == "frost"
    assert r.headers["x-stylefleet-variant"] == "default"
    [(deployment, request)] = backend.calls
    assert deployment == "stylize"
    assert request.params == {"style": "14", "strength": 0.5, "max_side": 1024, "preserve_color": False}
    assert (request.output.format, request.output.quality) == ("jpeg", 70)
    assert request.files["image"] == samples.encoded(samples.cat()), "the upload travels as sent: its replica decodes it"
    assert request.images == {}


def test_params_are_checked_before_the_backend_is_called(api: TestClient, backend: FakeBackend) -> None:
    assert _upload(api, strength="9").status_code == 422
    assert backend.calls == []


def test_backend_errors_keep_their_status_and_headers(api: TestClient, backend: FakeBackend) -> None:
    backend.reply = Overloaded("queue full", retry_after_s=3)
    r = _upload(api)
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert r.json() == {"error": {"code": "overloaded", "message": "queue full"}}


def test_internal_errors_do_not_leak_details(api: TestClient, backend: FakeBackend) -> None:
    backend.reply = InternalError("the model failed on this input; the error was logged")
    r = _upload(api)
    assert r.status_code == 500 and "Traceback" not in r.text


def test_content_length_over_the_limit_is_refused_before_reading(api: TestClient, backend: FakeBackend) -> None:
    r = api.post("/v1/styles/frost", content=b"x" * 2_000_000, headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("stylize", "ready"),
    [
        (DeploymentState("HEALTHY", 1), True),
        (DeploymentState("UPSCALING", 1), True),  # busy: one replica serves while another starts
        (DeploymentState("UPDATING", 2), True),
        (DeploymentState("HEALTHY", 0), True),  # scaled to zero on purpose: Serve starts one on demand
        (DeploymentState("UPSCALING", 0), False),
        (DeploymentState("UNHEALTHY", 0), False),
        (DeploymentState("DEPLOY_FAILED", 0), False),
    ],
    ids=["healthy", "upscaling", "updating", "scaled-to-zero", "starting", "unhealthy", "failed"],
)
@pytest.mark.parametrize("path", ["/healthz/ready", "/healthz"])
def test_ready_while_every_deployment_has_a_running_replica(
    api: TestClient, backend: FakeBackend, path: str, stylize: DeploymentState, ready: bool
) -> None:
    backend.statuses["stylize"] = stylize
    r = api.get(path)
    assert r.status_code == (200 if ready else 503)
    assert r.json()["deployments"]["stylize"] == {"status": stylize.status, "running_replicas": stylize.running_replicas, "ready": ready}
    if not ready:
        assert r.headers["retry-after"] == "5" and r.json()["error"]["code"] == "not_ready"


def test_not_ready_without_any_deployment_state(api: TestClient, backend: FakeBackend) -> None:
    backend.statuses = {}
    assert api.get("/healthz/ready").status_code == 503


def test_live_does_not_ask_the_deployments(api: TestClient, backend: FakeBackend) -> None:
    backend.statuses = {"stylize": DeploymentState("DEPLOY_FAILED", 0)}
    r = api.get("/healthz/live")
    assert r.status_code == 200 and r.json() == {"status": "alive"}


def test_duplicate_fields_are_refused(api: TestClient) -> None:
    r = api.post(
        "/v1/styles/frost",
        files=[
            ("image", ("a.png", samples.encoded(samples.cat()), "image/png")),
            ("image", ("b.png", samples.encoded(samples.cat()), "image/png")),
        ],
    )
    assert r.status_code == 422 and "more than once" in r.json()["error"]["message"]


def test_styles_describe_params_without_fixed_ones(api: TestClient) -> None:
    styles = {s["name"]: s for s in api.get("/v1/styles").json()["styles"]}
    assert [p["name"] for p in styles["remove-background"]["params"]] == [
        "alpha_matting",
        "threshold",
        "erode_px",
        "feather_px",
        "bg_color",
        "max_side",
        "only_mask",
        "format",
        "quality",
    ]
    assert all(s["task"] for s in styles.values())
    assert np.all([("style" not in {p["name"] for p in s["params"]}) for s in styles.values()])


def test_id_photo_params_reach_its_deployment_typed(api: TestClient, backend: FakeBackend) -> None:
    r = _upload(api, "id-photo", size="us-passport", bg_color="blue", dpi="600", max_kb="80", format="jpeg", layout="4r")
    assert r.status_code == 200
    [(deployment, request)] = backend.calls
    assert deployment == "id-photo"
    assert {k: request.params[k] for k in ("size", "bg_color", "dpi", "max_kb", "layout", "face")} == {
        "size": "us-passport",
        "bg_color": "blue",
        "dpi": 600,
        "max_kb": 80,
        "layout": "4r",
        "face": "single",
    }


def test_id_photo_bad_params_are_a_422_before_the_backend(api: TestClient, backend: FakeBackend) -> None:
    r = _upload(api, "id-photo", size="custom", width_mm="30")
    assert r.status_code == 422 and "size=custom needs" in r.json()["error"]["message"]
    assert backend.calls == []


@pytest.mark.parametrize(
    ("error", "code"),
    [(NoFace, "no_face"), (MultipleFaces, "multiple_faces"), (FaceTooSmall, "face_too_small"), (MaxKbTooSmall, "max_kb_too_small")],
)
def test_id_photo_errors_are_422_with_their_code(api: TestClient, backend: FakeBackend, error: type, code: str) -> None:
    backend.reply = error("explained")
    r = _upload(api, "id-photo")
    assert r.status_code == 422 and r.json() == {"error": {"code": code, "message": "explained"}}


@pytest.mark.parametrize(
    ("value", "says"),
    [("nan", "not a number"), ("NaN", "not a number"), ("inf", "infinite"), ("-Infinity", "infinite")],
)
def test_non_finite_numbers_are_refused_as_such(api: TestClient, backend: FakeBackend, value: str, says: str) -> None:
    r = _upload(api, strength=value)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith(f"strength: {says}")
    assert backend.calls == []


def test_non_finite_output_params_are_refused_as_such(api: TestClient) -> None:
    r = _upload(api, quality="nan")
    assert r.status_code == 422 and "not a number" in r.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path"), [("post", "/v1/styles/"), ("get", "/v1/styles/{}/preview")])
def test_a_long_style_name_is_not_echoed_whole(api: TestClient, method: str, path: str) -> None:
    name = "x" * 5000
    url = path + name if "{}" not in path else path.format(name)
    r = getattr(api, method)(url)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_style"
    assert len(r.text) < 300 and "5000 characters" in r.json()["error"]["message"]


def test_the_error_codes_say_which_to_retry_from_the_classes(api: TestClient) -> None:
    """The web page decides what to retry from this table, so it keeps no list of its own."""
    r = api.get("/v1/errors")
    assert r.status_code == 200
    table = {row["code"]: row for row in r.json()["errors"]}
    assert {code for code, row in table.items() if row["retryable"]} == RETRYABLE_CODES
    assert table["overloaded"] == {"code": "overloaded", "status": 503, "retryable": True}
    assert table["invalid_image"] == {"code": "invalid_image", "status": 400, "retryable": False}
