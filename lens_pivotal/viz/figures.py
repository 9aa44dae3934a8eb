"""Saving matplotlib figures atomically (:func:`lens_pivotal._io.atomic_file`)."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from lens_pivotal._io import atomic_file


def save_figure(figure: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save ``figure`` as PNG (or the format the suffix names), creating the folder; a failure leaves nothing
    half-written, and two writers never share a scratch file."""
    with atomic_file(path) as scratch:
        figure.savefig(scratch, dpi=dpi)
    return Path(path)
