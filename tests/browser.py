"""The HTML reports in a real browser: headless Debian chromium through selenium (installed by
tools/setup_browser.sh), and the checks every report must pass there."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def chromium_driver(profile: Path):
    """Headless Debian chromium through selenium; fails (never skips) when the browser is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: run tools/setup_browser.sh (installs chromium)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install selenium (a dev dependency)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,2400",
        f"--user-data-dir={profile}",  # fresh per test: no state from earlier runs
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium-manager would otherwise try to download one
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    return driver


def assert_renders(driver, page: Path, title: str, images: int) -> None:
    """``page`` loads with ``title``, shows ``images`` plots that all loaded, is not blank on screen
    and logs no browser error."""
    from PIL import Image

    driver.get(page.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    assert title in driver.title, driver.title
    shown = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
    )
    assert len(shown) == images, shown
    assert all(complete and width > 0 for _, complete, width in shown), shown
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    colours = shot.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 100, f"{page}: screenshot has {len(colours)} colours"
    white = sum(count for count, rgb in colours if rgb == (255, 255, 255))
    assert white < 0.97 * shot.width * shot.height, f"{page}: screenshot is blank"
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe
