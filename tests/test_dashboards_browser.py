"""The feature dashboards in a real browser: Debian's Chromium, headless, driven by Playwright.

Opens the index and a feature page from file://, checks what rendered (rows, sorting, filtering,
histogram, token shading, links), that the console shows no error and that no request left
file://, and saves screenshots (the test's tmp dir, and $PYTEST_SCREENSHOTS when set).
Chromium missing is a failure, not a skip: `make chromium` installs it.
"""

import os
import shutil
from pathlib import Path

import pytest

from tests import dashboards_fixture

CANDIDATES = ("chromium", "chromium-browser")


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, CANDIDATES)), None)
    if not found:
        pytest.fail(
            "no Chromium found (looked for $CHROMIUM, chromium, chromium-browser): "
            "run `make chromium` (apt-get install chromium, as root) — the dashboards' browser "
            "test needs it"
        )
    return found


@pytest.fixture(scope="module")
def site(tiny_model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("dash_browser")
    out, _ = dashboards_fixture.build(tiny_model_dirs["llama"], root)
    return out["hook_points"][
        dashboards_fixture.HOOK
    ], root / "features" / "tiny" / dashboards_fixture.HOOK


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True)
        yield b
        b.close()


class Watched:
    """A page whose console errors and non-file:// requests are recorded (and blocked)."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.errors, self.requests = [], []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def _route(self, route):
        url = route.request.url
        return route.continue_() if url.startswith("file://") else route.abort()

    def check_clean(self):
        assert self.errors == [], self.errors
        assert [u for u in self.requests if not u.startswith("file://")] == []


def screenshot(page, tmp_path: Path, name: str):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("PYTEST_SCREENSHOTS"):
        out = Path(os.environ["PYTEST_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)


def column(page, i: int) -> list[str]:
    return page.eval_on_selector_all(
        "#features tbody tr",
        "rows => rows.filter(r => r.style.display !== 'none')"
        f".map(r => r.cells[{i}].textContent.trim())",
    )


def test_index_sorts_filters_and_links_to_a_feature_page(site, browser, tmp_path):
    data, folder = site
    w = Watched(browser)
    page = w.page
    page.goto((folder / "index.html").as_uri())
    n = len(data["index"])
    assert page.locator("#features tbody tr").count() == n
    assert page.locator("#count").inner_text() == f"{n} of {n} features"
    headers = page.locator("#features thead th")
    # Sort by feature id: ascending, then descending on a second click.
    headers.nth(0).click()
    ids = [int(x) for x in column(page, 0)]
    assert ids == sorted(ids)
    headers.nth(0).click()
    assert [int(x) for x in column(page, 0)] == sorted(ids, reverse=True)
    # Sort by rank: candidates 1..k first, the unranked (controls, circuit only) after.
    headers.nth(1).click()
    ranks = column(page, 1)
    k = sum(r["rank"] is not None for r in data["index"])
    assert ranks[:k] == [str(i) for i in range(1, k + 1)] and set(ranks[k:]) <= {"—"}
    # Filter: the role selector, then free text.
    page.select_option("#role", "control")
    controls = [str(r["feature"]) for r in data["index"] if r["control"]]
    assert sorted(column(page, 0)) == sorted(controls) and len(controls) == 2
    page.select_option("#role", "")
    page.fill("#filter", controls[0])
    assert controls[0] in column(page, 0) and len(column(page, 0)) < n
    page.fill("#filter", "")
    assert len(column(page, 0)) == n
    screenshot(page, tmp_path, "dashboard_index.png")
    # The rank-1 feature's link opens its page.
    top = next(r for r in data["index"] if r["rank"] == 1)["feature"]
    page.click(f"#features a[href='feature_{top}.html']")
    page.wait_for_load_state()
    assert page.url.endswith(f"/feature_{top}.html")
    assert page.locator("h1").inner_text().startswith(f"Feature {top}")
    w.check_clean()


def test_feature_page_renders_histogram_shading_and_tables(site, browser, tmp_path):
    data, folder = site
    fired = [
        f for f in data["features"].values() if f["histogram"]["n_nonzero"] and f["top_contexts"]
    ]
    f = max(fired, key=lambda f: len(f["top_contexts"]))
    w = Watched(browser)
    page = w.page
    page.goto((folder / f"feature_{f['feature']}.html").as_uri())
    assert page.locator("#histogram rect").count() == len(f["histogram"]["counts"])
    box = page.locator("#histogram").bounding_box()
    assert box and box["width"] > 200 and box["height"] > 100
    n_ctx = len(f["top_contexts"])
    assert page.locator("#top-contexts .ctx").count() == n_ctx
    assert page.locator("#top-contexts .tok.here").count() == n_ctx
    # The ranked token of the top context carries the darkest shade (alpha 1).
    style = page.locator("#top-contexts .tok.here").first.get_attribute("style")
    assert "rgba(232, 130, 42, 1.000)" in style
    shaded = page.eval_on_selector_all(
        "#top-contexts .tok",
        "ts => ts.filter(t => getComputedStyle(t).backgroundColor !== 'rgba(0, 0, 0, 0)').length",
    )
    assert shaded >= n_ctx
    assert page.locator("#quantiles .ctx").count() == sum(
        len(q["contexts"]) for q in f["quantiles"]
    )
    assert page.locator("#promoted tr").count() == len(f["logits"]["promoted"]) + 1
    assert page.locator("#suppressed tr").count() == len(f["logits"]["suppressed"]) + 1
    assert page.locator("#neighbours tr").count() == len(f["neighbours"]) + 1
    if f["effects"]:
        assert page.locator("#effects circle").count() >= 1
    screenshot(page, tmp_path, "dashboard_feature.png")
    page.click("text=← all features")
    page.wait_for_load_state()
    assert page.url.endswith("/index.html")
    w.check_clean()
