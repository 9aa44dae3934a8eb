"""Where lens_pivotal keeps converted models and other rebuildable files."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "LENS_PIVOTAL_CACHE"


def user_cache_dir() -> Path:
    """The cache root: ``$LENS_PIVOTAL_CACHE`` if set, else ``~/.cache/lens_pivotal``."""
    root = os.environ.get(CACHE_ENV_VAR)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lens_pivotal"
