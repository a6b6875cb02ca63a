"""Keep a plotly ``FigureWidget`` as wide as its panel: a tiny invisible anywidget.

plotly's FigureWidget sizes itself once, when it first renders. Inside a grid column or a tab
it often renders before the column has its width, comes up 700 px wide and is clipped (seen in
Notebook 7), and window resizes do not reach it. This widget watches the panel's root element
(found by a CSS class) and reports its width to the kernel, where the panel sets the figure's
width: one small message per real change of width.
"""

from __future__ import annotations

from typing import Any

import anywidget
import traitlets

__all__ = ["FitWidth"]

_ESM = """
function render({ model, el }) {
  let frame = 0, ro = null, timer = 0;
  const report = (root) => {
    frame = 0;
    const width = Math.floor(root.getBoundingClientRect().width);
    if (width > 0 && Math.abs(width - model.get("width")) >= 2) {
      model.set("width", width);
      model.save_changes();
    }
  };
  const start = () => {
    const root = el.closest("." + model.get("scope"));
    if (!root) { timer = setTimeout(start, 100); return; }
    ro = new ResizeObserver(() => { if (!frame) frame = requestAnimationFrame(() => report(root)); });
    ro.observe(root);
  };
  start();
  return () => { if (ro) ro.disconnect(); clearTimeout(timer); cancelAnimationFrame(frame); };
}
export default { render };
"""


class FitWidth(anywidget.AnyWidget):
    """Syncs ``width``: the pixel width of the nearest ancestor element with class ``scope``."""

    _esm = traitlets.Unicode(_ESM).tag(sync=True)
    scope = traitlets.Unicode("wb-panel").tag(sync=True)
    width = traitlets.Int(0).tag(sync=True)

    def __init__(self, scope: str, **kwargs: Any) -> None:
        super().__init__(scope=scope, **kwargs)
        self.layout.display = "none"
