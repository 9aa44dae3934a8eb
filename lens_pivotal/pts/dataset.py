"""The PTS datasets shipped with lens_pivotal, by name: pivotal tokens of the embedded SmolLM2-135M-Instruct.

``load_pts(name)`` (and every CLI ``--data``) reads them by these names, which are also their rows' ``dataset_id``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lens_pivotal.pts.problems import ARITHMETIC_DATASET_ID, MULTISTEP_DATASET_ID

SHIPPED_DATASETS: dict[str, str] = {
    ARITHMETIC_DATASET_ID: "smollm2_135m_arithmetic.jsonl",
    MULTISTEP_DATASET_ID: "smollm2_135m_multistep_arithmetic.jsonl",
}
"""Shipped dataset name → file in ``lens_pivotal/data/pts`` (its README says how each was made)."""


def shipped_pts_path(name: str = ARITHMETIC_DATASET_ID) -> Path:
    """Path of a shipped JSONL (its ``.progress.jsonl`` and the README, with the regenerating command, sit next to it)."""
    if name not in SHIPPED_DATASETS:
        raise ValueError(f"no shipped PTS dataset named {name!r}; the shipped ones are {', '.join(SHIPPED_DATASETS)}")
    return Path(str(resources.files("lens_pivotal") / "data" / "pts" / SHIPPED_DATASETS[name]))
