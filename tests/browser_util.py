"""The headless Chromium the browser tests drive: Debian's ``chromium`` through Playwright for
Python (no browser download), with the flags a closed network needs."""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("MNIST_CNN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
INSTALL_HINT = (
    "the browser test needs Chromium and Playwright for Python: "
    "'apt-get install -y chromium' and 'pip install playwright' "
    "(no 'playwright install': the test drives the system browser; "
    "set MNIST_CNN_CHROMIUM if it is not at /usr/bin/chromium)"
)
