"""The web page at GET /, driven in a real headless Chromium (Debian's) against the real service.

Screenshots go to artifacts/web/ (ignored by git) so a person can look at what the tests saw.
Where Chromium or Playwright is missing the tests skip with the reason, except under CI=true,
where they fail: CI must run them (`make test` installs Chromium, scripts/ensure-chromium.sh).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests import samples
from tests.samples import ROOT

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("STYLEFLEET_CHROMIUM", "/usr/bin/chromium")
# Keep the browser off the network: no background fetches, updates, sync or QUIC probes.
# Playwright gives every launch a fresh temporary --user-data-dir of its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts" / "web"
RESULT_TIMEOUT_MS = 180_000  # the suite shares two cores with the models
# wait_for_function predicates are written as functions ("() => ..."): Playwright evaluates a bare
# expression with eval() in the page, which the page's Content-Security-Policy refuses.


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (make install-test)")
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing (scripts/ensure-chromium.sh installs Debian's chromium)")
    with sync_playwright() as pw:
        try:
            launched = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Error as exc:
            _unavailable(f"Chromium at {CHROMIUM} did not start: {exc}")
        try:
            yield launched
        finally:
            launched.close()


# Reports every Content-Security-Policy violation to the test: the event the browser fires at the
# document for each one (a Playwright init script runs outside the page's policy). The last
# report's promise settles once the test has recorded it.
_REPORT_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (e) => {
  const where = `${e.sourceFile}:${e.lineNumber}`;
  window.__cspReported = window.__cspViolation(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"} at ${where}`);
});"""


def _watch_policy(context: Any) -> list[str]:
    """The policy violations of the context's pages, as the document's events and the console say them."""
    violations: list[str] = []
    context.expose_function("__cspViolation", lambda text: violations.append(text))
    context.add_init_script(_REPORT_VIOLATIONS)
    context.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    return violations


@pytest.fixture()
def page_for(browser: Any, base_url: str) -> Iterator[Any]:
    """page_for(width, height): a fresh page (own context) that may load nothing but the service.

    After the test: no request left the service's origin, no script error happened and the browser
    reported no Content-Security-Policy violation."""
    contexts: list[tuple[Any, list[str], list[str], list[str]]] = []

    def make(width: int = 1280, height: int = 900) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        elsewhere: list[str] = []
        errors: list[str] = []

        def only_the_service(route: Any) -> None:
            url = route.request.url
            if url.startswith((base_url + "/", "blob:", "data:")):
                route.continue_()
            else:
                elsewhere.append(url)
                route.abort()

        context.route("**/*", only_the_service)
        violations = _watch_policy(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(60_000)
        contexts.append((context, elsewhere, errors, violations))
        return page

    yield make
    for context, elsewhere, errors, violations in contexts:
        context.close()
        assert elsewhere == [], f"the page tried to load from elsewhere: {elsewhere}"
        assert errors == [], f"script errors on the page: {errors}"
        assert violations == [], f"Content-Security-Policy violations: {violations}"


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # else the sticky styles panel is drawn where the scroll left it
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _write(path: Path, pixels: np.ndarray, fmt: str = "JPEG") -> Path:
    path.write_bytes(samples.encoded(pixels, fmt, quality=92) if fmt == "JPEG" else samples.encoded(pixels, fmt))
    return path


def _small(pixels: np.ndarray, side: int = 160) -> np.ndarray:
    img = Image.fromarray(pixels)
    img.thumbnail((side, side))
    return np.asarray(img)


def _open(page: Any, base_url: str) -> None:
    page.goto(base_url + "/")
    page.wait_for_selector("body[data-ready='true']")


def _pick(page: Any, style: str) -> None:
    page.locator(f".card[data-style='{style}']").click()
    page.wait_for_selector("#settings:not([hidden])")


def test_every_style_is_listed_by_task_with_a_preview(page_for: Any, base_url: str, client: Any) -> None:
    page = page_for()
    _open(page, base_url)
    names = {s["name"] for s in client.get("/v1/styles").json()["styles"]}
    cards = page.locator(".card")
    assert set(cards.evaluate_all("cards => cards.map(c => c.dataset.style)")) == names
    groups = page.locator(".group h3").all_inner_texts()
    assert [g.lower() for g in groups] == ["painting styles", "any picture as the style", "background removal", "id photos"]
    # every preview loaded (rendered once by the router from its 160 px sample photo)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth === 160)"
        " && document.querySelectorAll('.card img').length === document.querySelectorAll('.card').length",
        timeout=RESULT_TIMEOUT_MS,
    )
    _shot(page, "styles")


def test_one_picture_shows_the_result_its_variant_and_a_download(page_for: Any, base_url: str, tmp_path: Path) -> None:
    page = page_for()
    _open(page, base_url)
    _pick(page, "oil-paint")  # a painting style with two A/B variants
    page.set_input_files("#file-image", str(_write(tmp_path / "astronaut.jpg", samples.astronaut())))
    page.fill("#param-max_side", "256")
    with page.expect_response(lambda r: r.url.endswith("/v1/styles/oil-paint") and r.request.method == "POST",
                              timeout=RESULT_TIMEOUT_MS) as answer:
        page.click("#run")
    assert answer.value.status == 200
    page.wait_for_selector("#single:not([hidden])")
    page.wait_for_function("() => { const i = document.getElementById('result-img'); return i.complete && i.naturalWidth > 0 }")
    assert page.eval_on_selector("#result-img", "img => [img.naturalWidth, img.naturalHeight]") == [256, 256]
    variant = page.inner_text("#result-variant")
    assert variant == answer.value.headers["x-stylefleet-variant"] and variant in {"a", "b"}
    assert " s on the service" in page.inner_text("#result-timing")
    page.locator("#divider").fill("30")  # the before/after divider moves
    _shot(page, "one-picture")

    with page.expect_download() as download:
        page.click("#download")
    saved = Image.open(download.value.path())
    assert saved.size == (256, 256) and download.value.suggested_filename == f"astronaut-oil-paint-{variant}.png"


def test_the_page_answers_under_its_strict_policy(page_for: Any, base_url: str, tmp_path: Path) -> None:
    """The page as served: its policy in force, and a picture in and a result out without one
    violation (page_for fails the test on any the browser reports)."""
    page = page_for()
    answer = page.goto(base_url + "/")
    assert answer is not None
    headers = answer.headers
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert (headers["x-content-type-options"], headers["x-frame-options"], headers["referrer-policy"]) == ("nosniff", "DENY", "no-referrer")
    page.wait_for_selector("body[data-ready='true']")
    _pick(page, "frost")
    page.set_input_files("#file-image", str(_write(tmp_path / "cat.jpg", _small(samples.cat(), 96))))
    page.click("#run")
    _result_ready(page)  # the result, shown from a blob: URL (img-src allows blob:)
    assert page.get_attribute("#result-img", "src").startswith("blob:")
    page.click("[data-view='side']")
    _shot(page, "under-the-policy")


def test_a_violation_would_be_reported(browser: Any, base_url: str) -> None:
    """The watch that page_for relies on sees a violation: an inline script, refused by the policy."""
    context = browser.new_context()
    try:
        violations = _watch_policy(context)
        page = context.new_page()
        _open(page, base_url)
        ran = page.evaluate(
            """async () => {
              const refused = new Promise((seen) => document.addEventListener("securitypolicyviolation", seen, { once: true }));
              const s = document.createElement("script");
              s.textContent = "window.ran = true";
              document.body.append(s);
              await refused;
              await window.__cspReported;
              return window.ran === true;
            }"""
        )
        assert not ran, "the inline script ran: the policy is not in force"
        assert any(v.startswith("script-src-elem blocked inline") for v in violations), violations
    finally:
        context.close()


def test_the_api_docs_work_offline_under_the_policy(page_for: Any, base_url: str) -> None:
    """/docs: Swagger UI from the service's own files (page_for refuses any other host), showing
    every route and calling the API, without a violation."""
    page = page_for()
    page.goto(base_url + "/docs")
    page.wait_for_selector(".opblock")
    assert page.locator(".opblock-summary-path", has_text="/v1/jobs").count() > 0
    page.locator(".opblock-summary-path", has_text="/v1/errors").first.click()
    page.locator("button.try-out__btn").first.click()
    with page.expect_response(lambda r: r.url.endswith("/v1/errors")) as answer:
        page.locator("button.execute").first.click()
    assert answer.value.status == 200
    page.wait_for_selector(".live-responses-table")
    _shot(page, "api-docs")


def test_five_pictures_run_as_a_batch_to_5_of_5_with_a_zip(page_for: Any, base_url: str, tmp_path: Path) -> None:
    page = page_for()
    _open(page, base_url)
    _pick(page, "starry-swirls")
    photos = [samples.astronaut(), samples.cat(), samples.coffee(), samples.astronaut()[:, ::-1], samples.cat()[::-1]]
    paths = [str(_write(tmp_path / f"photo-{i}.jpg", _small(p))) for i, p in enumerate(photos)]
    page.set_input_files("#file-image", paths)
    assert page.inner_text("#run") == "Apply to 5 pictures"
    # A batch goes to the service as one job; the zip comes from the job.
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as created:
        page.click("#run")
    assert created.value.status == 202, created.value.text()
    assert (created.value.request.post_data_buffer or b"").count(b'name="images"') == 5
    page.wait_for_function("() => document.getElementById('batch-count').textContent === '5/5'", timeout=RESULT_TIMEOUT_MS)
    page.wait_for_selector("#batch-download:not([hidden])")
    assert page.get_attribute("#batch", "data-mode") == "job"
    assert page.locator(".item[data-status='ok']").count() == 5
    assert page.get_attribute("#batch-download", "href") == created.value.json()["urls"]["result"]
    _shot(page, "five-pictures")

    with page.expect_download() as download:
        page.click("#batch-download")
    with zipfile.ZipFile(download.value.path()) as archive:
        images = [n for n in archive.namelist() if n.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))]
        assert len(images) == 5
        for name in images:
            assert Image.open(io.BytesIO(archive.read(name))).size[0] > 0


def test_the_page_retries_what_the_service_says_is_retryable(page_for: Any, base_url: str, tmp_path: Path) -> None:
    """Sending pictures itself (no jobs API), the page retries an answer whose code GET /v1/errors
    marks retryable (model_unavailable: the page kept its own list, which had only 'overloaded'),
    and not one that is not (invalid_params)."""
    page = page_for()
    answers = {"a.jpg": [503], "b.jpg": [422]}  # each picture's scripted first answers, then the real service
    sent: list[str] = []

    def styles_api(route: Any) -> None:
        body = route.request.post_data_buffer or b""
        name = next(n for n in answers if f'filename="{n}"'.encode() in body)
        sent.append(name)
        if not answers[name]:
            route.continue_()
        elif answers[name].pop(0) == 503:
            route.fulfill(status=503, headers={"Retry-After": "1"}, json={"error": {"code": "model_unavailable", "message": "loading"}})
        else:
            route.fulfill(status=422, json={"error": {"code": "invalid_params", "message": "strength: too big"}})

    not_found = {"error": {"code": "not_found", "message": "Not Found"}}
    page.route(f"{base_url}/v1/jobs", lambda route: route.fulfill(status=404, json=not_found))
    page.route(f"{base_url}/v1/styles/frost", styles_api)
    _open(page, base_url)
    _pick(page, "frost")
    page.set_input_files("#file-image", [str(_write(tmp_path / n, _small(samples.cat(), 64))) for n in answers])
    with page.expect_response(lambda r: r.url.endswith("/v1/errors")) as table:
        page.click("#run")
    assert table.value.status == 200
    page.wait_for_function("() => document.getElementById('batch-count').textContent === '2/2'", timeout=RESULT_TIMEOUT_MS)
    assert page.get_attribute("#batch", "data-mode") == "page"
    assert sorted(sent) == ["a.jpg", "a.jpg", "b.jpg"]
    assert page.locator(".item[data-status='ok'] .item-name").inner_text() == "a.jpg"
    assert page.locator(".item[data-status='failed'] .item-name").inner_text() == "b.jpg"


def test_a_corrupt_file_gets_a_plain_sentence(page_for: Any, base_url: str, tmp_path: Path) -> None:
    page = page_for()
    _open(page, base_url)
    _pick(page, "starry-swirls")
    broken = tmp_path / "holiday.jpg"
    broken.write_bytes(samples.NOT_AN_IMAGE)
    page.set_input_files("#file-image", str(broken))
    with page.expect_response(lambda r: r.url.endswith("/v1/styles/starry-swirls")) as answer:
        page.click("#run")
    page.wait_for_selector("#message:not([hidden])")
    sentence = page.inner_text("#message p")
    assert sentence.startswith("This file could not be read as a picture.")
    assert "{" not in sentence and "invalid_image" not in sentence
    # the line support asks for: the code, the status and the request id the answer carried
    request_id = answer.value.headers["x-request-id"]
    page.click("#message summary")
    assert page.inner_text("#message details span") == f"error code: invalid_image · HTTP 400 · request id: {request_id}"
    assert page.is_hidden("#single")
    _shot(page, "corrupt-file")


def test_a_batch_shows_which_picture_failed_and_why(page_for: Any, base_url: str, tmp_path: Path) -> None:
    page = page_for()
    _open(page, base_url)
    _pick(page, "ink-wash")
    good = [_write(tmp_path / "cat.jpg", _small(samples.cat(), 96)), _write(tmp_path / "coffee.jpg", _small(samples.coffee(), 96))]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(samples.truncated_jpeg(samples.cat())[:200])
    page.set_input_files("#file-image", [str(good[0]), str(broken), str(good[1])])
    page.fill("#param-strength", "0.5")
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as created:
        page.click("#run")
    assert created.value.status == 202, created.value.text()
    body = created.value.request.post_data_buffer or b""
    assert body.count(b'name="images"') == 3 and b'name="style"' in body and b'name="strength"' in body
    page.wait_for_function("() => document.getElementById('batch-count').textContent === '3/3'", timeout=RESULT_TIMEOUT_MS)
    assert page.get_attribute("#batch", "data-mode") == "job"  # the job's progress events drove the count
    failed = page.locator(".item[data-status='failed']")
    assert failed.count() == 1
    assert failed.locator(".item-name").inner_text() == "broken.jpg"
    assert failed.locator(".item-error").inner_text().startswith("This file could not be read as a picture.")
    assert page.locator(".item[data-status='ok']").count() == 2
    page.wait_for_selector("#batch-download:not([hidden])")
    assert "2 results" in page.inner_text("#batch-download")
    assert page.get_attribute("#batch-download", "href") == created.value.json()["urls"]["result"]
    _shot(page, "batch-with-a-failure")


def test_the_page_fits_a_phone_screen(page_for: Any, base_url: str, tmp_path: Path) -> None:
    page = page_for(390, 844)  # a common phone viewport, CSS pixels
    _open(page, base_url)
    _shot(page, "phone-styles")
    _pick(page, "remove-background")  # a transparent result, over the checkerboard
    page.set_input_files("#file-image", str(_write(tmp_path / "astronaut.jpg", _small(samples.astronaut(), 256))))
    page.click("#run")
    page.wait_for_selector("#single:not([hidden])", timeout=RESULT_TIMEOUT_MS)
    page.wait_for_function("() => { const i = document.getElementById('result-img'); return i.complete && i.naturalWidth > 0 }")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways on a phone"
    page.locator("#single").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "phone-result.png"))
    _shot(page, "phone-full")


# -- generative styles: the tiny Stable Diffusion app, mounted at /genai in the test session --------


@pytest.fixture()
def genai_page(page_for: Any, base_url: str, genai_app: dict[str, Any]) -> Any:
    """The page, talking to the /genai application: the page calls the API at the root (/v1/...),
    as it is served in production, so its API calls are sent on to /genai/v1/... here, through
    Serve's proxy, which serves both applications (the router's own port serves one)."""
    page = page_for()
    root, genai = base_url + "/v1/", genai_app["url"] + "/v1/"
    page.route(f"{root}**", lambda route: route.continue_(url=route.request.url.replace(root, genai, 1)))
    _open(page, base_url)
    return page


def _posted(page: Any, style: str) -> Any:
    return page.expect_response(lambda r: r.url.endswith(f"/v1/styles/{style}") and r.request.method == "POST", timeout=RESULT_TIMEOUT_MS)


def _shown_pixels(page: Any) -> str:
    """The picture on screen, as the page draws it (a data URL of its pixels)."""
    return page.eval_on_selector(
        "#result-img",
        "img => { const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;"
        " c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL('image/png'); }",
    )


def _result_ready(page: Any) -> None:
    page.wait_for_selector("#single:not([hidden])", timeout=RESULT_TIMEOUT_MS)
    page.wait_for_function("() => { const i = document.getElementById('result-img'); return i.complete && i.naturalWidth > 0 }")


def test_a_prompt_only_style_makes_a_picture_shows_its_seed_and_makes_it_again(genai_page: Any) -> None:
    page = genai_page
    _pick(page, "tiny-t2i")
    assert page.inner_text("#work-title").endswith("Describe the picture")
    assert page.locator("#inputs .drop").count() == 0  # no picture to add
    assert page.input_value("#seed") == "1234"  # the preset's seed, shown and editable
    page.fill("#prompt", "a red kite")
    with _posted(page, "tiny-t2i") as first:
        page.click("#run")
    assert first.value.status == 200 and first.value.headers["x-stylefleet-seed"] == "1234"
    _result_ready(page)
    assert page.inner_text("#result-seed") == "1234"
    assert page.eval_on_selector("#result-img", "img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    assert page.get_attribute("#compare", "data-before") == "missing"  # the picture alone, no before/after
    first_pixels = _shown_pixels(page)

    page.click("#new-seed")
    seed = page.input_value("#seed")
    assert seed != "1234" and 0 <= int(seed) < 2**32
    with _posted(page, "tiny-t2i") as second:
        page.click("#run")
    assert second.value.headers["x-stylefleet-seed"] == seed
    _result_ready(page)
    page.wait_for_function(f"() => document.getElementById('result-seed').textContent === '{seed}'")
    second_pixels = _shown_pixels(page)
    assert second_pixels != first_pixels
    shown = page.get_attribute("#result-img", "src")
    with _posted(page, "tiny-t2i") as again:
        page.click("#same-again")
    assert again.value.headers["x-stylefleet-seed"] == seed
    page.wait_for_function("src => document.getElementById('result-img').getAttribute('src') !== src", arg=shown)
    _result_ready(page)
    assert _shown_pixels(page) == second_pixels  # the same seed and settings: the same picture
    _shot(page, "prompt-one-picture")


def test_number_of_pictures_gives_consecutive_seeds_as_tabs(genai_page: Any) -> None:
    page = genai_page
    _pick(page, "tiny-t2i")
    page.fill("#seed", "50")
    page.fill("#count", "3")
    assert page.inner_text("#run") == "Make 3 pictures"
    seeds: list[str] = []
    page.on("response", lambda r: seeds.append(r.headers.get("x-stylefleet-seed", "")) if r.url.endswith("/v1/styles/tiny-t2i") else None)
    page.click("#run")
    _result_ready(page)
    assert page.locator("#variant-tabs button").all_inner_texts() == ["Seed 50", "Seed 51", "Seed 52"]
    assert sorted(seeds) == ["50", "51", "52"]
    page.locator("#variant-tabs button").nth(2).click()
    assert page.inner_text("#result-seed") == "52"


def test_a_list_of_prompts_runs_as_a_job_with_live_progress(genai_page: Any) -> None:
    page = genai_page
    _pick(page, "tiny-t2i")
    page.fill("#prompt", "a red kite\na green boat\na blue house")
    assert page.inner_text("#run") == "Make 3 pictures"
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as created:
        page.click("#run")
    assert created.value.status == 202, created.value.text()
    assert b'name="prompts"' in (created.value.request.post_data_buffer or b"")
    page.wait_for_function("() => document.getElementById('batch-count').textContent === '3/3'", timeout=RESULT_TIMEOUT_MS)
    assert page.get_attribute("#batch", "data-mode") == "job"
    assert page.locator(".item[data-status='ok'] .item-name").all_inner_texts() == ["a red kite", "a green boat", "a blue house"]
    page.wait_for_selector("#batch-download:not([hidden])")
    assert page.get_attribute("#batch-download", "href") == created.value.json()["urls"]["result"]
    _shot(page, "prompt-batch")


def test_an_img2img_style_takes_a_picture_and_a_prompt(genai_page: Any, tmp_path: Path) -> None:
    page = genai_page
    _pick(page, "tiny-img2img")
    assert page.locator("#inputs .drop").count() == 1 and page.is_visible("#prompt")
    assert page.is_hidden("#count-row")  # one picture per picture given
    page.set_input_files("#file-image", str(_write(tmp_path / "cat.jpg", _small(samples.cat(), 96))))
    page.fill("#prompt", "a watercolour cat")
    with _posted(page, "tiny-img2img") as answer:
        page.click("#run")
    assert answer.value.status == 200
    body = answer.value.request.post_data_buffer or b""
    assert b'name="image"' in body and b"a watercolour cat" in body
    _result_ready(page)
    assert page.get_attribute("#compare", "data-before") is None  # before and after, as for any picture
    _shot(page, "img2img")
