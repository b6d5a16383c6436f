"""The built book, opened in headless Chromium: every page renders, offline.

Runs after `make book` (the test command builds the book first). For every page in _toc.yml,
and for every translated page of the Chinese edition (_build/html/zh/, the pages listed in
locale/translated_pages.yml): no stored error output, every image loaded, every formula
typeset, every widget rendered as live controls that work without a kernel, and no request
leaving the machine; on a Chinese page, Chinese characters also render with a real font (not
as empty boxes). A screenshot of each page is saved under _build/screenshots/ (zh-<page>.png
for the Chinese edition).
"""

import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sys.path.insert(0, str(ROOT / "scripts"))
from edition_switch import translated_pages  # noqa: E402
from toc_notebooks import toc_files  # noqa: E402

PAGES = [p.relative_to(ROOT).with_suffix(".html") for p in toc_files()]
# The Chinese edition's translated pages (the other pages there are the English ones again).
ZH_PAGES = [Path("zh") / f"{page}.html" for page in translated_pages("zh_CN")]


def _page_id(page_path: Path) -> str:
    return f"zh-{page_path.stem}" if page_path.parts[0] == "zh" else page_path.stem


pytestmark = pytest.mark.slow  # needs the built book (make test builds it first)


@pytest.fixture(scope="module")
def browser():
    if not (HTML / "index.html").exists():
        pytest.fail("the book is not built: run `make book` (make test does it first)")
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: apt-get install -y chromium (make test installs it)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.mark.parametrize("page_path", PAGES + ZH_PAGES, ids=_page_id)
def test_page_renders_offline(browser, page_path):
    if page_path.parts[0] == "zh" and not (HTML / "zh" / "index.html").exists():
        pytest.fail("the Chinese edition is not built: run `make book` (it builds both editions)")
    external: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 1600})

    def route(route):
        scheme = urlparse(route.request.url).scheme
        if scheme in ("file", "data", "blob", "about"):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto((HTML / page_path).as_uri(), wait_until="load")
    page.wait_for_timeout(500)

    assert external == [], f"{page_path}: requests left the machine: {external}"
    assert page.locator(".traceback, .output.error").count() == 0, f"{page_path}: stored error output"
    assert "Traceback (most recent call last)" not in page.inner_text("main")

    images = page.eval_on_selector_all(
        "main img", "imgs => imgs.map(i => [i.currentSrc || i.src, i.complete && i.naturalWidth])")
    broken = [src for src, width in images if not width]
    assert not broken, f"{page_path}: images that did not load: {broken}"

    if page.locator("main .math").count():  # `$...$` in a notebook: MathJax, served locally
        # Wait for every formula, not for the first one to be visible: the first is often in
        # the page's table of contents (a heading with math), hidden at this viewport width.
        untypeset = "main .math:not(:has(mjx-container))"
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        try:
            page.wait_for_function(
                f"() => document.querySelectorAll('{untypeset}').length === 0", timeout=30000)
        except PlaywrightTimeout:
            pass  # reported by the assertion below, with the count
        unrendered = page.locator(untypeset).count()
        assert unrendered == 0, f"{page_path}: {unrendered} formulas not typeset by MathJax"

    views = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
    if views:
        page.wait_for_selector(".jupyter-widgets", timeout=15000)
        page.wait_for_timeout(500)
        unrendered = page.evaluate(
            """() => [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
                   .filter(s => !s.parentElement.querySelector('.jupyter-widgets')).length""")
        assert unrendered == 0, f"{page_path}: {unrendered} of {views} widgets did not render"
        selects = page.locator(".widget-dropdown select")
        for i in range(selects.count()):  # explorers: each visible dropdown switches its view
            if selects.nth(i).is_visible():
                _check_dropdown_switches_view(page, selects.nth(i), page_path)
    if page_path.parts[0] == "zh":
        _check_chinese_renders(page, page_path)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{_page_id(page_path)}.png"), full_page=True)
    context.close()


def _check_dropdown_switches_view(page, select, page_path):
    """Choosing another option shows another picture, with no kernel (client-side link)."""
    options = select.locator("option")
    if options.count() < 2:
        return
    stack = select.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]")
    before = stack.evaluate("e => [...e.querySelectorAll('img')].filter(i => i.offsetParent).map(i => i.src)")
    select.select_option(index=1)
    page.wait_for_timeout(300)
    after = stack.evaluate("e => [...e.querySelectorAll('img')].filter(i => i.offsetParent).map(i => i.src)")
    assert before != after, f"{page_path}: the dropdown did not switch the view"


def _check_chinese_renders(page, page_path):
    """The page is declared Chinese, and its font draws CJK glyphs.

    Without a CJK font every Chinese character is drawn as the same empty box, so two different
    characters, drawn in the font of the page's first paragraph, must give two different images.
    """
    assert page.evaluate("document.documentElement.lang") == "zh-CN", f"{page_path}: lang"
    images = page.evaluate(
        """() => {
            const family = getComputedStyle(document.querySelector('main p')).fontFamily;
            const canvas = document.createElement('canvas');
            canvas.width = canvas.height = 64;
            const g = canvas.getContext('2d');
            g.font = `48px ${family}`;
            return ['术', '语'].map(ch => {
                g.clearRect(0, 0, 64, 64);
                g.fillText(ch, 4, 52);
                const data = g.getImageData(0, 0, 64, 64).data;
                return [data.reduce((a, b) => a + b, 0), data.join(',')];
            });
        }""")
    (ink_a, pixels_a), (ink_b, pixels_b) = images
    assert ink_a and ink_b, f"{page_path}: Chinese characters draw nothing"
    assert pixels_a != pixels_b, f"{page_path}: Chinese characters draw as empty boxes (no CJK font)"
