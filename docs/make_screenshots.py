"""Make docs/playground.png and docs/report.png from a real Beauty bundle (built without the LLM), in Debian's
headless Chromium. Run from the repository root, after building the bundle (a few minutes on 2 cores):

    gloss-export bundle --catalog ../shared/data/amazon2014/beauty/items.jsonl.gz \
        --sequences ../shared/data/amazon2014/beauty/sequences.jsonl.gz --holdout 1 \
        --out-dir benchmarks/.work/beauty-nollm --name beauty
    flock /tmp/gloss-heavy.lock python docs/make_screenshots.py

``--holdout 1`` leaves the test targets out of the co-purchase statistics, so the report's fusion run is honest;
the playground serves the same bundle. The report compares fusion (the bundle's default) with the paper's rule on
the last item, both with history items removed, on the Beauty test split.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from gloss.edge.recommend import Recommender
from gloss.edge.server.app import ServeConfig
from gloss.edge.server.transport import make_server

SEQUENCES = Path("../shared/data/amazon2014/beauty/sequences.jsonl.gz")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--force-device-scale-factor=1")
# The README's example: a UV gel nail dryer, then "Shellac Remover Wraps 100 Count".
HISTORY = (("nail dryer", "B001RMP7M6"), ("shellac remover", "B003TMO3EU"))
WAIT_S = 30


def browser(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def eval_run(bundle_dir: Path, sequences: Path, work_dir: Path, name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "gloss.edge.cli", "eval", str(bundle_dir), "--source", "last-item",
            "--sequences", str(sequences), "--exclude-seen", "--report", str(work_dir / f"{name}.html"),
            "--out", str(work_dir / f"{name}.json"), *args]


def make_report(bundle_dir: Path, sequences: Path, work_dir: Path) -> Path:
    """The paper's rule on the last item (50 neighbours: a full Recall@k curve), then fusion compared with it."""
    subprocess.run(eval_run(bundle_dir, sequences, work_dir, "last-item", "--per-query", "50"), check=True)
    subprocess.run(eval_run(bundle_dir, sequences, work_dir, "fusion", "--fusion", "--compare",
                            str(work_dir / "last-item.json")), check=True)
    return work_dir / "fusion.html"


def shoot_playground(bundle_dir: Path, out: Path) -> None:
    recommender = Recommender.load(bundle_dir, use_generator=None)
    server = make_server(recommender, "127.0.0.1", 0, ServeConfig(bundle_dir=bundle_dir))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    driver = browser(1400, 1300)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, WAIT_S)
        wait.until(lambda d: d.find_element(By.ID, "facts").find_elements(By.TAG_NAME, "dt"))
        k = driver.find_element(By.ID, "k")
        k.clear()
        k.send_keys("6")
        for query, asin in HISTORY:
            box = driver.find_element(By.ID, "q")
            box.clear()
            box.send_keys(query)
            wait.until(lambda d, a=asin: d.find_elements(By.CSS_SELECTOR, f"#results button[data-asin='{a}']"))
            driver.find_element(By.CSS_SELECTOR, f"#results button[data-asin='{asin}']").click()
        history = " ".join(asin for _, asin in HISTORY)
        wait.until(lambda d: d.find_element(By.ID, "items").get_attribute("data-history") == history)
        time.sleep(0.3)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
        server.shutdown(10)
        server.server_close()


def shoot_report(report: Path, out: Path) -> None:
    driver = browser(1280, 1500)
    try:
        driver.get(report.resolve().as_uri())
        WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(
            "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, height + 150)  # the whole page: the window's frame takes some of it
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bundle", type=Path, default=Path("benchmarks/.work/beauty-nollm"))
    parser.add_argument("--sequences", type=Path, default=SEQUENCES)
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/.work/screenshots"))
    parser.add_argument("--out-dir", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    shoot_playground(args.bundle, args.out_dir / "playground.png")
    shoot_report(make_report(args.bundle, args.sequences, args.work_dir), args.out_dir / "report.png")


if __name__ == "__main__":
    main()
