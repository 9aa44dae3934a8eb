"""Saving matplotlib figures atomically: a unique scratch file beside the target, then a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from matplotlib.figure import Figure


def save_figure(figure: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save ``figure`` as PNG (or the format the suffix names), creating the folder; a failure leaves nothing
    half-written, and two writers never share a scratch file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        figure.savefig(scratch, dpi=dpi)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(scratch, 0o666 & ~umask)
        os.replace(scratch, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
    return path
