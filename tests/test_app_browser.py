"""The demo in a real browser: `streamlit run` on 127.0.0.1, headless Chromium via Playwright.

Uses Debian's ``chromium`` package (``/usr/bin/chromium``) as Playwright's browser, so no
browser download is needed. The screenshot is kept at ``test-artifacts/app.png``.
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
from app_fixtures import CIFAR_CLASSES, make_runs_folder

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
SAMPLE = REPO / "app" / "samples" / "temple.jpg"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PREDICTION = re.compile(r"(" + "|".join(CIFAR_CLASSES) + r") — \d+\.\d%")


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
    """The demo served by a real `streamlit run` subprocess over a test runs folder."""
    runs = make_runs_folder(tmp_path_factory.mktemp("runs"))
    port = _free_port()
    env = {**os.environ, "NASDEPLOY_RUNS": str(runs.root), "OMP_NUM_THREADS": "1"}
    log = (tmp_path_factory.mktemp("log") / "streamlit.log").open("w")
    command = [
        sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "demo.py"),
        "--server.headless=true", "--server.address=127.0.0.1", f"--server.port={port}",
        "--server.fileWatcherType=none", "--browser.gatherUsageStats=false",
    ]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
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


def test_upload_shows_predictions_and_screenshot(sync_playwright, app_url):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "app.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url, wait_until="domcontentloaded")
            uploader = page.locator('input[type="file"]').first
            uploader.wait_for(state="attached", timeout=60_000)
            uploader.set_input_files(str(SAMPLE))
            heading = page.get_by_text(PREDICTION).first
            heading.wait_for(timeout=60_000)
            page.get_by_text(re.compile(r"inference \d+\.\d+ ms")).first.wait_for(timeout=30_000)
            page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=60_000)
            page.wait_for_timeout(1000)  # let the bar chart finish drawing
            page.screenshot(path=str(shot), full_page=True)
            text = heading.inner_text()
        finally:
            browser.close()
    assert PREDICTION.search(text), text
    assert shot.stat().st_size > 10_000
