"""Ctrl+Enter (⌘+Enter) inside a panel: a tiny invisible anywidget that reports the keystroke.

ipywidgets' Textarea has no key events. This widget sits inside the panel, finds the panel's
root element by a CSS class and listens there for Ctrl/⌘+Enter in any text field; it sends one
message to the kernel, which calls the panel's submit. Without a browser (tests) call
``press()``. The ESM is the whole front end: no build step, nothing to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anywidget
import traitlets

__all__ = ["CtrlEnter"]

_ESM = """
function render({ model, el }) {
  const onKey = (e) => {
    if (e.key !== "Enter" || !(e.ctrlKey || e.metaKey)) return;
    const root = el.closest("." + model.get("scope"));
    const t = e.target;
    if (!root || !root.contains(t) || !(t.tagName === "TEXTAREA" || t.tagName === "INPUT")) return;
    e.preventDefault();
    e.stopPropagation();
    // Let the field's last edit reach the kernel before the submit message (same channel).
    t.dispatchEvent(new Event("change", { bubbles: true }));
    setTimeout(() => model.send({ event: "ctrl-enter" }), 50);
  };
  // Capture phase: JupyterLab binds Ctrl+Enter to "run cell" further down the tree.
  document.addEventListener("keydown", onKey, true);
  return () => document.removeEventListener("keydown", onKey, true);
}
export default { render };
"""


class CtrlEnter(anywidget.AnyWidget):
    """Calls ``on_press()`` when Ctrl/⌘+Enter is pressed in a text field under ``.{scope}``."""

    _esm = traitlets.Unicode(_ESM).tag(sync=True)
    scope = traitlets.Unicode("wb-panel").tag(sync=True)

    def __init__(self, scope: str, on_press: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(scope=scope, **kwargs)
        self.layout.display = "none"
        self._on_press = on_press
        self.on_msg(self._handle)

    def press(self) -> None:
        """What the keystroke does; tests call it directly."""
        self._on_press()

    def _handle(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("event") == "ctrl-enter":
            self.press()
