"""The one way minivae draws: a matplotlib ``Figure`` on the Agg canvas, saved to a file.

matplotlib's object-oriented API only: no pyplot, no global state, no ``matplotlib.use`` (which
would switch the backend of a notebook that imports minivae). matplotlib is imported when a
figure is made, never at ``import minivae``.
"""
from __future__ import annotations

from pathlib import Path

DPI = 100


def figure(width, height, layout="constrained"):
    """A new ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches with its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    new = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(new)
    return new


def save(fig, path) -> Path:
    """Write ``fig`` to ``path`` (PNG unless the suffix says otherwise), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path
