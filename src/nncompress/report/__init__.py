"""The HTML report of a run folder (``DIR/report.html``): plots in ``plots``, the page in ``html``.

matplotlib is imported only when a plot is drawn, so importing this package stays cheap.
"""

from nncompress.report.html import render_html

__all__ = ["render_html"]
