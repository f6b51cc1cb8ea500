"""The web page's routes with a fake backend: the page and its files, and the cached previews. No Ray."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Mount

from stylefleet.errors import ModelUnavailable
from stylefleet.router.api.web import WEB_DIR, PageFiles
from stylefleet.router.catalog import Catalog
from stylefleet.router.previews import PreviewCache, load_samples
from stylefleet.spec import AppSpec
from tests import samples
from tests.samples import ROOT
from tests.unit.apps import api_client
from tests.unit.fakes import FakeBackend, preview_webp


@pytest.fixture()
def backend() -> FakeBackend:
    return FakeBackend(preview_webp)


@pytest.fixture()
def api(backend: FakeBackend) -> TestClient:
    return api_client(backend)


def test_the_page_is_served_at_the_root(api: TestClient) -> None:
    r = api.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in r.text


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("app.js", "text/javascript"), ("api.js", "text/javascript"), ("style.css", "text/css"), ("samples/astronaut-160.jpg", "image/jpeg")],
)
def test_static_files_carry_their_content_type(api: TestClient, name: str, content_type: str) -> None:
    r = api.get(f"/static/{name}")
    assert r.status_code == 200 and r.headers["content-type"].split(";")[0] == content_type


def test_every_module_the_page_imports_is_served(api: TestClient) -> None:
    """An ES module import of a missing file breaks the whole page, so check the import graph."""
    for module in WEB_DIR.glob("*.js"):
        for target in re.findall(r'from\s+"\./([\w.-]+)"', module.read_text()):
            assert api.get(f"/static/{target}").status_code == 200, f"{module.name} imports {target}"


@pytest.mark.parametrize("path", ["/static/..%2fapi.py", "/static/samples/..%2f..%2fapi.py", "/static/nope.js", "/static/samples"])
def test_only_page_files_are_served(api: TestClient, path: str) -> None:
    r = api.get(path)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/samples/coffee-160.jpg"])
def test_page_files_are_revalidated_not_cached(api: TestClient, path: str) -> None:
    """no-cache: a new release is picked up at the next page load; an unchanged file is a 304."""
    r = api.get(path)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-cache" and r.headers["etag"]
    if path != "/":
        again = api.get(path, headers={"if-none-match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b""


def test_only_the_pages_kinds_of_file_are_served(tmp_path: Path) -> None:
    (tmp_path / "secret.py").write_text("TOKEN = 1")
    (tmp_path / "page.js").write_text("export {}")
    client = TestClient(Starlette(routes=[Mount("/", PageFiles(directory=tmp_path))]))
    assert client.get("/secret.py").status_code == 404
    assert client.get("/page.js").headers["content-type"] == "text/javascript; charset=utf-8"


def test_the_page_loads_nothing_from_elsewhere() -> None:
    for file in WEB_DIR.glob("*.*"):
        assert not re.search(r"(src|href)=\"(https?:)?//", file.read_text()), file.name
        assert "http://" not in file.read_text() and "https://" not in file.read_text(), file.name


def test_a_preview_is_rendered_once_then_served_from_the_cache(api: TestClient, backend: FakeBackend) -> None:
    first, second = api.get("/v1/styles/frost/preview"), api.get("/v1/styles/frost/preview")
    assert first.status_code == second.status_code == 200
    assert first.headers["content-type"] == "image/webp" and first.content == second.content
    assert "max-age" in first.headers["cache-control"]
    [(deployment, request)] = backend.calls
    assert deployment == "stylize" and request.params["style"] == "14"
    assert request.images["image"].shape == (160, 160, 3)
    assert request.output is not None and request.output.format == "webp"


def test_restyle_previews_use_the_shipped_style_picture(api: TestClient, backend: FakeBackend) -> None:
    assert api.get("/v1/styles/restyle/preview").status_code == 200
    [(_, request)] = backend.calls
    assert set(request.images) == {"image", "style_image"}


def test_a_style_with_variants_previews_its_first_variant(api: TestClient, backend: FakeBackend) -> None:
    assert api.get("/v1/styles/oil-paint/preview").status_code == 200
    [(_, request)] = backend.calls
    assert request.params["strength"] == 1.0  # variant a; b fixes 0.7


def test_a_failed_preview_is_not_cached(api: TestClient, backend: FakeBackend) -> None:
    backend.replies = [ModelUnavailable("loading")]
    assert api.get("/v1/styles/frost/preview").status_code == 503
    assert api.get("/v1/styles/frost/preview").status_code == 200
    assert len(backend.calls) == 2


def test_previews_of_unknown_styles_are_404(api: TestClient, backend: FakeBackend) -> None:
    r = api.get("/v1/styles/nope/preview")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_style"
    assert backend.calls == []


def test_results_say_how_long_the_service_took(api: TestClient) -> None:
    r = api.post("/v1/styles/frost", files={"image": ("c.png", samples.encoded(samples.cat()), "image/png")})
    assert r.status_code == 200
    assert re.fullmatch(r"total;dur=\d+(\.\d+)?", r.headers["server-timing"])


def test_the_shipped_samples_are_the_astronaut_and_the_coffee() -> None:
    shipped = load_samples()
    assert shipped["image"].shape == (160, 160, 3) and shipped["style_image"].shape[1] == 160
    # the astronaut, shrunk: close to the test suite's own copy at the same size
    from PIL import Image

    reference = np.asarray(Image.fromarray(samples.astronaut()).resize((160, 160), Image.LANCZOS), dtype=np.float32)
    assert np.abs(shipped["image"].astype(np.float32) - reference).mean() < 6


def test_preview_cache_is_shared_by_concurrent_first_requests(backend: FakeBackend) -> None:
    import asyncio

    config = AppSpec.from_args(yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"])
    cache = PreviewCache(Catalog(config), backend)

    async def both() -> None:
        await asyncio.gather(cache.get("frost"), cache.get("frost"), cache.get("ink-wash"))

    asyncio.run(both())
    assert sorted(r.params["style"] for _, r in backend.calls) == ["14", "2"]
