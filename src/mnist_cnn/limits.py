"""The server's address and request-size defaults, apart from ``serve.py``.

``mnist-cnn --help`` and every other command build the whole argument parser, whose ``serve``
help shows these numbers; keeping them here spares each command from loading the web stack.
"""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_BODY_BYTES = 8 * 1024 * 1024  # a drawn digit's PNG is a few KiB; 8 MiB admits a phone photo
