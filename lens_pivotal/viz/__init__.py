"""Shared presentation pieces: offline circuitsvis HTML, atomic figure saving and fixed-width tables (used by every
subpackage's views, plots and command lines)."""

from lens_pivotal.viz.figures import save_figure
from lens_pivotal.viz.html import HTMLView, offline_html
from lens_pivotal.viz.tables import format_table

__all__ = ["HTMLView", "format_table", "offline_html", "save_figure"]
