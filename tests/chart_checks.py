"""What a reader of a report chart would notice: missing labels, clipped or colliding text, a legend over the data."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from PIL import Image


def drawn(fig: Figure):
    fig.canvas.draw()  # tick labels and layout exist only once drawn
    return fig.canvas.get_renderer()


def png_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as img:
        img.load()  # decodes the whole file, not only its header
        return img.size


def expected_size(fig: Figure) -> tuple[int, int]:
    width, height = fig.get_size_inches() * fig.dpi
    return round(width), round(height)


def tick_labels(axis) -> list:
    """The tick labels drawn: matplotlib keeps labels for ticks outside the view limits, undrawn."""
    low, high = sorted(axis.get_view_interval())
    return [t.label1 for t in axis.get_major_ticks() if low - 1e-9 <= t.get_loc() <= high + 1e-9 and t.label1.get_text()]


def texts(ax: Axes) -> list:
    out = [ax.title, ax.xaxis.label, ax.yaxis.label, *tick_labels(ax.xaxis), *tick_labels(ax.yaxis)]
    legend = ax.get_legend()
    if legend is not None:
        out += [legend.get_title(), *legend.get_texts()]
    return [t for t in out if t.get_visible() and t.get_text()]


def assert_readable_chart(fig: Figure, ax: Axes) -> None:
    """Titled and labelled axes with tick labels; no text outside the figure; no legend over the data; no two tick labels on top of each other."""
    renderer = drawn(fig)
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), "chart without title or axis labels"
    xticks, yticks = tick_labels(ax.xaxis), tick_labels(ax.yaxis)
    assert len(xticks) >= 2 and len(yticks) >= 2, "chart without tick labels"
    page = fig.bbox
    for text in texts(ax):
        box = text.get_window_extent(renderer)
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, (
            f"text {text.get_text()!r} is cut off at the figure's edge"
        )
    for ticks in (xticks, yticks):
        boxes = [t.get_window_extent(renderer) for t in ticks]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not a.overlaps(b), "tick labels overlap"
    legend = ax.get_legend()
    if legend is not None:
        legend_box = legend.get_window_extent(renderer)
        for bbox in _data_boxes(ax, renderer):
            assert not legend_box.overlaps(bbox), "the legend hides data"


def _data_boxes(ax: Axes, renderer) -> list[Bbox]:
    boxes = [patch.get_window_extent(renderer) for container in ax.containers for patch in container]
    for line in ax.get_lines():
        if line.get_gid() is None:  # reference lines (zero, one) carry no gid
            continue
        points = ax.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
        steps = np.linspace(0.0, 1.0, 10, endpoint=False)[:, None, None]
        along = (points[:-1] + steps * (points[1:] - points[:-1])).reshape(-1, 2)  # the segments, not only the vertices
        boxes += [Bbox.from_extents(x - 2, y - 2, x + 2, y + 2) for x, y in [*along, points[-1]]]
    return boxes
