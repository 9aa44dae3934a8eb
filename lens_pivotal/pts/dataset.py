"""The PTS dataset shipped with lens_pivotal: pivotal tokens of the embedded SmolLM2-135M-Instruct on arithmetic."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lens_pivotal.pts.schema import PtsData, load_pts

SHIPPED_FILE = "smollm2_135m_arithmetic.jsonl"


def shipped_pts_path() -> Path:
    """Path of the shipped JSONL (its ``.progress.jsonl`` and README, with the regenerating command, sit next to it)."""
    return Path(str(resources.files("lens_pivotal") / "data" / "pts" / SHIPPED_FILE))


def load_shipped_pts() -> PtsData:
    """The shipped dataset, validated (see ``lens_pivotal/data/pts/README.md`` for how it was made)."""
    return load_pts(shipped_pts_path())
