"""The playground and the report in a real browser: Debian's headless Chromium driven by selenium.

One server (a tiny fusion bundle whose catalogue holds hostile titles, and a scripted LLM) and one browser for the
whole module. Skipped, with the reason, where selenium, /usr/bin/chromium or /usr/bin/chromedriver is missing
(.ci/run installs the Debian packages ``chromium`` and ``chromium-driver``); nothing here downloads a browser.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gloss.edge.catalog import load_catalog
from gloss.edge.generation.generate import GeneratedQuery
from gloss.edge.prompt import render_item
from gloss.edge.recommend import Recommender
from gloss.edge.report.html import write_report
from gloss.edge.server.app import ServeConfig
from gloss.edge.server.transport import Server, make_server
from tests.conftest import CATALOG_PATH, SEQUENCES_PATH
from tests.edge.test_report import random_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"no Debian chromium ({CHROMIUM}) and chromedriver ({CHROMEDRIVER}): "
                "apt-get install -y chromium chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install 'gloss[test]'")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# selenium talks to chromedriver on localhost; the page to the server on 127.0.0.1.
pytestmark = pytest.mark.allow_hosts(["127.0.0.1", "::1"])
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900")
SCRIPT_TITLE = "<script>window.__pwned = 1</script> Hostile Shampoo Deluxe"
IMG_TITLE = '<img src=x onerror="window.__pwned = 2"> Hostile Shampoo Conditioner'
INVENTED = "An invented shampoo title"
WAIT_S = 10


class FixedGenerator:
    """An LLM stand-in: always the hostile catalogue title and one title that is in no catalogue."""

    def generate(self, history: Sequence[str]) -> list[GeneratedQuery]:
        return [GeneratedQuery(title=t, score=-float(i), text=f"Title: {t}") for i, t in enumerate((SCRIPT_TITLE,
                                                                                                   INVENTED))]


@pytest.fixture(scope="module")
def hostile_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture catalogue plus two titles that are markup, and sequences that buy them after shampoo."""
    from gloss.export.bundle import build_bundle
    from tests.fakes import write_tiny_embedder

    root = tmp_path_factory.mktemp("hostile")
    catalog = load_catalog(CATALOG_PATH)
    rows = [{"asin": a, "title": t} for a, t in zip(catalog.asins, catalog.titles, strict=True)]
    rows += [{"asin": "HOSTILE001", "title": SCRIPT_TITLE}, {"asin": "HOSTILE002", "title": IMG_TITLE}]
    (root / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shampoo = [a for a, t in zip(catalog.asins, catalog.titles, strict=True) if "shampoo" in t.lower()]
    extra = [{"user": f"H{i}", "items": [shampoo[i % len(shampoo)], "HOSTILE001", "HOSTILE002"]} for i in range(6)]
    (root / "sequences.jsonl").write_text(SEQUENCES_PATH.read_text() + "".join(json.dumps(r) + "\n" for r in extra))
    embedder = write_tiny_embedder(root / "embedder", texts=[render_item(r["title"]) for r in rows])
    return build_bundle(root / "items.jsonl", root / "bundle", embedder_dir=embedder, name="hostile",
                        sequences_path=root / "sequences.jsonl", show_progress=False)


@pytest.fixture(scope="module")
def server(hostile_bundle: Path) -> Iterator[Server]:
    loaded = Recommender.load(hostile_bundle, use_generator=False)
    recommender = Recommender(loaded.catalog, loaded.embedder, loaded.index, FixedGenerator(), loaded.fusion)
    server = make_server(recommender, "127.0.0.1", 0, ServeConfig(bundle_dir=hostile_bundle))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield server
    server.shutdown(timeout_s=10)
    server.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def errors(driver: webdriver.Chrome) -> list[dict]:
    """Console messages at SEVERE level since the last call (the log is drained as it is read)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait_for(driver: webdriver.Chrome, css: str, count: int = 1) -> list:
    WebDriverWait(driver, WAIT_S).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= count)
    return driver.find_elements(By.CSS_SELECTOR, css)


def wait_for_answer(driver: webdriver.Chrome, history: Sequence[str]) -> list:
    """The recommendations once they answer this history (an earlier answer may still be on the page)."""
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_element(By.ID, "items").get_attribute("data-history") == " ".join(history))
    return driver.find_elements(By.CSS_SELECTOR, "#items li.item")


def open_page(driver: webdriver.Chrome, server: Server) -> None:
    driver.get(server.url + "/")
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.ID, "facts").find_elements(By.TAG_NAME, "dt"))


def search(driver: webdriver.Chrome, text: str) -> list:
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(text)
    WebDriverWait(driver, WAIT_S).until(
        lambda d: f"\u201c{text}\u201d" in d.find_element(By.ID, "search-status").text)
    return driver.find_elements(By.CSS_SELECTOR, "#matches button.result")


def test_the_page_loads_without_console_errors(browser, server: Server):
    errors(browser)
    open_page(browser, server)
    assert errors(browser) == []
    assert "hostile" in browser.find_element(By.ID, "facts-line").text
    assert browser.find_element(By.ID, "llm").is_enabled()  # the server runs an LLM: the switch works


def test_typing_lists_catalogue_items(browser, server: Server):
    open_page(browser, server)
    results = search(browser, "shampoo")
    titles = [r.find_element(By.CLASS_NAME, "title").text for r in results]
    assert titles and all("shampoo" in t.lower() for t in titles)
    assert wait_for(browser, "#similar button.result")
    assert errors(browser) == []


def test_two_clicks_build_a_history_and_each_recommendation_has_a_bar(browser, server: Server):
    open_page(browser, server)
    first = search(browser, "shampoo")[0]
    picked = [first.get_attribute("data-asin")]
    first.click()
    second = search(browser, "oz")[1]
    picked.append(second.get_attribute("data-asin"))
    second.click()
    basket = wait_for(browser, "#basket li", 2)
    assert [li.get_attribute("data-asin") for li in basket] == picked
    items = wait_for_answer(browser, picked)
    assert items
    assert len(browser.find_elements(By.CSS_SELECTOR, "#items .bar")) == len(items)
    assert all(item.find_elements(By.CSS_SELECTOR, ".bar .seg") for item in items)
    assert not {item.get_attribute("data-asin") for item in items} & set(picked)  # never a history item
    assert "ms on the server" in browser.find_element(By.ID, "rec-status").text
    queries = wait_for(browser, "#query-list li.query", 2)
    assert [q.find_element(By.CLASS_NAME, "title").text for q in queries] == [SCRIPT_TITLE, INVENTED]
    badges = [q.find_element(By.CLASS_NAME, "badge").text for q in queries]
    assert "catalogue title HOSTILE001" in badges[0] and "not a catalogue title" in badges[1]
    browser.find_element(By.CSS_SELECTOR, "#basket li:nth-child(2) button[aria-label^='move up']").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: [li.get_attribute("data-asin") for li in d.find_elements(
        By.CSS_SELECTOR, "#basket li")] == picked[::-1])
    browser.find_element(By.CSS_SELECTOR, "#basket li:nth-child(1) button[aria-label='remove']").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#basket li")) == 1)
    browser.find_element(By.ID, "llm").click()  # switch the LLM off: no generated titles
    WebDriverWait(browser, WAIT_S).until(lambda d: "did not run" in d.find_element(By.ID, "query-list").text)
    assert errors(browser) == []


def test_hostile_titles_render_as_text(browser, server: Server):
    open_page(browser, server)
    results = search(browser, "hostile")
    titles = [r.find_element(By.CLASS_NAME, "title").text for r in results]
    assert SCRIPT_TITLE in titles and IMG_TITLE in titles
    picked = [r.get_attribute("data-asin") for r in results]
    for result in results:
        result.click()
    items = wait_for_answer(browser, picked)
    basket = browser.find_elements(By.CSS_SELECTOR, "#basket li .title")
    assert items and [li.text for li in basket] == [SCRIPT_TITLE, IMG_TITLE][: len(basket)] and len(basket) == 2
    explained = browser.find_element(By.ID, "items").text  # the parts name their history item: a hostile title
    assert SCRIPT_TITLE in explained or IMG_TITLE in explained
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []  # the <img> title was never parsed as HTML
    assert all(s.get_attribute("src") == f"{server.url}/static/app.js" for s in browser.find_elements(
        By.TAG_NAME, "script"))
    assert errors(browser) == []


def test_the_report_opens_and_shows_its_plots(browser, tmp_path: Path):
    path = write_report(tmp_path / "report.html", random_run(SCRIPT_TITLE), random_run("other", seed=1))
    errors(browser)
    browser.get(path.resolve().as_uri())
    images = browser.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 4
    for image in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
        assert image.is_displayed() and image.size["width"] > 300
    assert SCRIPT_TITLE in browser.find_element(By.TAG_NAME, "table").text
    assert browser.execute_script("return window.__pwned === undefined")
    assert errors(browser) == []

