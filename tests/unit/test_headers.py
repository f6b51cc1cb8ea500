"""Security headers on every answer, and ``/docs`` from the service's own files. No Ray.

The browser's side (the page and /docs run under the policy without a violation) is in
tests/integration/test_web.py."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from stylefleet.deployments.batching import ModelRequest, Reply
from stylefleet.errors import Overloaded
from stylefleet.router.api.security import CONTENT_SECURITY_POLICY
from stylefleet.router.api.web import WEB_DIR
from tests import samples
from tests.unit.apps import api_client
from tests.unit.fakes import FakeBackend

EXPECTED = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@pytest.fixture()
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture()
def api(backend: FakeBackend) -> TestClient:
    return api_client(backend)


def _directives(policy: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (d.split() for d in policy.split(";"))}


def test_the_policy_is_strict() -> None:
    policy = _directives(CONTENT_SECURITY_POLICY)
    assert policy["default-src"] == ["'self'"] and policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert policy["img-src"] == ["'self'", "blob:", "data:"]  # the picked pictures and results are blob: URLs
    assert "unsafe" not in CONTENT_SECURITY_POLICY and "*" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/static/app.js", 200),
        ("GET", "/static/samples/coffee-160.jpg", 200),
        ("GET", "/v1/styles", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/docs", 200),
        ("GET", "/docs/swagger-ui-bundle.js", 200),
        ("GET", "/healthz/live", 200),
        ("GET", "/v1/styles/nope/preview", 404),
        ("GET", "/no/such/route", 404),
        ("DELETE", "/v1/styles", 405),
    ],
)
def test_every_answer_carries_the_security_headers(api: TestClient, method: str, path: str, status: int) -> None:
    r = api.request(method, path)
    assert r.status_code == status
    assert {name: r.headers.get(name) for name in EXPECTED} == EXPECTED


def test_a_style_result_and_a_backend_error_carry_them(api: TestClient, backend: FakeBackend) -> None:
    files = {"image": ("c.png", samples.encoded(samples.cat()), "image/png")}
    ok = api.post("/v1/styles/frost", files=files)
    backend.reply = Overloaded("queue full", retry_after_s=3)
    busy = api.post("/v1/styles/frost", files=files)
    assert (ok.status_code, busy.status_code) == (200, 503)
    for r in (ok, busy):
        assert {name: r.headers.get(name) for name in EXPECTED} == EXPECTED


def test_a_body_refused_by_the_limit_carries_them(api: TestClient) -> None:
    r = api.post("/v1/styles/frost", content=b"x" * 2_000_000, headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and r.headers["x-frame-options"] == "DENY"
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_an_unexpected_error_carries_them() -> None:
    """Starlette answers an unhandled exception from its outermost middleware, past ours."""

    def crash(deployment: str, request: ModelRequest) -> Reply:
        raise RuntimeError("a bug")

    api = TestClient(api_client(FakeBackend(crash)).app, raise_server_exceptions=False)
    r = api.post("/v1/styles/frost", files={"image": ("c.png", samples.encoded(samples.cat()), "image/png")})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert {name: r.headers.get(name) for name in EXPECTED} == EXPECTED


def test_the_docs_page_loads_only_its_own_files(api: TestClient) -> None:
    page = api.get("/docs").text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.S)
    assert [attrs for attrs, _ in scripts] == [' src="/docs/swagger-ui-bundle.js"', ' src="/static/docs.js"']
    assert all(body.strip() == "" for _, body in scripts), "an inline script breaks under script-src 'self'"
    assert "http://" not in page and "https://" not in page and "cdn" not in page
    for url in [*re.findall(r'(?:src|href)="(/[^"]+)"', page), re.search(r'data-openapi="([^"]+)"', page)[1]]:  # type: ignore[index]
        r = api.get(url)
        assert r.status_code == 200, url
    js = api.get("/docs/swagger-ui-bundle.js")
    assert js.headers["content-type"] == "text/javascript; charset=utf-8" and b"SwaggerUIBundle" in js.content
    assert api.get("/docs/swagger-ui.css").headers["content-type"] == "text/css; charset=utf-8"


def test_the_docs_page_names_the_root_path_it_is_served_under(backend: FakeBackend) -> None:
    """Serve mounts an application under its route prefix (``/genai``): the files are there too."""
    page = TestClient(api_client(backend).app, root_path="/genai").get("/docs").text
    assert 'src="/genai/docs/swagger-ui-bundle.js"' in page and 'data-openapi="/genai/openapi.json"' in page


@pytest.mark.parametrize("path", ["/redoc", "/docs/oauth2-redirect", "/docs/redoc.standalone.js", "/docs/favicon.png"])
def test_no_page_that_needs_a_cdn_or_inline_code_is_served(api: TestClient, path: str) -> None:
    assert api.get(path).status_code == 404


@pytest.mark.parametrize("name", sorted(p.name for p in WEB_DIR.glob("*.html")))
def test_the_pages_markup_needs_no_inline_code(name: str) -> None:
    """What the policy would block: inline scripts, event handler attributes, style attributes and
    style elements."""
    markup = (WEB_DIR / name).read_text()
    assert all("src=" in attrs for attrs in re.findall(r"<script\b([^>]*)>", markup))
    assert not re.search(r"\son[a-z]+\s*=", markup) and not re.search(r"\sstyle\s*=", markup) and "<style" not in markup
