"""Open a report in headless Chromium: a screenshot, and every console message the page produced.

Chromium writes each console message and each uncaught exception of the page to stderr as
``...:CONSOLE:<line>] "<message>", source: <url> (<line>)`` when started with ``--enable-logging=stderr``.
The report runs no script, so any such line is a problem (a console error, an uncaught exception, a
blocked resource); the rest of Chromium's stderr (D-Bus, GPU chatter on a server) is ignored.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.errors import MissingFileError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER_ENV = "STBENCH_CHROMIUM"
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)?\]\s*(.*)$")
WINDOW = (1280, 2000)


@dataclass
class BrowserRun:
    screenshot: Path
    console: list[str]  # console messages and uncaught exceptions, as Chromium logged them
    returncode: int
    stderr: str


def find_chromium() -> str | None:
    """``STBENCH_CHROMIUM`` when set, else the first Chromium or Chrome on PATH; None when there is none."""
    if os.environ.get(BROWSER_ENV):
        return shutil.which(os.environ[BROWSER_ENV])
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def console_messages(stderr: str) -> list[str]:
    return [m.group(1).strip() for line in stderr.splitlines() if (m := CONSOLE.search(line))]


def screenshot(html: Path, png: Path, browser: str | None = None, window: tuple[int, int] = WINDOW,
               timeout: float = 180) -> BrowserRun:
    """Render ``html`` (a local file) in headless Chromium into ``png``; raises when no browser is found,
    it times out, or it writes no screenshot."""
    browser = browser or find_chromium()
    if browser is None:
        raise MissingFileError(f"no Chromium found (tried {', '.join(BROWSERS)} and ${BROWSER_ENV}); on Debian: "
                                f"apt-get install chromium")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="stbench-chromium-") as profile:
        cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
               "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", f"--screenshot={png}", f"--window-size={window[0]},{window[1]}",
               Path(html).resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot of {html} (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return BrowserRun(png, console_messages(done.stderr), done.returncode, done.stderr)


def pixel_spread(png: Path) -> float:
    """Standard deviation of the greyscale pixels (0 for a blank, single-colour image)."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as image:
        return float(np.asarray(image.convert("L"), dtype=np.float64).std())


def check_in_browser(html: Path, png: Path, min_spread: float = 10.0, **kw) -> BrowserRun:
    """Screenshot ``html`` and raise RuntimeError when the page logged to the console or looks blank."""
    run = screenshot(html, png, **kw)
    if run.console:
        raise RuntimeError(f"{html}: the page logged {len(run.console)} console message(s): {run.console[:5]}")
    spread = pixel_spread(run.screenshot)
    if spread < min_spread:
        raise RuntimeError(f"{html}: the screenshot {run.screenshot} looks blank (pixel sd {spread:.1f})")
    return run
