"""Jinja2 templates of the documents about a run (the HTML report, the model card).

Autoescaping is on for every template: a value read from a run's files (a run name, a config
field, a class name) is HTML-escaped wherever it lands, in HTML and in Markdown alike (Markdown
passes HTML through). Only strings built here and marked ``Markup`` are inserted as they are.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATE_DIR = Path(__file__).resolve().parent


@cache
def environment() -> Environment:
    """The shared Jinja2 environment: autoescaping on, undefined names an error."""
    return Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
    )
