"""Explorers that work in a live notebook AND in the static HTML book.

Python callbacks (``interact``, ``observe``) need a running kernel, so in the built book a
slider would move but nothing would follow. These explorers therefore precompute every view as
a PNG, put the views in an ``ipywidgets.Stack`` and link a ``Dropdown``'s ``index`` to the
stack's ``selected_index`` with ``jslink``: the link runs in the browser, so choosing an option
in the built page switches the picture with no kernel (see ../shared/TOOLCHAIN.md; a Dropdown's
``value`` is not synced to the page, its ``index`` is).
"""

from __future__ import annotations

import io
from typing import Mapping, Union

import ipywidgets as widgets

View = Union[bytes, "matplotlib.figure.Figure"]  # noqa: F821


def figure_png(fig: "matplotlib.figure.Figure", dpi: int = 80) -> bytes:  # noqa: F821
    """Render a matplotlib figure to PNG bytes and close it (so it is not shown twice)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _image(view: View) -> widgets.Image:
    data = view if isinstance(view, bytes) else figure_png(view)
    return widgets.Image(value=data, format="png")


def stack_explorer(views: Mapping[str, View], description: str = "view") -> widgets.VBox:
    """A dropdown that switches between precomputed pictures, client-side.

    ``views`` maps each option's label to a PNG (bytes) or a matplotlib figure.
    """
    if not views:
        raise ValueError("stack_explorer needs at least one view")
    labels = list(views)
    dropdown = widgets.Dropdown(options=labels, index=0, description=description)
    stack = widgets.Stack([_image(views[k]) for k in labels], selected_index=0)
    widgets.jslink((dropdown, "index"), (stack, "selected_index"))
    return widgets.VBox([dropdown, stack])


def nested_explorer(views: Mapping[str, Mapping[str, View]], outer: str = "layer",
                    inner: str = "head") -> widgets.VBox:
    """Two-level explorer, e.g. (layer, head) or (stage, channel), client-side.

    The outer dropdown picks a page; each page has its own inner dropdown and pictures. Nested
    stacks keep every link a plain index link, which is what works without a kernel.
    """
    if not views or not all(views.values()):
        raise ValueError("nested_explorer needs at least one view on every page")
    pages = [stack_explorer(page, description=inner) for page in views.values()]
    dropdown = widgets.Dropdown(options=list(views), index=0, description=outer)
    stack = widgets.Stack(pages, selected_index=0)
    widgets.jslink((dropdown, "index"), (stack, "selected_index"))
    return widgets.VBox([dropdown, stack])
