"""The package's metadata: one version, the licence file, every data file shipped."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import mnist_cnn

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent


def test_metadata_is_complete_and_the_version_lives_in_one_place():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    meta = project["project"]
    assert "version" not in meta and "version" in meta["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "mnist_cnn.__version__"}
    assert mnist_cnn.__version__.count(".") == 2
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert meta["keywords"] and meta["classifiers"]
    assert all(c.count(" :: ") >= 1 for c in meta["classifiers"])
    assert "jinja2" in " ".join(meta["dependencies"])


def test_every_page_and_template_file_is_package_data():
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["mnist_cnn"]
    package = REPO / "src" / "mnist_cnn"
    data = [
        str(p.relative_to(package))
        for folder in ("static", "templates")
        for p in (package / folder).iterdir()
        if p.suffix != ".py" and p.name != "__pycache__"
    ]
    assert "static/net.js" in data and "templates/card.md.j2" in data
    missing = [f for f in data if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not missing, missing
    assert (package / "py.typed").is_file() and "py.typed" in globs
