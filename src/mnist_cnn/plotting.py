"""Small helpers for headless pictures: a pyplot-free Figure, atomic PNG writes, PNG bytes.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, so nothing here touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError
from .fileio import atomic_path

if TYPE_CHECKING:  # matplotlib loads when the first figure is made: commands that draw
    from matplotlib.figure import Figure  # nothing start without it

DPI = 100  # screen resolution; pictures are sized in inches so that text stays readable
GRAY = "gray"  # 0 → black, max → white: the seed's ``cmap='gray'``


def new_figure(width: float, height: float, *, layout: str | None = "constrained") -> Figure:
    """A Figure of ``width``×``height`` inches with an Agg canvas attached (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure, *, dpi: float | None = None) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, facecolor="white")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: float | None = None) -> Path:
    """Write the figure atomically (format from the suffix, parent folders created)."""
    path = check_picture_path(fig, path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi or fig.dpi, facecolor="white")
    return path


def check_picture_path(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """``path`` as a picture to write, or ConfigError: a folder, or a format matplotlib lacks."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a file name, e.g. {path / 'picture.png'}")
    kinds = fig.canvas.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in kinds:
        shown = f"'.{suffix}' is not a picture format" if suffix else "no picture format named"
        raise ConfigError(
            f"{path}: {shown}; end the name with one of "
            + ", ".join(f".{k}" for k in ("png", "svg", "pdf", "jpg") if k in kinds)
        )
    return path
