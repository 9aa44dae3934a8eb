"""Shared presentation pieces: offline circuitsvis HTML and atomic figure saving (used by every subpackage's views
and plots)."""

from lens_pivotal.viz.figures import save_figure
from lens_pivotal.viz.html import HTMLView, offline_html

__all__ = ["HTMLView", "offline_html", "save_figure"]
