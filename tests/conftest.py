"""Shared fixtures: one throwaway model cache per test session, and the embedded model converted once into it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from lens_pivotal.paths import CACHE_ENV_VAR


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``$LENS_PIVOTAL_CACHE`` for the whole session (notebook kernels inherit it); a preset value is kept."""
    preset = os.environ.get(CACHE_ENV_VAR)
    os.environ[CACHE_ENV_VAR] = preset or str(tmp_path_factory.mktemp("lens_pivotal_cache"))
    yield Path(os.environ[CACHE_ENV_VAR])
    if preset is None:
        del os.environ[CACHE_ENV_VAR]


@pytest.fixture(scope="session")
def embedded_dir(session_cache_dir: Path) -> Path:
    """The embedded SmolLM2 converted to a Hugging Face directory, once per session (~25 s)."""
    from lens_pivotal.embedded import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def tiny_qwen3_model(session_cache_dir: Path):
    """A tiny random Qwen3 (3 blocks, d_model 64) as a TransformerLens model, shared by the PatchScope tests."""
    import lens_pivotal as lp
    from lens_pivotal.testing import tiny_qwen_dir

    return lp.load_model(tiny_qwen_dir("qwen3"), device="cpu")
