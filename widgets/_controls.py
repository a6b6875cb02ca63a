"""Factories for the panels' controls: one call per button or labelled field, so every panel
sizes and labels its controls the same way.

The boundary: plain ipywidgets, nothing of the learner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import ipywidgets as w

__all__ = ["button", "labelled"]

W = TypeVar("W", bound=w.Widget)


def button(description: str, icon: str = "", width: str | None = None, **kwargs: Any) -> w.Button:
    """A panel's button: label, icon, ``width`` (None: ipywidgets' default); ``kwargs`` as
    ``w.Button`` takes them (``tooltip``, ``button_style``, ``disabled``).

    >>> b = button("Undo", "undo", "110px", disabled=True)
    >>> (b.description, b.icon, b.layout.width, b.disabled)
    ('Undo', 'undo', '110px', True)
    """
    return w.Button(description=description, icon=icon, layout=w.Layout(width=width), **kwargs)


def labelled(
    kind: Callable[..., W], description: str, label: str, width: str | None = None, **kwargs: Any
) -> W:
    """A ``kind`` control (``w.IntText``, ``w.Dropdown``, ...) whose description is ``label``
    wide (a CSS width) and the whole ``width`` wide (None: the control's default).

    >>> box = labelled(w.IntText, "steps", "70px", "150px", value=100)
    >>> (box.description, box.style.description_width, box.layout.width, box.value)
    ('steps', '70px', '150px', 100)
    """
    return kind(
        description=description,
        style={"description_width": label},
        layout=w.Layout(width=width),
        **kwargs,
    )
