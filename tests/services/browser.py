"""Headless Chromium (Debian's ``chromium``) for the web page tests, driven by Python Playwright.

Never ``playwright install``: the browser is the system one, given by ``executable_path``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.services.common import service_unavailable

CHROMIUM = os.environ.get("LORAMILL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Path of the Chromium binary; skip (or fail under ``make test``) when it is not installed."""
    if not Path(CHROMIUM).is_file():
        service_unavailable("chromium", f"no browser at {CHROMIUM}; run `bash scripts/install-services.sh`")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        service_unavailable("playwright", "pip install playwright (the Python package only)")
    return CHROMIUM


@pytest.fixture
def browser_page(chromium_path: str):
    """A fresh page in a headless Chromium, closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        try:
            yield page
        finally:
            context.close()
            browser.close()
