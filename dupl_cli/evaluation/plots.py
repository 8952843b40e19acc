"""Charts drawn with matplotlib (the ``plots`` extra): the confusion matrix here, the training curves
in ``curves.py``.

Figures are built on matplotlib's Agg canvas without ``pyplot``: no display is needed or touched, no
figure is kept in a global registry (a figure is freed with its last reference), and the backend of
a user's own session is left alone. A chart is first a ``Figure`` (what the tests inspect: axes,
labels, lines, the colour bar), then PNG bytes. Pictures that are plain arrays (palette masks,
overlays, heat maps) stay in ``visualize.py``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dupl_cli.core.errors import UserError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOTS_INSTALL = 'pip install "dupl[plots]"'
DPI = 100


def matplotlib_missing(what: str) -> str | None:
    """None when matplotlib imports; else the one line saying that ``what`` needs it and how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"{what} needs matplotlib (the plots extra): {PLOTS_INSTALL}"
    return None


def require_matplotlib(what: str) -> None:
    """A one-line UserError naming the install when matplotlib is missing."""
    missing = matplotlib_missing(what)
    if missing:
        raise UserError(missing)


def new_figure(width: float, height: float, *, layout: str | None = "constrained") -> Figure:
    """An empty figure of ``width`` x ``height`` inches on the Agg canvas (constrained layout unless
    ``layout`` is None: then the caller places its axes)."""
    require_matplotlib("drawing charts")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes at its own size (``DPI`` pixels per inch)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (rows ground truth, columns prediction, a last ``uncertain``
    column when the matrix has one more column than rows): each cell coloured and labelled with its
    share of the row's ground-truth pixels in percent (zeros left blank so the eye finds the mass),
    class names on both axes, axis titles and a colour bar. Cells shrink, but stay legible, at 81
    classes."""
    m = np.asarray(matrix, dtype=np.float64)
    rows, cols = m.shape
    names = [*class_names, *(["uncertain"] if cols > rows else [])]
    share = 100 * m / np.maximum(m.sum(1, keepdims=True), 1)
    cell, size = (0.5, 9.0) if cols <= 12 else (0.34, 7.0) if cols <= 30 else (0.27, 5.5)  # inches, points
    # Fixed margins (inches) instead of a layout engine: one draw, however many cells are labelled.
    names_in = 0.6 * (size + 1) / 72 * max(len(n) for n in names) + 0.1  # the longest tick label
    left, bottom, top, right = names_in + 0.3, names_in + 0.35, 0.35, 1.2
    width, height = left + cols * cell + right, bottom + rows * cell + top
    figure = new_figure(width, height, layout=None)
    ax = figure.add_axes((left / width, bottom / height, cols * cell / width, rows * cell / height))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100, interpolation="nearest", aspect="auto")
    ax.set_xticks(range(cols), names, rotation=90, fontsize=size + 1)
    ax.set_yticks(range(rows), names[:rows], fontsize=size + 1)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("% of each ground-truth row", fontsize=9)
    bar_height = min(rows * cell, 4.0)
    bar = figure.add_axes(((left + cols * cell + 0.15) / width, (bottom + rows * cell - bar_height) / height,
                           0.15 / width, bar_height / height))  # fmt: skip
    figure.colorbar(image, cax=bar).set_label("% of the row's pixels")
    percent = np.rint(share).astype(int)
    for i, j in zip(*np.nonzero(percent), strict=True):
        ax.text(j, i, str(percent[i, j]), ha="center", va="center", fontsize=size,
                color="white" if share[i, j] > 55 else "black")  # fmt: skip
    return figure
