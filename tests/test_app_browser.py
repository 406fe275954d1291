"""The demo in a real browser: `streamlit run` on 127.0.0.1, headless Chromium via Playwright.

The runs folder is empty, as on a fresh clone, so the app opens on the bundled CIFAR-10
model. Uses Debian's ``chromium`` package (``/usr/bin/chromium``) as Playwright's browser, so
no browser download is needed. Screenshots land in ``test-artifacts/``: ``app.png`` (the
whole first page), ``app-classify.png`` and ``app-card.png`` (what README shows from
``docs/img/``; copy them there to refresh it).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_fixtures import CIFAR_CLASSES

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
SAMPLE = REPO / "app" / "samples" / "temple.jpg"
CIFAR_SAMPLES = sorted(p.stem.removeprefix("cifar-") for p in (REPO / "app" / "samples").glob("cifar-*.png"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PREDICTION = re.compile(r"(" + "|".join(CIFAR_CLASSES) + r") — \d+\.\d%")
VIEWPORT = {"width": 1400, "height": 1000}


@pytest.fixture(scope="module")
def sync_playwright():
    """Playwright's sync API, or a skip when Chromium or playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (python) is not installed (pip install playwright)")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer on {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def app_url(sync_playwright, tmp_path_factory) -> Iterator[str]:
    """The demo served by a real `streamlit run` subprocess as on a fresh clone: started from a
    folder without ``runs/`` and no ``$NASDEPLOY_RUNS``."""
    cwd = tmp_path_factory.mktemp("fresh")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "NASDEPLOY_RUNS"} | {"OMP_NUM_THREADS": "1"}
    log = (tmp_path_factory.mktemp("log") / "streamlit.log").open("w")
    command = [
        sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "demo.py"),
        "--server.headless=true", "--server.address=127.0.0.1", f"--server.port={port}",
        "--server.fileWatcherType=none", "--browser.gatherUsageStats=false",
    ]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def page(sync_playwright, app_url):
    """A fresh page on the demo, once its first run has finished."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(app_url, wait_until="domcontentloaded")
            page.locator('input[type="file"]').first.wait_for(state="attached", timeout=90_000)
            yield page
        finally:
            browser.close()


def _settled(page) -> None:
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=90_000)
    page.wait_for_timeout(1000)  # let the charts finish drawing


def test_first_launch_classifies_the_ten_cifar_photos_with_the_bundled_model(page):
    ARTIFACTS.mkdir(exist_ok=True)
    page.get_by_text("bundled CIFAR-10 model").first.wait_for(timeout=60_000)
    headings = page.locator("h4").filter(has_text=PREDICTION)
    headings.nth(len(CIFAR_SAMPLES) - 1).wait_for(timeout=90_000)
    page.get_by_text(re.compile(r"inference \d+\.\d+ ms")).first.wait_for(timeout=30_000)
    _settled(page)
    page.screenshot(path=str(ARTIFACTS / "app-classify.png"))
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
    predicted = [PREDICTION.search(text).group(1) for text in headings.all_inner_texts()]
    assert len(predicted) == len(CIFAR_SAMPLES) == 10
    hits = sum(p == t for p, t in zip(predicted, CIFAR_SAMPLES, strict=True))
    assert hits >= 8, list(zip(predicted, CIFAR_SAMPLES, strict=True))
    assert (ARTIFACTS / "app-classify.png").stat().st_size > 10_000


def test_model_card_of_the_bundled_model(page):
    ARTIFACTS.mkdir(exist_ok=True)
    page.get_by_role("tab", name="Model card").click()
    page.get_by_text("Latency here").first.wait_for(timeout=60_000)
    page.get_by_text("About the bundled model").first.wait_for(timeout=30_000)
    _settled(page)
    page.screenshot(path=str(ARTIFACTS / "app-card.png"))
    assert page.get_by_text(re.compile(r"\d+@\d+")).count() >= 1  # N@F


def test_an_upload_is_classified(page):
    headings = page.locator("h4").filter(has_text=PREDICTION)
    headings.nth(len(CIFAR_SAMPLES) - 1).wait_for(timeout=90_000)
    page.locator('input[type="file"]').first.set_input_files(str(SAMPLE))
    page.get_by_text(re.compile(r"temple\.jpg · \d+×\d+")).first.wait_for(timeout=60_000)
    headings.nth(len(CIFAR_SAMPLES)).wait_for(timeout=60_000)  # uploads come first, then the photos
    assert PREDICTION.search(headings.first.inner_text())
