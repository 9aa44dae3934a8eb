"""Self-contained HTML views for notebooks and files, with no network access.

circuitsvis' default display probes the internet (1 s timeout) every time a notebook shows a view, to choose between
its CDN page and its local bundle. We keep the ``local_src`` of what circuitsvis renders (its JavaScript bundle
inline), so pages work offline and display without a network call.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lens_pivotal._io import atomic_write_text


@dataclass
class HTMLView:
    """A self-contained HTML fragment: displays inline in Jupyter and saves as a standalone page."""

    body: str
    title: str = "lens_pivotal"

    def _repr_html_(self) -> str:
        return self.body

    def save(self, path: str | os.PathLike) -> Path:
        """Write a complete HTML page (all scripts inline) to ``path``, atomically."""
        page = f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title></head>\n<body>{self.body}</body></html>\n"
        atomic_write_text(path, page)
        return Path(path)


def offline_html(rendered: Any) -> str:
    """The offline HTML of a circuitsvis view (``circuitsvis.tokens.colored_tokens(...)`` etc.).

    circuitsvis writes its mount point as ``<div id=... />``; HTML has no self-closing ``div``, so a browser opens a
    div there that swallows everything after it, and the view's render then wipes that content. We close it.
    """
    return _SELF_CLOSED_MOUNT.sub(r"<div \1></div>", rendered.local_src, count=1)


_SELF_CLOSED_MOUNT = re.compile(r"<div (id=\"circuits-vis-[^\"]*\"[^>]*?)\s*/>")
