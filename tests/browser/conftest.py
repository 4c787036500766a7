"""The course in a real browser (make test-browser): fixtures.

Playwright (from PyPI) drives Debian's chromium through ``executable_path``, since no browser
can be downloaded here; JupyterLab serves a copy of the notebooks on a loopback port
(lab_server.py). pyproject's pytest options leave this folder out of ``make test``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from lab_page import VIEWPORT, BrowserReport
from lab_server import NOTEBOOKS, LabServer

ARTIFACTS = Path(__file__).resolve().parents[2] / "browser-artifacts"   # git-ignored; emptied at each run's start
CHROMIUM = Path("/usr/bin/chromium")       # Debian's package; Playwright's own builds can't be downloaded
HOW_TO_INSTALL = "run `make test-browser`, which installs it (scripts/provision.sh --browser)"


def missing_browser_parts() -> str | None:
    """Why the browser test can't run here, or None if chromium, the CJK fonts and Playwright are there."""
    if not CHROMIUM.exists():
        return f"Debian's chromium is not installed ({CHROMIUM}): {HOW_TO_INSTALL}"
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "fonts-noto-cjk"], capture_output=True, text=True)
    if "install ok installed" not in status.stdout:
        return f"fonts-noto-cjk is not installed, so the Chinese would render as boxes: {HOW_TO_INSTALL}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Playwright is not installed in this Python: {HOW_TO_INSTALL}"
    return None


REPORT = pytest.StashKey[BrowserReport]()


@pytest.fixture(scope="session")
def report(request) -> BrowserReport:
    return request.config.stash.setdefault(REPORT, BrowserReport())


@pytest.fixture(scope="session")
def browser(report):
    """Debian's chromium, headless, started once for the session."""
    reason = missing_browser_parts()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the browser tests)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    # chromium writes crash-report settings and dconf under $HOME even with a throwaway profile
    home = tempfile.mkdtemp(prefix="mc-browser-home-")
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=f"{home}/.config", XDG_CACHE_HOME=f"{home}/.cache")
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), env=env)
            try:
                yield chromium
            finally:
                chromium.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The folder for this run's screenshots (the last run's are removed first)."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir()
    return ARTIFACTS


@pytest.fixture
def lab(no_leftovers, browser):
    """A JupyterLab server for this test, its files and the kernels' engine root under the test's root."""
    server = LabServer(NOTEBOOKS, no_leftovers / "lab")
    try:
        server.start()
        yield server
    finally:
        server.stop()     # also when it never came up


@pytest.fixture
def page(browser):
    """A fresh browser tab (its own cookies and storage) in a 1,280 px wide window."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        yield context.new_page()
    finally:
        context.close()


def pytest_terminal_summary(terminalreporter, config) -> None:
    report = config.stash.get(REPORT, None)
    if report is None:
        return
    write = terminalreporter.write_line
    tables = [m for m in report.measured if m.selector == ".mc-trace"]
    players = [m for m in report.measured if m.selector == ".mc-player"]
    write(f"browser: {len(tables)} trace tables and {len(players)} step players measured in a "
          f"{VIEWPORT['width']} px window")
    if report.measured:
        widest = max(report.measured, key=lambda m: m.ratio)
        write(f"browser: widest at {widest.ratio:.3f} of its output area: {widest}")
    if report.seconds:
        write("browser: seconds to open in JupyterLab + Run All: " + ", ".join(
            f"{name[:2]} {opening:.0f}+{running:.0f}" for name, (opening, running) in report.seconds.items()))
    write(f"browser: {report.screenshots} screenshots in {ARTIFACTS}/")
    write(f"browser: {time.monotonic() - report.started:.0f} s from the first browser test to the end")
